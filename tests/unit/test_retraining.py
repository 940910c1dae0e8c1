"""Whether a run trains (components.tracking.retraining): the rule as a table, and the canonical parameters.

No MLflow: decide_retraining() is a pure function of the fingerprint, the parameters and what the
champion records.
"""

from __future__ import annotations

import json

import pytest

import pipeline
from components.tracking.retraining import (
    FINGERPRINT_TAG,
    PARAMS_DIGEST_TAG,
    PARAMS_TAG,
    TRAINING_PARAMETERS,
    ChampionRecord,
    ChampionUnknown,
    canonical_parameters,
    decide_retraining,
    parameters_digest,
)

DATA = "sha256:" + "a" * 64
GROWN = "sha256:" + "b" * 64


def pipeline_defaults() -> dict:
    """The pipeline's own defaults of the training parameters."""
    inputs = pipeline.build_pipeline().component_spec.inputs
    return {name: inputs[name].default for name in TRAINING_PARAMETERS}


PARAMS = canonical_parameters(pipeline_defaults())
OTHER_PARAMS = canonical_parameters({**pipeline_defaults(), "train_epochs": 7})


def champion(fingerprint: str | None = DATA, params: str | None = PARAMS) -> ChampionRecord:
    tags = {FINGERPRINT_TAG: fingerprint} if fingerprint else {}
    if params:
        tags |= {PARAMS_TAG: params, PARAMS_DIGEST_TAG: parameters_digest(params)}
    return ChampionRecord.from_tags("3", tags)


CASES = {
    "same data, same parameters": (DATA, PARAMS, champion(), False, False, "no_new_data"),
    "same data and parameters, forced": (DATA, PARAMS, champion(), True, True, "forced"),
    "grown data": (GROWN, PARAMS, champion(), False, True, "new_data"),
    "other parameters": (DATA, OTHER_PARAMS, champion(), False, True, "new_parameters"),
    "no champion": (DATA, PARAMS, None, False, True, "no_champion"),
    "champion unreadable": (DATA, PARAMS, ChampionUnknown("ConnectionError: refused"), False, True,
                            "champion_unreadable"),
    "champion without training parameters": (DATA, PARAMS, champion(params=None), False, True, "champion_untagged"),
    "champion without fingerprint": (DATA, PARAMS, champion(fingerprint=None), False, True, "champion_untagged"),
    "champion fingerprint unknown": (DATA, PARAMS, champion(fingerprint="unknown"), False, True, "champion_untagged"),
}


@pytest.mark.parametrize("fingerprint, params, record, force, train, rule", CASES.values(), ids=CASES.keys())
def test_rule(fingerprint, params, record, force, train, rule):
    decision = decide_retraining(fingerprint, params, record, force)
    assert (decision.train, decision.rule) == (train, rule)
    assert decision.outcome == ("train" if train else "skip")
    assert decision.reason


def test_no_new_data_names_the_champion_and_the_way_to_force():
    decision = decide_retraining(DATA, PARAMS, champion())
    assert decision.reason.startswith("no new data")
    assert "v3" in decision.reason and "force_retrain" in decision.reason and DATA[:19] in decision.reason
    assert decision.champion_version == "3"


def test_other_parameters_are_named_with_old_and_new_values():
    reason = decide_retraining(DATA, OTHER_PARAMS, champion()).reason
    assert "train_epochs: 50 -> 7" in reason
    assert "train_batch_size" not in reason


def test_canonical_parameters_are_stable_and_typed():
    values = pipeline_defaults()
    text = canonical_parameters(values)
    assert text == canonical_parameters(dict(reversed(values.items())))  # order does not matter
    assert list(json.loads(text)) == sorted(TRAINING_PARAMETERS)
    # a float parameter given as 50.0 or 50 is the same parameter; 0.5 stays 0.5
    assert canonical_parameters({**values, "train_epochs": 50.0}) == canonical_parameters({**values, "train_epochs": 50})
    assert json.loads(text)["model_threshold"] == 0.5
    assert canonical_parameters({**values, "train_learning_rate": 0.003}) != canonical_parameters(
        {**values, "train_learning_rate": 0.0031})
    assert parameters_digest(text).startswith("sha256:") and len(parameters_digest(text)) == 71


def test_training_parameters_are_pipeline_parameters_and_exclude_the_non_training_ones():
    inputs = set(pipeline.build_pipeline().component_spec.inputs)
    assert set(TRAINING_PARAMETERS) <= inputs
    # naming (the model's and its class's), publishing, tracking, promotion and evaluation
    # (test-time augmentation) settings do not change the trained model
    assert inputs - set(TRAINING_PARAMETERS) == {
        "dataset_uri", "model_name", "model_class_name", "model_publish_uri", "tracking_experiment",
        "tracking_promotion_metric", "tracking_promotion_margin", "force_retrain", "evaluate_tta"}


@pytest.mark.parametrize("change, message", [
    ({"train_epochs": None}, "missing: train_epochs"),
    ({"train_learning_rate": float("nan")}, "train_learning_rate=nan"),
])
def test_canonical_parameters_refuse_missing_or_non_finite(change, message):
    values = pipeline_defaults()
    for key, value in change.items():
        if value is None:
            del values[key]
        else:
            values[key] = value
    with pytest.raises(ValueError, match=message):
        canonical_parameters(values)
