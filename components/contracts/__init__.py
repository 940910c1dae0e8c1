"""What every room agrees on: errors, the training config, preprocessing, the run-folder layout.

Depends on nothing else in ``components``.
"""
