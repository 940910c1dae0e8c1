"""Lightning's tqdm progress bar on stderr instead of stdout (stdout carries results only)."""

from __future__ import annotations

import sys
from contextlib import redirect_stdout

from lightning.pytorch.callbacks import TQDMProgressBar


class StderrProgressBar(TQDMProgressBar):
    """:class:`TQDMProgressBar` whose bars write to ``sys.stderr``.

    Lightning (2.x) builds each bar with ``file=sys.stdout``; each bar is built here while
    ``sys.stdout`` is ``sys.stderr``, so it keeps writing to stderr afterwards.
    """

    def init_sanity_tqdm(self):
        with redirect_stdout(sys.stderr):
            return super().init_sanity_tqdm()

    def init_train_tqdm(self):
        with redirect_stdout(sys.stderr):
            return super().init_train_tqdm()

    def init_validation_tqdm(self):
        with redirect_stdout(sys.stderr):
            return super().init_validation_tqdm()

    def init_predict_tqdm(self):
        with redirect_stdout(sys.stderr):
            return super().init_predict_tqdm()

    def init_test_tqdm(self):
        with redirect_stdout(sys.stderr):
            return super().init_test_tqdm()

    def print(self, *args, sep: str = " ", **kwargs) -> None:
        """Lightning's ``print`` beside the bars, on stderr too (tqdm's ``write`` defaults to stdout)."""
        kwargs.setdefault("file", sys.stderr)
        super().print(*args, sep=sep, **kwargs)
