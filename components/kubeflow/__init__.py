"""Kubeflow Pipelines glue: components, steps, cluster policy, local runner, submission.

The only room (with ``pipeline.py``) that imports kfp.
"""
