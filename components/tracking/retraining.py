"""Whether a pipeline run trains at all, as a pure function: :func:`decide_retraining` compares the
run's dataset fingerprint and training parameters with those recorded on the ``champion``.

=======================  =======  ==============================================================
rule                     train    when
=======================  =======  ==============================================================
``forced``               yes      the pipeline parameter ``force_retrain`` is set
``no_champion``          yes      no version holds the ``champion`` alias yet
``champion_unreadable``  yes      the registry could not say who the champion is (training
                                  costs time; skipping on an error could skip forever)
``champion_untagged``    yes      the champion records no dataset fingerprint or no training
                                  parameters (registered before they were recorded)
``new_data``             yes      the dataset's fingerprint differs from the champion's
``new_parameters``       yes      same data, other training parameters
``no_new_data``          no       same data and same training parameters: the champion already
                                  is what this run would train
=======================  =======  ==============================================================

The training parameters are every pipeline parameter that changes the trained model or its test
split (:data:`TRAINING_PARAMETERS`), as canonical JSON (:func:`canonical_parameters`); a version
records them, and their digest, as the tags :data:`PARAMS_TAG` and :data:`PARAMS_DIGEST_TAG`
(copied from its run at registration). :mod:`components.tracking.champion` reads the champion's
tags and records the decision on the run.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

#: The pipeline parameters whose values make a different model: the dataset's preprocessing and
#: split, and every training option. Names as in ``pipeline.py``.
TRAINING_PARAMETERS = (
    "dataset_image_size", "split_train_ratio", "split_val_ratio", "split_test_ratio", "split_seed",
    "train_architecture", "train_base_channels", "train_depth", "train_loss", "train_optimizer",
    "train_learning_rate", "train_weight_decay", "train_lr_schedule", "train_augment",
    "train_warmup_epochs", "train_crop_scale", "train_color_jitter", "train_dice_weight", "train_ema_decay", "train_epochs",
    "train_batch_size", "train_patience", "train_precision", "model_threshold",
)
#: Run and version tag: the training parameters as canonical JSON.
PARAMS_TAG = "training.params"
#: Run and version tag: ``sha256:<hex>`` of :data:`PARAMS_TAG`.
PARAMS_DIGEST_TAG = "training.params_digest"
#: Version tag (set at registration from ``stats.json``): the dataset's content fingerprint.
FINGERPRINT_TAG = "dataset.fingerprint"
#: Run tags of the decision: ``train`` or ``skip``, the rule, and the sentence for people.
DECISION_TAG, RULE_TAG, REASON_TAG = "retraining.decision", "retraining.rule", "retraining.reason"
#: Run tag ``campseg.outcome`` of a run that skipped training: :data:`NO_NEW_DATA`.
OUTCOME_TAG, NO_NEW_DATA = "campseg.outcome", "no new data"


def canonical_parameters(values: Mapping[str, Any]) -> str:
    """The training parameters of ``values`` as canonical JSON: sorted keys, booleans, integers
    and finite floats as JSON spells them (``2`` and ``2.0`` of a float parameter agree).

    Raises:
        ValueError: a parameter of :data:`TRAINING_PARAMETERS` is missing, or a number is not finite.
    """
    missing = [name for name in TRAINING_PARAMETERS if name not in values]
    if missing:
        raise ValueError(f"training parameters missing: {', '.join(missing)}")
    canonical: dict[str, Any] = {}
    for name in TRAINING_PARAMETERS:
        value = values[name]
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError(f"{name}={value!r}: not a finite number")
            value = int(value) if value.is_integer() else value
        canonical[name] = value
    return json.dumps(canonical, sort_keys=True, separators=(",", ":"))


def parameters_digest(canonical: str) -> str:
    """``sha256:<hex>`` of :func:`canonical_parameters`' JSON."""
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class ChampionRecord:
    """What the champion version records about how it was trained.

    Attributes:
        version: its version number.
        fingerprint: its dataset's content fingerprint (``None``: not recorded).
        params_digest: the digest of its training parameters (``None``: not recorded).
        params: its training parameters as JSON, for the reason (``None``: not recorded).
    """

    version: str
    fingerprint: str | None
    params_digest: str | None
    params: str | None = None

    @classmethod
    def from_tags(cls, version: str, tags: Mapping[str, str]) -> "ChampionRecord":
        fingerprint = tags.get(FINGERPRINT_TAG)
        return cls(str(version), None if fingerprint in (None, "", "unknown") else fingerprint,
                   tags.get(PARAMS_DIGEST_TAG) or None, tags.get(PARAMS_TAG) or None)


@dataclass(frozen=True)
class ChampionUnknown:
    """The registry failed to say who the champion is; ``error`` says what failed."""

    error: str


@dataclass(frozen=True)
class RetrainDecision:
    """What :func:`decide_retraining` concluded: ``train``, by which ``rule``, and why."""

    train: bool
    rule: str
    reason: str
    champion_version: str | None = None

    @property
    def outcome(self) -> str:
        """``train`` or ``skip`` (the decision step's output and the ``retraining.decision`` tag)."""
        return "train" if self.train else "skip"


def _changed_parameters(ours: str, theirs: str | None) -> str:
    """``name: old -> new`` for each training parameter that differs (empty when unreadable)."""
    try:
        new, old = json.loads(ours), json.loads(theirs or "")
    except (TypeError, ValueError):
        return ""
    changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(new) if old.get(k) != new.get(k)]
    return ", ".join(changed)


def decide_retraining(fingerprint: str, parameters: str, champion: ChampionRecord | ChampionUnknown | None,
                      force: bool = False) -> RetrainDecision:
    """Whether this run trains; the whole rule, no I/O.

    Args:
        fingerprint: the dataset's content fingerprint (the ``dataset-fingerprint`` step's).
        parameters: the run's training parameters, :func:`canonical_parameters`.
        champion: what the champion records; ``None`` when no version holds the alias;
            :class:`ChampionUnknown` when the registry could not say.
        force: the pipeline parameter ``force_retrain``.
    """
    digest = parameters_digest(parameters)
    if force:
        return RetrainDecision(True, "forced", "force_retrain is set: training whatever the champion records",
                               getattr(champion, "version", None))
    if isinstance(champion, ChampionUnknown):
        return RetrainDecision(True, "champion_unreadable",
                               f"the champion could not be read ({champion.error}); training as if the data were new")
    if champion is None:
        return RetrainDecision(True, "no_champion", "no champion yet: training the first one")
    v = champion.version
    if champion.fingerprint is None or champion.params_digest is None:
        return RetrainDecision(True, "champion_untagged",
                               f"champion v{v} records no dataset fingerprint or training parameters; training", v)
    if champion.fingerprint != fingerprint:
        return RetrainDecision(True, "new_data", f"the dataset changed since champion v{v} "
                               f"({champion.fingerprint[:19]} -> {fingerprint[:19]}): training", v)
    if champion.params_digest != digest:
        changed = _changed_parameters(parameters, champion.params)
        return RetrainDecision(True, "new_parameters", f"same data as champion v{v}, other training parameters"
                               f"{f' ({changed})' if changed else ''}: training", v)
    return RetrainDecision(False, "no_new_data",
                           f"no new data: dataset {fingerprint[:19]} and training parameters are those of "
                           f"champion v{v}; training, evaluation and registration skipped "
                           f"(force_retrain=true trains anyway)", v)
