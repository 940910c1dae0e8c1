"""Which test chips the overlays show: the best, the worst and a typical (median) chip by IoU.

:class:`ChipScores` hears every scored chip (:func:`components.ml.scoring.score`'s ``on_chip``) and
keeps only its counts, so memory stays flat in the test set's size; the few chosen chips are
predicted again when their figures are drawn.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from components.contracts.preprocessing import Preprocessing
from components.data.pairs import Pair
from components.reporting.figures import chip_iou, outcome_counts

#: The overlays, in the order reports show them, and what each teaches.
ROLES = {
    "best": "the test chip the model gets most right (highest IoU)",
    "median": "a typical test chip (median IoU)",
    "worst": "the test chip the model gets most wrong (lowest IoU)",
}


@dataclass(frozen=True)
class ChipScore:
    """One chip's outcome: pixel counts and IoU (``None`` when it has no foreground at all)."""

    stem: str
    iou: float | None
    tp: int
    fp: int
    fn: int

    def as_dict(self) -> dict:
        return asdict(self)


class ChipScores:
    """Collects every chip's :class:`ChipScore`; :meth:`chosen` picks the overlays' chips."""

    def __init__(self, prep: Preprocessing) -> None:
        self.prep = prep
        self.scores: list[ChipScore] = []
        self.pairs: dict[str, Pair] = {}

    def __call__(self, pair: Pair, mask: np.ndarray, probabilities: np.ndarray) -> None:
        counts = outcome_counts(mask, self.prep.classify(probabilities))
        self.scores.append(ChipScore(pair.stem, chip_iou(counts), **counts))
        self.pairs[pair.stem] = pair

    def chosen(self) -> dict[str, ChipScore]:
        """``best``, ``median`` and ``worst`` (one chip may fill several roles in a tiny test set).

        Only chips where the truth or the prediction has foreground have an IoU; ties go to the
        chip with more foreground (a more telling picture). Without any such chip the roles fall
        on the first chips by name.
        """
        scored = [s for s in self.scores if s.iou is not None]
        if not scored:
            ordered = sorted(self.scores, key=lambda s: s.stem)
            return {role: ordered[min(i, len(ordered) - 1)] for i, role in enumerate(ROLES)} if ordered else {}
        by_iou = sorted(scored, key=lambda s: (s.iou, s.tp + s.fn, s.stem))
        worst = min(scored, key=lambda s: (s.iou, -(s.tp + s.fp + s.fn), s.stem))
        return {"best": by_iou[-1], "median": by_iou[(len(by_iou) - 1) // 2], "worst": worst}
