"""One vocabulary for both command lines: each pipeline parameter's flag and its short aliases.

``pipeline.py`` names a parameter after the pipeline function's argument (``--train-epochs``);
``python -m components`` has always said ``--epochs``. Both now accept both: the pipeline's name
first, then the aliases of :data:`TRAINING` (training pipeline, stages stats ... all) and
:data:`PREDICTION` (batch-prediction pipeline, stage predict).

A name that means something in one command line only is listed with the reason in
:data:`PIPELINE_ONLY` or :data:`STAGE_ONLY`; tests/unit/test_cli_vocabulary.py checks that every
flag of either parser is in one of these tables, and that both parsers accept every shared name.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The stages of ``python -m components`` that read and write a run folder from a dataset.
_DATA_STAGES = ("stats", "train", "export", "evaluate", "all")


@dataclass(frozen=True)
class Term:
    """A pipeline parameter as the stage command line knows it.

    Attributes:
        aliases: its short names (``--epochs``), accepted by both command lines after the
            pipeline's own name (``--train-epochs``).
        stages: the stages of ``python -m components`` that take it.
    """

    aliases: tuple[str, ...]
    stages: tuple[str, ...]


_STATS = ("stats", "all")
_TRAIN = ("train", "all")

#: The training pipeline's parameters (``pipeline.py``) and the stages that take them.
TRAINING: dict[str, Term] = {
    "dataset_uri": Term(("--data",), _DATA_STAGES),
    "dataset_image_size": Term(("--image-size",), _STATS),
    "split_train_ratio": Term(("--train-ratio",), _STATS),
    "split_val_ratio": Term(("--val-ratio",), _STATS),
    "split_test_ratio": Term(("--test-ratio",), _STATS),
    "split_seed": Term(("--seed",), ("stats", "train", "all")),
    "train_architecture": Term(("--architecture",), _TRAIN),
    "train_base_channels": Term(("--base-channels",), _TRAIN),
    "train_depth": Term(("--depth",), ("stats", "train", "all")),
    "train_loss": Term(("--loss",), _TRAIN),
    "train_optimizer": Term(("--optimizer",), _TRAIN),
    "train_learning_rate": Term(("--learning-rate",), _TRAIN),
    "train_weight_decay": Term(("--weight-decay",), _TRAIN),
    "train_lr_schedule": Term(("--lr-schedule",), _TRAIN),
    "train_augment": Term(("--augment",), _TRAIN),
    "train_warmup_epochs": Term(("--warmup-epochs",), _TRAIN),
    "train_crop_scale": Term(("--crop-scale",), _TRAIN),
    "train_color_jitter": Term(("--color-jitter",), _TRAIN),
    "train_dice_weight": Term(("--dice-weight",), _TRAIN),
    "train_ema_decay": Term(("--ema-decay",), _TRAIN),
    "train_epochs": Term(("--epochs",), _TRAIN),
    "train_batch_size": Term(("--batch-size",), _TRAIN),
    "train_patience": Term(("--patience",), _TRAIN),
    "train_precision": Term(("--precision",), _TRAIN),
    "evaluate_tta": Term(("--tta",), ("evaluate", "all")),
    "model_name": Term((), ("dlpk", "stac", "all")),
    "model_threshold": Term(("--threshold",), _STATS),
    "model_class_name": Term(("--class-name",), _STATS),
}

#: ``--no-augment``: the switch form of ``--train-augment false``, on both command lines.
NO_AUGMENT = "--no-augment"

#: The batch-prediction pipeline's parameters (``pipeline.py --pipeline predict``).
PREDICTION: dict[str, Term] = {
    "scene_uri": Term(("--input",), ("predict",)),
    "predict_threshold": Term(("--threshold",), ("predict",)),
    "predict_overlap": Term(("--overlap",), ("predict",)),
    "predict_min_area_m2": Term(("--min-area",), ("predict",)),
    "predict_device": Term(("--device",), ("predict",)),
    "predict_tta": Term(("--tta",), ("predict",)),
}

#: Pipeline parameters with no meaning for a stage run on a folder, and why.
PIPELINE_ONLY: dict[str, str] = {
    "model_publish_uri": "publishing to s3:// is the pipeline's register-model step",
    "tracking_experiment": "the stages log to no MLflow run",
    "tracking_promotion_metric": "promotion in the MLflow registry is the pipeline's register-model step",
    "tracking_promotion_margin": "promotion in the MLflow registry is the pipeline's register-model step",
    "force_retrain": "the decide-training step compares with the registry's champion; a stage always runs",
    "output_uri": "predict --out is a local folder; the pipeline writes under <output_uri>/<KFP run id>/",
    "model_ref": "predict --run is a run folder; the pipeline also resolves models:/ registry references",
}

#: Stage flags the pipelines have no parameter for, and why.
STAGE_ONLY: dict[str, str] = {
    "--out": "the stage's output path (pipeline.py: --output-dir of --run-local, artifacts on a cluster)",
    "--run": "the run folder a stage reads (the pipeline passes artifacts between steps)",
    "--chips": "sample-data only",
    "--size": "sample-data and sample-scene only",
    "--tiles": "sample-scene only",
    "--seed": "sample-data's and sample-scene's generator seed (the training stages' --seed is --split-seed)",
    "--encoder-name": "smp_unet's encoder: the pipeline has no parameter for it yet (its default is used)",
    "--nodata": "the pipeline has no parameter for it yet (GeoTIFF nodata and alpha still apply)",
    "--max-pixels": "a safety limit of this machine ($CAMPSEG_MAX_PIXELS on a cluster)",
    "--model-version": "dlpk: the pipeline takes the registered version",
    "--license": "stac: the pipeline has no parameter for it yet",
    "--provider": "stac: the pipeline has no parameter for it yet",
    "--imagery-period": "stac: the pipeline has no parameter for it yet",
    "--container-image": "stac: the pipeline records the images it was compiled with",
    "--batch-size": "predict's windows per ONNX Runtime call (train's --batch-size is --train-batch-size)",
    "--resample": "predict only: the pipeline has no parameter for it yet",
    "--accelerator": "the pipeline's training step uses the accelerator its node pool gives it (--accelerator-type)",
    "--devices": "the pipeline sets it from the training step's --accelerator-count",
    "--num-nodes": "the pipeline's compile-time --train-nodes (a TrainJob of that many nodes)",
    "--num-workers": "the pipeline's training step takes it from the pod's CPUs",
    "--compile": "the pipeline has no parameter for it yet",
    "--channels-last": "the pipeline has no parameter for it yet (it is on by default)",
    "--no-channels-last": "the pipeline has no parameter for it yet (--channels-last is on by default)",
    "--deterministic": "the pipeline trains deterministically (a retrain with the same seed gives the same model)",
    "--no-deterministic": "the pipeline trains deterministically; off gained 3-9% on an H100 (docs/benchmarks.md)",
}


def flag(name: str) -> str:
    """``--train-epochs`` for ``train_epochs``."""
    return "--" + name.replace("_", "-")


def option_strings(name: str, table: dict[str, Term] = TRAINING) -> list[str]:
    """Every name of parameter ``name``: the pipeline's flag, then its aliases."""
    term = table.get(name)
    return [flag(name), *(term.aliases if term else ())]


#: How a Boolean parameter's option reads on both command lines: ``--tta`` alone is true, and
#: ``--tta true``/``--tta false`` (the form a config file and the pipeline's YAML use) work too.
SWITCH = {"nargs": "?", "const": True, "metavar": "BOOL"}


def stage_dest(name: str, table: dict[str, Term] = TRAINING) -> str:
    """The attribute the stage command line keeps ``name`` under: its first alias (``epochs``)."""
    term = table[name]
    return (term.aliases[0] if term.aliases else flag(name)).removeprefix("--").replace("-", "_")
