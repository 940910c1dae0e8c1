"""The exit handler's final state, as each runner spells it, closes the MLflow run with the right status."""

from __future__ import annotations

import pytest

import components.tracking as tracking
from components.kubeflow import steps
from components.kubeflow.final_status import mlflow_status


@pytest.mark.parametrize("state, status", [
    ("COMPLETE", "FINISHED"),      # the KFP backend, a successful run
    ("SUCCEEDED", "FINISHED"),     # kfp.local; the API's RuntimeState
    ("SUCCESS", "FINISHED"),
    ("CACHED", "FINISHED"),
    ("complete", "FINISHED"),      # any case
    ("FAILED", "FAILED"),
    ("FAILURE", "FAILED"),
    ("ERROR", "FAILED"),
    ("SYSTEM_ERROR", "FAILED"),
    ("CANCELED", "KILLED"),        # MLflow's status of a stopped run
    ("CANCELLED", "KILLED"),
    ("CANCELING", "KILLED"),
])
def test_known_states(state, status):
    assert mlflow_status(state)[0] == status


def test_failure_keeps_the_runners_message():
    assert mlflow_status("FAILED", "train-model: OOMKilled") == ("FAILED", "train-model: OOMKilled")
    assert mlflow_status("COMPLETE") == ("FINISHED", "")


def test_cancellation_says_so():
    status, reason = mlflow_status("CANCELED")
    assert status == "KILLED" and "canceled" in reason


@pytest.mark.parametrize("state", ["SKIPPED", "PAUSED", "RUNTIME_STATE_UNSPECIFIED", "WHATEVER", "", None])
def test_skipped_and_unknown_states_fail_naming_the_state(state):
    status, reason = mlflow_status(state, "boom")
    assert status == "FAILED"
    assert repr(state) in reason and "boom" in reason


@pytest.mark.parametrize("state, status, reason", [
    ("COMPLETE", "FINISHED", None),
    ("SUCCEEDED", "FINISHED", None),
    ("FAILED", "FAILED", "step x failed"),
    ("CANCELED", "KILLED", "step x failed"),
    ("SKIPPED", "FAILED", "pipeline final state 'SKIPPED' is not a success: step x failed"),
])
def test_end_tracking_closes_every_running_run_with_the_mapped_status(monkeypatch, state, status, reason):
    ended = []
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.invalid")
    monkeypatch.setattr(tracking, "check_tracking_server", lambda uri: None)
    monkeypatch.setattr(tracking, "running_runs_of", lambda uri, kfp_run_id: ["r1", "r2"])
    monkeypatch.setattr(tracking, "end_run", lambda uri, run_id, s, reason=None: ended.append((run_id, s, reason)))
    error = "" if status == "FINISHED" else "step x failed"
    assert steps.end_tracking("kfp-1", state, error) == status
    assert ended == [("r1", status, reason), ("r2", status, reason)]
