"""The champion rule (components.tracking.promotion.decide) as a table, and the promotion settings check.

No MLflow: decide() is a pure function of the scores.
"""

from __future__ import annotations

import pytest

from components.contracts.errors import ParameterError
from components.ml.metrics import METRIC_NAMES
from components.tracking.promotion import (
    ChampionUnreadable,
    Decision,
    Score,
    check_promotion_settings,
    decide,
    higher_is_better,
)

SPLIT = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64


def candidate(value: float = 0.75, split: str = SPLIT) -> Score:
    return Score("7", value, split)


def champion(value: float | None = 0.5, split: str | None = SPLIT, rescored: bool = False) -> Score:
    return Score("3", value, split, rescored)


# Values are exact binary fractions, so "better by exactly the margin" is exact.
CASES = {
    "no champion": (candidate(), None, 0.0, True, True, "first_champion", "7"),
    "champion is the candidate": (candidate(), Score("7", 0.75, SPLIT), 0.0, True, False, "already_champion", "7"),
    "worse": (candidate(0.25), champion(0.5), 0.0, True, False, "not_better", "3"),
    "equal": (candidate(0.5), champion(0.5), 0.0, True, False, "not_better", "3"),
    "better by less than the margin": (candidate(0.625), champion(0.5), 0.25, True, False, "not_better", "3"),
    "better by exactly the margin": (candidate(0.75), champion(0.5), 0.25, True, False, "not_better", "3"),
    "better": (candidate(0.75), champion(0.5), 0.125, True, True, "better", "7"),
    "better without margin": (candidate(0.5078125), champion(0.5), 0.0, True, True, "better", "7"),
    "lower is better, lower": (candidate(0.25), champion(0.5), 0.125, False, True, "better", "7"),
    "lower is better, higher": (candidate(0.75), champion(0.5), 0.0, False, False, "not_better", "3"),
    "lower is better, lower by the margin": (candidate(0.25), champion(0.5), 0.25, False, False, "not_better", "3"),
    "champion on another split": (candidate(), champion(0.25, OTHER), 0.0, True, False, "incomparable", "3"),
    "champion without a split": (candidate(), champion(0.25, None), 0.0, True, False, "incomparable", "3"),
    "candidate without a split": (candidate(split=None), champion(0.25, None), 0.0, True, False, "incomparable", "3"),
    "champion on another split, re-scored": (candidate(0.75), champion(0.5, OTHER, rescored=True), 0.0, True, True,
                                             "better", "7"),
    "champion re-scored, not beaten": (candidate(0.75), champion(0.875, OTHER, rescored=True), 0.0, True, False,
                                       "not_better", "3"),
    "champion without the metric": (candidate(), champion(None), 0.0, True, False, "incomparable", "3"),
    "champion's metric not a number": (candidate(), champion(float("nan")), 0.0, True, False, "incomparable", "3"),
    "champion's metric infinite": (candidate(), champion(float("-inf")), 0.0, True, False, "incomparable", "3"),
    "champion re-scored to nan": (candidate(), champion(float("nan"), OTHER, rescored=True), 0.0, True, False,
                                  "incomparable", "3"),
    "champion unreadable": (candidate(0.99), ChampionUnreadable("MlflowException: 503 Service Unavailable"), 0.0,
                            True, False, "champion_unreadable", None),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_decide_table(case):
    new, current, margin, higher, promote, rule, holder = case
    decision = decide(new, current, "iou", margin, higher)
    assert isinstance(decision, Decision)
    assert (decision.promote, decision.rule, decision.champion_version) == (promote, rule, holder)
    assert decision.outcome == ("promoted" if promote else "not_promoted")
    assert decision.reason


def test_reasons_name_versions_scores_and_margin():
    kept = decide(candidate(0.25), champion(0.5), "iou", 0.125, True)
    assert "v7 iou=0.2500 does not beat champion v3 iou=0.5000 by more than margin 0.125" in kept.reason
    assert "champion stays v3" in kept.reason
    assert kept.champion_score == 0.5
    promoted = decide(candidate(0.75), champion(0.5), "iou", 0.0, True)
    assert "beats champion v3" in promoted.reason and "on the same test split aaaaaaaaaaaa" in promoted.reason
    rescored = decide(candidate(0.75), champion(0.5, OTHER, rescored=True), "iou", 0.0, True)
    assert "re-evaluated on test split aaaaaaaaaaaa" in rescored.reason
    incomparable = decide(candidate(), champion(0.25, OTHER), "iou", 0.0, True)
    assert "not comparable" in incomparable.reason and "bbbbbbbbbbbb" in incomparable.reason
    missing = decide(candidate(), champion(None), "f1", 0.0, True)
    assert "has no f1 tag" in missing.reason
    first = decide(candidate(), None, "iou", 0.0, True)
    assert first.reason == "no champion yet: v7 (iou=0.7500) becomes champion"


def test_unreadable_champion_fails_closed_and_names_the_error():
    decision = decide(candidate(1.0), ChampionUnreadable("RestException: TEMPORARILY_UNAVAILABLE"), "iou", 0.0, True)
    assert not decision.promote
    assert "TEMPORARILY_UNAVAILABLE" in decision.reason and "fail closed" in decision.reason


def test_an_unusable_champion_score_is_never_a_first_champion():
    """Whatever is wrong with the champion's score, the decision names it and keeps the champion."""
    failed = decide(candidate(1.0), ChampionUnreadable("re-scoring champion v3 failed: OSError: reset"), "iou",
                    0.0, True)
    assert (failed.promote, failed.rule) == (False, "champion_unreadable")
    assert "re-scoring champion v3 failed: OSError: reset" in failed.reason
    for score in (champion(None), champion(float("nan")), champion(float("nan"), OTHER, rescored=True)):
        kept = decide(candidate(1.0), score, "iou", 0.0, True)
        assert (kept.promote, kept.rule, kept.champion_version) == (False, "incomparable", "3")
        assert "champion v3" in kept.reason and "finite" in kept.reason


def test_decide_refuses_what_cannot_be_compared():
    with pytest.raises(ValueError, match="no finite iou"):
        decide(Score("7", None, SPLIT), None, "iou", 0.0, True)
    with pytest.raises(ValueError, match="margin"):
        decide(candidate(), champion(), "iou", -0.1, True)


def test_direction_of_metric_names():
    assert all(higher_is_better(name) for name in METRIC_NAMES)
    assert not higher_is_better("val_loss") and not higher_is_better("error")


@pytest.mark.parametrize("metric", METRIC_NAMES)
def test_settings_accept_every_evaluation_metric(metric):
    check_promotion_settings(metric, 0.0)
    check_promotion_settings(metric, 0.05)


@pytest.mark.parametrize(
    "metric, margin, message",
    [
        ("loss", 0.0, "promotion metric 'loss'"),
        ("IoU", 0.0, "promotion metric 'IoU'"),
        ("test_iou", 0.0, "choose one of iou, f1"),
        ("", 0.0, "promotion metric ''"),
        ("iou", -0.01, "margin=-0.01"),
        ("iou", float("nan"), "margin=nan"),
        ("iou", "0.1", "margin='0.1'"),
        ("iou", True, "margin=True"),
    ],
)
def test_settings_refusals(metric, margin, message):
    with pytest.raises(ParameterError, match=message.replace("(", r"\(").replace(".", r"\.")):
        check_promotion_settings(metric, margin)


def test_first_pipeline_step_refuses_bad_settings_before_anything_else(tmp_path, monkeypatch):
    """start_tracking checks the promotion settings before storage, MLflow or the dataset."""
    from components.kubeflow.steps import start_tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # never reached
    missing = str(tmp_path / "no-such-dataset")
    with pytest.raises(ParameterError, match="promotion metric 'loss'"):
        start_tracking(missing, "", "exp", "campseg", "kfp-1", promotion_metric="loss")
    with pytest.raises(ParameterError, match="margin=-1"):
        start_tracking(missing, "", "exp", "campseg", "kfp-1", promotion_metric="iou", promotion_margin=-1)
