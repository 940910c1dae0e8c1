"""The champion rule as a pure function: :func:`decide` reads scores, does no I/O, and says whether
a new version takes the ``champion`` alias, by which rule and why.

========================  ========  ==========================================================
rule                      promote   when
========================  ========  ==========================================================
``first_champion``        yes       no version holds the alias yet
``already_champion``      no        the champion is the candidate itself
``champion_unreadable``   no        the registry could not say who the champion is, or the
                                    champion's re-score failed (fail closed: any error other
                                    than "no such alias")
``incomparable``          no        the champion was scored on another test split (and not
                                    re-scored on the candidate's), or has no finite score for
                                    the metric (a missing or unreadable tag)
``better``                yes       the candidate beats the champion by more than ``margin``
``not_better``            no        equal, better by at most ``margin``, or worse
========================  ========  ==========================================================

:mod:`components.tracking.champion` gathers the scores from MLflow and applies the decision.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from components.contracts.errors import ParameterError

#: Alias of the registered version that serves as the current best model.
CHAMPION_ALIAS = "champion"
_LOWER_IS_BETTER = re.compile(r"(loss|error|mae|mse|rmse)$")


@dataclass(frozen=True)
class Score:
    """A registered version's score for the promotion metric.

    Attributes:
        version: the version number.
        value: the metric's value; ``None`` when the version has none.
        test_split_id: the test split the value was measured on.
        rescored: the value was measured on the candidate's test split by a re-evaluation
            (so it is comparable whatever ``test_split_id`` says).
    """

    version: str
    value: float | None
    test_split_id: str | None = None
    rescored: bool = False


@dataclass(frozen=True)
class ChampionUnreadable:
    """The registry failed to say who the champion is (not "there is none"), or the champion's
    score could not be measured; ``error`` says what failed."""

    error: str


@dataclass(frozen=True)
class Decision:
    """What :func:`decide` concluded.

    Attributes:
        promote: move the alias to the candidate.
        rule: which row of the rule applied (``first_champion``, ``better``, ...).
        reason: one sentence for people: both scores, the margin, the versions.
        champion_version: who holds the alias after the decision (``None``: nobody, or unknown).
        champion_score: the champion's score that was compared (``None`` when there was none).
    """

    promote: bool
    rule: str
    reason: str
    champion_version: str | None
    champion_score: float | None = None

    @property
    def outcome(self) -> str:
        """``promoted`` or ``not_promoted``."""
        return "promoted" if self.promote else "not_promoted"


def higher_is_better(metric: str) -> bool:
    """``False`` for metric names ending in loss/error/mae/mse/rmse, else ``True``."""
    return not _LOWER_IS_BETTER.search(metric)


def check_promotion_settings(metric: str, margin: float) -> None:
    """Refuse a promotion metric that evaluation does not write, or a negative margin.

    Raises:
        ParameterError: naming the setting and what is allowed.
    """
    from components.ml.metrics import METRIC_NAMES  # torchmetrics: not on pipeline.py's import path

    if metric not in METRIC_NAMES:
        raise ParameterError(f"promotion metric {metric!r}: choose one of {', '.join(METRIC_NAMES)} "
                             f"(the test metrics of evaluation/metrics.json)")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin >= 0:
        raise ParameterError(f"promotion margin={margin!r}: must be a number >= 0 (how much better, "
                             f"absolute, a new version must score to take the {CHAMPION_ALIAS} alias)")


def short_split(split_id: str | None) -> str:
    """The first 12 hex digits of a test split id, or ``unknown``."""
    return "unknown" if not split_id else split_id.split(":", 1)[-1][:12]


def _incomparable(candidate: Score, champion: Score, metric: str, same_split: bool) -> str:
    if not same_split:
        why = (f"was evaluated on test split {short_split(champion.test_split_id)}, "
               f"v{candidate.version} on {short_split(candidate.test_split_id)}")
    elif champion.rescored:
        why = f"re-evaluated on this test split has no finite {metric} ({champion.value!r})"
    else:
        why = f"has no {metric} tag that is a finite number"
    return (f"{CHAMPION_ALIAS} v{champion.version} {why}: the scores are not comparable, "
            f"so {CHAMPION_ALIAS} stays; re-evaluate v{champion.version} on this split "
            f"(champion_score_on_split) or set the alias by hand")


def _compare(candidate: Score, champion: Score, metric: str, margin: float, higher: bool) -> Decision:
    """Both scores are on the same split: better by more than ``margin`` promotes."""
    new, old = float(candidate.value), float(champion.value)  # type: ignore[arg-type]
    beats = new > old + margin if higher else new < old - margin
    direction = "higher" if higher else "lower"
    basis = (f"re-evaluated on test split {short_split(candidate.test_split_id)}" if champion.rescored
             else f"on the same test split {short_split(candidate.test_split_id)}")
    if beats:
        reason = (f"v{candidate.version} {metric}={new:.4f} beats {CHAMPION_ALIAS} v{champion.version} "
                  f"{metric}={old:.4f} by more than margin {margin:g} ({direction} is better, {basis})")
        return Decision(True, "better", reason, candidate.version, old)
    reason = (f"v{candidate.version} {metric}={new:.4f} does not beat {CHAMPION_ALIAS} "
              f"v{champion.version} {metric}={old:.4f} by more than margin {margin:g} "
              f"({direction} is better, {basis}); {CHAMPION_ALIAS} stays v{champion.version}")
    return Decision(False, "not_better", reason, champion.version, old)


def decide(candidate: Score, champion: Score | ChampionUnreadable | None, metric: str,
           margin: float, higher_is_better: bool = True) -> Decision:
    """Whether ``candidate`` takes the alias from ``champion``; the whole rule, no I/O.

    Args:
        candidate: the new version's score (its value must be known).
        champion: the current champion's score; ``None`` when no version holds the alias;
            :class:`ChampionUnreadable` when the registry could not say (never promotes).
        metric: the metric's name (for the reason).
        margin: how much better (absolute) the candidate must be; >= 0.
        higher_is_better: the metric's direction.

    Returns:
        The :class:`Decision`.
    """
    if candidate.value is None or not math.isfinite(candidate.value):
        raise ValueError(f"v{candidate.version} has no finite {metric} score to compare")
    if not margin >= 0:
        raise ValueError(f"margin={margin!r}: must be >= 0")
    if isinstance(champion, ChampionUnreadable):
        reason = (f"the {CHAMPION_ALIAS} or its score could not be read ({champion.error}); "
                  f"v{candidate.version} is not promoted (fail closed): retry, or set the alias by hand")
        return Decision(False, "champion_unreadable", reason, None)
    if champion is None:
        reason = (f"no {CHAMPION_ALIAS} yet: v{candidate.version} ({metric}={candidate.value:.4f}) "
                  f"becomes {CHAMPION_ALIAS}")
        return Decision(True, "first_champion", reason, candidate.version)
    if champion.version == candidate.version:
        return Decision(False, "already_champion", f"v{candidate.version} already is {CHAMPION_ALIAS}",
                        candidate.version)
    same_split = champion.rescored or (bool(candidate.test_split_id)
                                       and champion.test_split_id == candidate.test_split_id)
    if not same_split or champion.value is None or not math.isfinite(champion.value):
        return Decision(False, "incomparable", _incomparable(candidate, champion, metric, same_split),
                        champion.version, champion.value)
    return _compare(candidate, champion, metric, margin, higher_is_better)
