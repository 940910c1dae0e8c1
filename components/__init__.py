"""Camp segmentation pipeline: stage logic that runs with or without Kubeflow Pipelines."""

__version__ = "0.1.0"
