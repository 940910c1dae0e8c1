"""MLflow tracking and the model registry; the only user of mlflow.

One MLflow run per pipeline run; every function takes the tracking URI (and the run id)
explicitly. Modules, one job each (docs/tracking.md says which step calls what):

- :mod:`~components.tracking.server`: the tracking URI, clients, the fail-fast health check;
- :mod:`~components.tracking.runs`: open and close the run, params, tags, system info;
- :mod:`~components.tracking.dataset`: the dataset as params, metrics and an MLflow input;
- :mod:`~components.tracking.history`: per-epoch metrics, live (:class:`MlflowEpochLogger`) or after;
- :mod:`~components.tracking.artifacts`: the run folder's artifacts and test metrics;
- :mod:`~components.tracking.registry`: register the ONNX model as a version, the test split id;
- :mod:`~components.tracking.promotion`: the champion rule as a pure function;
- :mod:`~components.tracking.retraining`: whether a run trains at all, as a pure function;
- :mod:`~components.tracking.champion`: the ``champion`` alias in MLflow (read, re-score, promote,
  compare a run's data and training parameters with the champion's).
"""

from components.tracking.artifacts import ARTIFACTS_LOGGED_TAG, log_run_artifacts, run_artifacts
from components.tracking.champion import champion_score_on, promote_if_better, read_champion, retraining_decision
from components.tracking.dataset import log_dataset
from components.tracking.history import MlflowEpochLogger, log_history
from components.tracking.promotion import (
    CHAMPION_ALIAS,
    ChampionUnreadable,
    Decision,
    Score,
    check_promotion_settings,
    decide,
)
from components.tracking.registry import (
    TEST_SPLIT_TAG,
    compute_test_split_id,
    delete_version,
    model_signature,
    register_model,
)
from components.tracking.retraining import (
    TRAINING_PARAMETERS,
    RetrainDecision,
    canonical_parameters,
    decide_retraining,
)
from components.tracking.runs import (
    KFP_RUN_ID_TAG,
    end_run,
    log_params,
    log_system_info,
    running_runs_of,
    start_pipeline_run,
    system_info,
)
from components.tracking.server import (
    check_tracking_server,
    global_uri,
    redact,
    run_id_from_env,
    tracking_uri_from_env,
)

__all__ = [
    "ARTIFACTS_LOGGED_TAG", "CHAMPION_ALIAS", "KFP_RUN_ID_TAG", "TEST_SPLIT_TAG",
    "TRAINING_PARAMETERS", "ChampionUnreadable", "Decision", "MlflowEpochLogger", "RetrainDecision", "Score",
    "canonical_parameters", "champion_score_on", "check_promotion_settings", "check_tracking_server", "compute_test_split_id",
    "decide", "decide_retraining", "delete_version", "end_run", "global_uri", "log_dataset", "log_history", "log_params",
    "log_run_artifacts", "log_system_info", "model_signature", "promote_if_better", "read_champion",
    "redact", "register_model", "retraining_decision", "run_artifacts", "run_id_from_env", "running_runs_of",
    "start_pipeline_run", "system_info", "tracking_uri_from_env",
]
