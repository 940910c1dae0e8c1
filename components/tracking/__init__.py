"""MLflow tracking and the model registry; the only user of mlflow."""

from components.tracking.mlflow_tracking import *  # noqa: F401,F403
from components.tracking.mlflow_tracking import __all__  # noqa: F401
