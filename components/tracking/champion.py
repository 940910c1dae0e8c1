"""The ``champion`` alias in the MLflow registry: read it, re-score the champion on a run's test
split, apply :func:`~components.tracking.promotion.decide` to a new version, and apply
:func:`~components.tracking.retraining.decide_retraining` before a run trains.

Only "the model has no such alias / no versions yet" means *no champion*; any other error while
reading the alias, or while re-scoring the champion, makes the champion *unreadable*, and an
unreadable champion is never replaced (fail closed). A champion whose score tag is missing or not
a finite number is *incomparable*: not replaced either.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Any, Mapping

from components.contracts.errors import TrackingError
from components.contracts.run_layout import RunLayout, read_json
from components.tracking import promotion
from components.tracking.promotion import CHAMPION_ALIAS, ChampionUnreadable, Decision, Score, decide
from components.tracking.registry import TEST_SPLIT_TAG, compute_test_split_id
from components.tracking.retraining import (
    DECISION_TAG,
    NO_NEW_DATA,
    OUTCOME_TAG,
    PARAMS_DIGEST_TAG,
    PARAMS_TAG,
    REASON_TAG,
    RULE_TAG,
    ChampionRecord,
    ChampionUnknown,
    RetrainDecision,
    decide_retraining,
    parameters_digest,
)
from components.tracking.runs import write_tags
from components.tracking.server import client as make_client
from components.tracking.server import first_line

log = logging.getLogger(__name__)


def is_missing_alias(exc: BaseException) -> bool:
    """Whether a failed alias lookup means "no such model or alias" rather than a registry error.

    MLflow answers ``RESOURCE_DOES_NOT_EXIST`` for a model that does not exist, and (3.x SQL and
    file stores) ``INVALID_PARAMETER_VALUE`` "Registered model alias … not found" for a model
    without the alias.
    """
    from mlflow.exceptions import MlflowException

    if not isinstance(exc, MlflowException):
        return False
    if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
        return True
    text = str(exc).lower()
    return exc.error_code == "INVALID_PARAMETER_VALUE" and "alias" in text and "not found" in text


def read_champion(client, model_name: str):
    """The version holding the alias, ``None`` when there is none, or :class:`ChampionUnreadable`."""
    try:
        return client.get_model_version_by_alias(model_name, CHAMPION_ALIAS)
    except Exception as e:  # noqa: BLE001 - sorted into "none" and "unreadable" below
        if is_missing_alias(e):
            return None
        log.warning("reading %s@%s failed: %s: %s", model_name, CHAMPION_ALIAS, type(e).__name__, first_line(e))
        return ChampionUnreadable(f"{type(e).__name__}: {first_line(e)}")


def champion_score_on(tracking_uri: str, layout: RunLayout, model_name: str, data: Path | None,
                      metric: str) -> Score | ChampionUnreadable | None:
    """Re-score the current champion on this run's test split, with its own preprocessing.

    It downloads the champion version's logged model, reads its ``stats.json`` (extra file) and
    scores its ONNX model with ONNX Runtime on the run's test chips, with test-time augmentation
    when the run's own evaluation had it (``metrics.json`` ``tta``), so both scores mean the same.

    Returns:
        The champion's :class:`Score` (``rescored=True``), ``None`` when there is no champion,
        or :class:`ChampionUnreadable` when the registry failed to say (promotion then fails closed).
    """
    import mlflow

    from components.contracts.preprocessing import Preprocessing
    from components.data.manifest import read_manifest
    from components.ml.scoring import onnx_predictor, score
    from components.ml.tta import with_tta

    champion = read_champion(make_client(tracking_uri), model_name)
    if champion is None or isinstance(champion, ChampionUnreadable):
        return champion
    version = str(champion.version)
    try:
        with tempfile.TemporaryDirectory(prefix="campseg-champion-") as tmp:
            local = Path(mlflow.artifacts.download_artifacts(
                f"models:/{model_name}/{version}", dst_path=tmp, tracking_uri=tracking_uri))
            stats = next(local.rglob("stats.json"), None)
            onnx_file = next(local.rglob("*.onnx"), None)
            if stats is None or onnx_file is None:
                raise TrackingError(f"its logged model has no {'stats.json' if stats is None else 'ONNX file'}")
            prep = Preprocessing.from_stats(read_json(stats))
            pairs = [p for p in read_manifest(layout, data) if p.split == "test"]
            sizes = [tuple(size) for size in read_json(layout.stats).get("source_sizes") or []]
            tta = bool(read_json(layout.metrics).get("tta")) if layout.metrics.exists() else False
            predictor = with_tta(onnx_predictor(onnx_file, prep), tta)
            values, _ = score(pairs, predictor, prep, trained_sizes=sizes)  # as trained
            value = float(values[metric])
    except Exception as e:  # noqa: BLE001 - fail closed: a champion we cannot score is kept
        log.warning("re-scoring %s v%s failed: %s: %s", model_name, version, type(e).__name__, first_line(e))
        return ChampionUnreadable(f"re-scoring {CHAMPION_ALIAS} v{version} on this run's test split "
                                  f"failed: {type(e).__name__}: {first_line(e)}")
    return Score(version, value, compute_test_split_id(layout.root), rescored=True)


def _tag_score(tags: Mapping[str, str], metric: str) -> float | None:
    try:
        value = float(tags[f"metric.{metric}"])
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _champion(client, model_name: str, metric: str, split: str | None,
              rescore: float | Score | ChampionUnreadable | None,
              ) -> tuple[Score | ChampionUnreadable | None, str | None]:
    """The champion's score (a re-score on ``split`` when given for this champion, else its tags)
    and the test split of its own evaluation (its ``test_split_id`` tag)."""
    if isinstance(rescore, ChampionUnreadable):
        return rescore, None
    current = read_champion(client, model_name)
    if current is None or isinstance(current, ChampionUnreadable):
        return current, None
    version, own_split = str(current.version), current.tags.get(TEST_SPLIT_TAG)
    if isinstance(rescore, Score) and rescore.version == version:
        return rescore, own_split
    if rescore is not None and not isinstance(rescore, Score):
        value = float(rescore)
        return Score(version, value if math.isfinite(value) else None, split, rescored=True), own_split
    # no re-score, or one of a version that no longer holds the alias: its own tags
    return Score(version, _tag_score(current.tags, metric), own_split), own_split


def _apply(client, model_name: str, version: str, run_id: str | None, metric: str, margin: float,
           decision: Decision, previous: str | None) -> None:
    """Move the alias when promoted; record the decision on the version and its run."""
    if decision.promote:
        client.set_registered_model_alias(model_name, CHAMPION_ALIAS, version)
    tags = {"promotion.decision": decision.outcome, "promotion.reason": decision.reason,
            "promotion.rule": decision.rule, "promotion.metric": metric,
            "promotion.margin": f"{margin:g}", "promotion.champion_version": str(decision.champion_version),
            "promotion.previous_champion_version": str(previous)}
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    if run_id:
        write_tags(client, run_id, tags)


def _recorded_promotion(tags: Mapping[str, str], decision: Decision) -> tuple[Decision, str | None] | None:
    """The promotion an earlier call recorded on a version that still holds the alias, or ``None``.

    Deciding again would say ``already_champion`` (not promoted) and overwrite the record of the
    try that moved the alias; a retried registration step reports that try's decision instead.
    """
    if decision.rule != "already_champion" or tags.get("promotion.decision") != "promoted":
        return None
    previous = tags.get("promotion.previous_champion_version")
    recorded = Decision(True, tags.get("promotion.rule", "already_champion"),
                        tags.get("promotion.reason", decision.reason), decision.champion_version)
    return recorded, None if previous in (None, "None") else previous


def promote_if_better(
    tracking_uri: str,
    model_name: str,
    version: str | int,
    metric: str = "iou",
    margin: float = 0.0,
    *,
    test_split_id: str | None = None,
    champion_score_on_split: float | Score | ChampionUnreadable | None = None,
    higher_is_better: bool | None = None,
) -> dict[str, Any]:
    """Move the alias ``champion`` to ``version`` only if it beats the champion by more than ``margin``.

    The scores are the versions' ``metric.<metric>`` tags (set by ``register_model`` from
    ``evaluation/metrics.json``); the rule is :func:`~components.tracking.promotion.decide`.
    Only a missing alias counts as "no champion"; another registry error keeps the alias where
    it is (rule ``champion_unreadable``).

    The decision is recorded as tags ``promotion.decision`` (``promoted`` / ``not_promoted``),
    ``promotion.reason``, ``promotion.rule``, ``promotion.champion_version`` on the version and on
    its run.

    Args:
        version: the new version.
        metric: a test metric name of ``evaluation/metrics.json`` (``iou``, ``f1``, ...).
        margin: how much better (absolute) the new version must be; >= 0.
        test_split_id: the split the new version was evaluated on; defaults to its tag and, when
            both are present, must match it.
        champion_score_on_split: the champion's ``metric`` on this version's test split, from a
            re-evaluation (a number, or what :func:`champion_score_on` returned); lets versions
            evaluated on different splits be compared.
        higher_is_better: default: ``False`` for names ending in loss/error, else ``True``.

    Returns:
        ``decision``, ``reason``, ``rule``, ``promoted`` (bool), ``champion_version`` (after the
        decision), ``previous_champion_version``, ``metric``, ``margin``, ``new_score``,
        ``champion_score``, ``test_split_id``, ``champion_test_split_id``.
    """
    if not margin >= 0:
        raise TrackingError(f"margin={margin!r}: must be >= 0")
    higher = promotion.higher_is_better(metric) if higher_is_better is None else higher_is_better
    client = make_client(tracking_uri)
    version = str(version)
    new = client.get_model_version(model_name, version)
    tag_split = new.tags.get(TEST_SPLIT_TAG)
    if test_split_id and tag_split and test_split_id != tag_split:
        raise TrackingError(f"{model_name} v{version} was evaluated on test split {tag_split}, "
                            f"not {test_split_id}")
    split = test_split_id or tag_split
    new_score = _tag_score(new.tags, metric)
    if new_score is None:
        raise TrackingError(f"{model_name} v{version} has no tag metric.{metric}; register it with "
                            f"register_model (evaluation/metrics.json lacks {metric!r}?)")
    champion, champion_split = _champion(client, model_name, metric, split, champion_score_on_split)
    decision = decide(Score(version, new_score, split), champion, metric, float(margin), higher)
    known = isinstance(champion, Score)
    previous = champion.version if known else None
    recorded = _recorded_promotion(new.tags, decision)
    if recorded is not None:  # a retried step: an earlier try promoted this version; keep its record
        decision, previous = recorded
    else:
        _apply(client, model_name, version, new.run_id, metric, margin, decision, previous)
    log.info("promotion of %s v%s: %s", model_name, version, decision.reason)
    return {
        "metric": metric, "margin": float(margin), "higher_is_better": higher,
        "new_version": version, "new_score": new_score, "test_split_id": split,
        "previous_champion_version": previous,
        "champion_score": decision.champion_score,
        "champion_test_split_id": champion_split if decision.rule != "already_champion" else None,
        "decision": decision.outcome, "promoted": decision.promote, "rule": decision.rule,
        "reason": decision.reason, "champion_version": decision.champion_version,
    }


def retraining_decision(tracking_uri: str, run_id: str, model_name: str, fingerprint: str, parameters: str,
                        force: bool = False) -> RetrainDecision:
    """Whether the pipeline run ``run_id`` trains: its data and training parameters against the champion's.

    The run gets the tags ``training.params`` and ``training.params_digest`` (registration copies
    them to its version), ``retraining.decision`` (``train``/``skip``), ``retraining.rule`` and
    ``retraining.reason``; a run that skips also gets ``campseg.outcome`` = ``no new data``.

    Args:
        fingerprint: the dataset's content fingerprint.
        parameters: the run's training parameters, :func:`~components.tracking.retraining.canonical_parameters`.
        force: train whatever the champion records (the pipeline parameter ``force_retrain``).
    """
    client = make_client(tracking_uri)
    current = read_champion(client, model_name)
    if isinstance(current, ChampionUnreadable):
        champion: ChampionRecord | ChampionUnknown | None = ChampionUnknown(current.error)
    elif current is None:
        champion = None
    else:
        champion = ChampionRecord.from_tags(str(current.version), current.tags)
    decision = decide_retraining(fingerprint, parameters, champion, force)
    tags = {PARAMS_TAG: parameters, PARAMS_DIGEST_TAG: parameters_digest(parameters),
            DECISION_TAG: decision.outcome, RULE_TAG: decision.rule, REASON_TAG: decision.reason}
    if not decision.train:
        tags[OUTCOME_TAG] = NO_NEW_DATA
    if run_id:
        write_tags(client, run_id, tags)
    log.info("%s: %s", model_name, decision.reason)
    return decision
