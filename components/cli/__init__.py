"""Command lines: ``python -m components`` (the stages) and ``pipeline.py`` (the pipeline)."""
