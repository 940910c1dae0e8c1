"""The MLflow status of a pipeline run from the state its exit handler receives.

The exit handler gets ``PipelineTaskFinalStatus.state``, spelled differently by each runner:

* the KFP backend (v2 driver) passes the state of the pipeline's DAG execution as recorded in
  ML Metadata: ``COMPLETE`` for a successful run, ``FAILED``, ``CANCELED``, ``CACHED``;
* ``kfp.local`` passes ``SUCCEEDED`` or ``FAILED`` (kfp 2.17, ``local/orchestrator``);
* the v2beta1 API's ``RuntimeState`` (kfp_server_api) spells ``SUCCEEDED``, ``SKIPPED``,
  ``FAILED``, ``CANCELING``, ``CANCELED``; kfp's docstring says ``CANCELLED``.

Every spelling maps here, without a case distinction; anything else closes the run FAILED
with the state named in the reason, so no run stays RUNNING and none is called a success
that was not one.
"""

from __future__ import annotations

from typing import Literal, Optional, Tuple

MlflowStatus = Literal["FINISHED", "FAILED", "KILLED"]

#: Every state a runner reports, by the MLflow status it closes the run with.
SUCCESS_STATES = frozenset({"COMPLETE", "SUCCEEDED", "SUCCESS", "CACHED"})
FAILURE_STATES = frozenset({"FAILED", "FAILURE", "ERROR", "SYSTEM_ERROR"})
CANCEL_STATES = frozenset({"CANCELED", "CANCELLED", "CANCELING"})


def mlflow_status(state: Optional[str], error: str = "") -> Tuple[MlflowStatus, str]:
    """``(status, reason)``: the MLflow status for the exit handler's ``state`` and why.

    Args:
        state: ``PipelineTaskFinalStatus.state`` as the runner reported it (any case).
        error: the runner's error message, if any; it is the reason of a failure.

    Returns:
        ``FINISHED`` for a success (reason: ``error``, normally empty), ``KILLED`` for a
        cancellation, ``FAILED`` for a failure; ``FAILED`` too for ``SKIPPED``, an empty or an
        unknown state, whose reason names the state.
    """
    name = (state or "").strip().upper()
    if name in SUCCESS_STATES:
        return "FINISHED", error
    if name in FAILURE_STATES:
        return "FAILED", error
    if name in CANCEL_STATES:
        return "KILLED", error or f"pipeline run {name.lower()}"
    detail = f"pipeline final state {state!r} is not a success"
    return "FAILED", f"{detail}: {error}" if error else detail
