"""``python -m components STAGE ...``: run one stage, or all of them, on a run folder.

A pipeline parameter's option has the pipeline's name and the stage's short alias
(``--train-epochs``/``--epochs``, ``components/cli/vocabulary.py``); every stage takes
``--config FILE`` (YAML) and ``--print-config``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence, get_args

from components.cli.options import (
    HelpFormatter,
    add_config_flags,
    apply_config,
    config_path,
    config_values,
    dump_config,
    effective_config,
    fill_repeated,
    parse_bool,
)
from components.cli.vocabulary import NO_AUGMENT, PREDICTION, SWITCH, TRAINING, Term, option_strings, stage_dest
from components.contracts.config import (
    AcceleratorName,
    Architecture,
    LossName,
    OptimizerName,
    PrecisionName,
    ScheduleName,
    TrainConfig,
)
from components.contracts.errors import PipelineInputError
from components.contracts.ownership import open_output
from components.contracts.preprocessing import DEFAULT_CLASS_NAME, Preprocessing
from components.contracts.run_layout import RunLayout, read_json
from components.data.splits import SplitRatios

SAMPLE_CHIPS = 64
SAMPLE_SIZE = 128
MODEL_NAME = "camp-segmentation"


def _term(p: argparse.ArgumentParser, name: str, table: dict[str, Term] = TRAINING, **kwargs) -> None:
    """The option of pipeline parameter ``name``: its pipeline name and its aliases (vocabulary)."""
    p.add_argument(*option_strings(name, table), dest=stage_dest(name, table), **kwargs)


def _add_data_args(p: argparse.ArgumentParser, required: bool) -> None:
    _term(p, "dataset_uri", type=Path, required=required, metavar="DIR",
          help="dataset folder with chips/ and labels/ paired by file stem")


def _add_evaluate_args(p: argparse.ArgumentParser) -> None:
    _term(p, "evaluate_tta", type=parse_bool, default=False, **SWITCH,
          help="test-time augmentation: score the mean probability of each chip and its horizontal, vertical "
               "and double flips (four model calls per chip); recorded in metrics.json")


def _add_stats_args(p: argparse.ArgumentParser) -> None:
    _term(p, "dataset_image_size", type=int, default=0,
          help="network input size in pixels (a multiple of 2**depth); 0: the chips' own size")
    ratios = SplitRatios()
    _term(p, "split_train_ratio", type=float, default=ratios.train, help="fraction of ground groups in the train split")
    _term(p, "split_val_ratio", type=float, default=ratios.val,
          help="fraction of ground groups in the validation split (model selection, early stopping)")
    _term(p, "split_test_ratio", type=float, default=ratios.test,
          help="fraction of ground groups in the test split (evaluation)")
    _term(p, "split_seed", type=int, default=TrainConfig.seed, help="seed of the split hash and of training")
    _term(p, "model_threshold", type=float, default=Preprocessing.threshold,
          help="camp probability at or above which a pixel is camp")
    _term(p, "model_class_name", default=DEFAULT_CLASS_NAME,
          help="name of the foreground class (value 1) in figures, the STAC item and the DLPK, e.g. building")
    p.add_argument("--nodata", type=float, default=None,
                   help="chip value meaning no data (all bands equal to it; 'nan' allowed), besides "
                        "GeoTIFF nodata and alpha 0; left out of statistics, loss and metrics")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="largest width x height of one image (default $CAMPSEG_MAX_PIXELS or 64000000)")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    _term(p, "train_architecture", default=defaults.architecture, choices=get_args(Architecture),
          help="unet (this project's U-Net), smp_unet (needs segmentation_models_pytorch) or seed_baseline")
    _term(p, "train_base_channels", type=int, default=defaults.base_channels,
          help="channels of the first U-Net level; each level doubles them")
    _term(p, "train_depth", type=int, default=defaults.depth, help="number of 2x poolings of the U-Net encoder")
    p.add_argument("--encoder-name", default=defaults.encoder_name, help="encoder of smp_unet")
    _term(p, "train_loss", default=defaults.loss, choices=get_args(LossName), help="training loss")
    _term(p, "train_optimizer", default=defaults.optimizer, choices=get_args(OptimizerName),
          help="adamw (with weight decay), adam or sgd (with momentum 0.9)")
    _term(p, "train_learning_rate", type=float, default=defaults.learning_rate, help="initial learning rate")
    _term(p, "train_weight_decay", type=float, default=defaults.weight_decay, help="weight decay of adamw and sgd")
    _term(p, "train_lr_schedule", default=defaults.lr_schedule, choices=get_args(ScheduleName),
          help="cosine, plateau (reduce on validation-loss plateau) or none")
    _term(p, "train_augment", type=parse_bool, default=defaults.augment, metavar="BOOL",
          help="flips, 90-degree rotations and brightness/contrast jitter on the train split")
    p.add_argument(NO_AUGMENT, dest="augment", action="store_false", default=argparse.SUPPRESS,
                   help="same as --train-augment false")
    _term(p, "train_warmup_epochs", type=float, default=defaults.warmup_epochs,
          help="epochs of linear learning-rate warm-up, step by step, before the schedule (0: none)")
    _term(p, "train_crop_scale", type=float, default=defaults.crop_scale,
          help="with augmentation, smallest share of a chip's area a random crop keeps before it is resized "
               "back (1: no crops)")
    _term(p, "train_color_jitter", type=float, default=defaults.color_jitter,
          help="with augmentation, largest relative change of each band's gain (0: none)")
    _term(p, "train_dice_weight", type=float, default=defaults.dice_weight,
          help="weight of the Dice term of the bce_dice loss (BCE has weight 1)")
    _term(p, "train_ema_decay", type=float, default=defaults.ema_decay,
          help="per-step decay of the weights' moving average that validates and is exported (0: none)")
    _term(p, "train_epochs", type=int, default=defaults.epochs, help="maximum number of epochs")
    _term(p, "train_batch_size", type=int, default=0,
          help="chips per batch and device; 0 (default): auto, 8 on the CPU, from GPU memory and the "
               "split's size on a GPU")
    _term(p, "train_patience", type=int, default=defaults.patience,
          help="epochs without validation-IoU improvement before early stopping")
    _term(p, "train_precision", default=defaults.precision, choices=get_args(PrecisionName),
          help="auto (bf16 mixed precision on GPU, fp32 on CPU), 32, bf16-mixed or 16-mixed")
    p.add_argument("--accelerator", default=defaults.accelerator, choices=get_args(AcceleratorName),
                   help="auto: a GPU when one is visible")
    p.add_argument("--devices", type=int, default=defaults.devices,
                   help="GPUs (or CPU processes) training together with DDP; --batch-size is per device")
    p.add_argument("--num-nodes", type=int, default=defaults.num_nodes,
                   help="nodes training together; above 1 start the command with torchrun on every node "
                        "(train stage only; see docs/training.md)")
    p.add_argument("--num-workers", type=int, default=defaults.num_workers,
                   help="loader processes per device (default: 0 on the CPU, from the CPU count on GPUs, at most 8)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (slow first steps)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=defaults.channels_last,
                   help="channels_last memory format (default on: faster convolutions on CPU and GPU)")
    p.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=defaults.deterministic,
                   help="deterministic algorithms only: a seed trains the same model again (default on); "
                        "--no-deterministic lets cuDNN pick its fastest kernels (faster on GPUs)")


def _config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        architecture=args.architecture, base_channels=args.base_channels, depth=args.depth,
        encoder_name=args.encoder_name, loss=args.loss, optimizer=args.optimizer,
        learning_rate=args.learning_rate, weight_decay=args.weight_decay, lr_schedule=args.lr_schedule,
        augment=args.augment, warmup_epochs=args.warmup_epochs, crop_scale=args.crop_scale,
        color_jitter=args.color_jitter, dice_weight=args.dice_weight, ema_decay=args.ema_decay, epochs=args.epochs,
        batch_size=args.batch_size or None, patience=args.patience,
        seed=args.seed, precision=args.precision, accelerator=args.accelerator, devices=args.devices,
        num_nodes=args.num_nodes,
        num_workers=args.num_workers, compile=args.compile, channels_last=args.channels_last,
        deterministic=args.deterministic,
    )


def _stage(sub, name: str, helptext: str) -> argparse.ArgumentParser:
    """A stage's parser: help with the defaults, and ``--config``/``--print-config``."""
    p = sub.add_parser(name, help=helptext, description=helptext, formatter_class=HelpFormatter)
    add_config_flags(p, f"the options of {name}")
    return p


def build_parser() -> argparse.ArgumentParser:
    """The stages and their options; a pipeline parameter's option has the pipeline's name first,
    then the stage's short alias (``--train-epochs/--epochs``, components/cli/vocabulary.py)."""
    parser = argparse.ArgumentParser(prog="python -m components", description=__doc__, formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="stage", required=True)

    p = _stage(sub, "sample-data", "write the synthetic sample dataset")
    p.add_argument("--out", type=Path, required=True, help="the dataset folder to write")
    p.add_argument("--chips", type=int, default=SAMPLE_CHIPS, help="number of chips")
    p.add_argument("--size", type=int, default=SAMPLE_SIZE, help="pixels per chip side")
    p.add_argument("--seed", type=int, default=0, help="seed of the generator")

    p = _stage(sub, "sample-scene", "write a georeferenced synthetic scene (GeoTIFF) to try predict on")
    p.add_argument("--out", type=Path, required=True, help="the scene's path (its labels go beside it)")
    p.add_argument("--tiles", type=int, default=8, help="chips per side")
    p.add_argument("--size", type=int, default=SAMPLE_SIZE, help="pixels per chip side")
    p.add_argument("--seed", type=int, default=1, help="seed of the generator")

    p = _stage(sub, "stats", "validate, split and compute statistics")
    _add_data_args(p, True)
    p.add_argument("--out", type=Path, required=True, help="run folder")
    _term(p, "train_depth", type=int, default=TrainConfig().network_depth,
          help="2x poolings of the network (the input size must be a multiple of 2**depth)")
    _add_stats_args(p)

    p = _stage(sub, "train", "train on a run folder's splits")
    p.add_argument("--run", type=Path, required=True, help="run folder of stats")
    _add_data_args(p, False)
    _term(p, "split_seed", type=int, default=TrainConfig.seed, help="seed of training")
    _add_train_args(p)

    p = _stage(sub, "export", "export state dict, TorchScript and ONNX with parity checks")
    p.add_argument("--run", type=Path, required=True, help="trained run folder")
    _add_data_args(p, False)

    p = _stage(sub, "evaluate", "evaluate the ONNX model on the test split or another folder")
    p.add_argument("--run", type=Path, required=True, help="exported run folder")
    _add_data_args(p, False)
    p.add_argument("--out", type=Path, default=None,
                   help="evaluate all chips of --dataset-uri into this folder: new, empty, or an earlier "
                        "evaluate --out (default: the run folder's test split)")
    _add_evaluate_args(p)

    p = _stage(sub, "predict", "map camps on whole GeoTIFF scenes: mask and probability COGs, polygons")
    p.add_argument("--run", type=Path, required=True, help="trained run folder (stats.json, models/model.onnx)")
    _term(p, "scene_uri", PREDICTION, required=True, metavar="SCENES",
          help="a GeoTIFF/COG scene, a folder of them, or an s3:// prefix")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder: new, empty, or an earlier predict --out (its files are replaced)")
    _term(p, "predict_threshold", PREDICTION, type=float, default=0.0,
          help="camp probability threshold; 0: the model's own")
    _term(p, "predict_overlap", PREDICTION, type=int, default=-1,
          help="pixels neighbouring windows share, blended; -1: a quarter of the model's tile")
    p.add_argument("--batch-size", type=int, default=8, help="windows per ONNX Runtime call")
    _term(p, "predict_min_area_m2", PREDICTION, type=float, default=0.0, help="drop polygons smaller than this many m²")
    _term(p, "predict_device", PREDICTION, choices=("cpu", "cuda"), default="cpu",
          help="cuda uses ONNX Runtime's CUDA provider when present (CPU otherwise)")
    p.add_argument("--resample", action="store_true",
                   help="predict a scene of another resolution at the training resolution instead of refusing it")
    _term(p, "predict_tta", PREDICTION, type=parse_bool, default=False, **SWITCH,
          help="test-time augmentation: each batch of windows is predicted with its horizontal, vertical and "
               "double flips too, and the mean probability blended (four model calls per window); recorded in "
               "predictions.json")

    for name, helptext in (("dlpk", "package an Esri .dlpk"), ("stac", "write the STAC-MLM item")):
        p = _stage(sub, name, helptext)
        p.add_argument("--run", type=Path, required=True, help="evaluated run folder")
        _term(p, "model_name", default=MODEL_NAME, help="name of the model in the package and the STAC item")
        if name == "dlpk":
            p.add_argument("--model-version", default=None,
                           help="the .emd Version: the registered model version (default: unregistered)")
        else:
            _add_stac_args(p)

    p = _stage(sub, "all", "stats, train, export, evaluate, dlpk and stac in sequence")
    _add_data_args(p, False)
    p.add_argument("--out", type=Path, required=True, help="run folder")
    _term(p, "model_name", default=MODEL_NAME, help="name of the model in the package and the STAC item")
    _add_stats_args(p)
    _add_train_args(p)
    _add_evaluate_args(p)
    _add_stac_args(p)
    return parser


def _add_stac_args(p: argparse.ArgumentParser) -> None:
    from components.stages.stac import DEFAULT_LICENSE

    p.add_argument("--license", default=DEFAULT_LICENSE,
                   help="the STAC item's license: an SPDX identifier or expression, or 'other' (default: %(default)s)")
    p.add_argument("--provider", action="append", default=[], metavar="NAME",
                   help="a producer of the model or its data, for the STAC item's providers (repeatable; "
                        "campseg is always listed as processor)")
    p.add_argument("--imagery-period", default=None, metavar="START/END",
                   help="capture period of the imagery, ISO 8601 (e.g. 2023-01-01/2023-06-30); default: "
                        "unknown, and the item says so")
    p.add_argument("--container-image", action="append", default=[], metavar="KIND=REF",
                   help="a step image (cpu=REF, cuda=REF) as a STAC asset (repeatable; default: the refs "
                        "build/images.json records, if any)")


def _stac_options(args: argparse.Namespace) -> dict:
    """The STAC stage's keyword arguments from ``--license``, ``--provider``, ``--imagery-period``,
    ``--container-image`` (or build/images.json)."""
    from components.kubeflow.images import IMAGES_FILE, recorded_images

    images = {}
    for text in args.container_image:
        kind, sep, ref = text.partition("=")
        if not sep or not kind or not ref:
            raise PipelineInputError(f"--container-image {text!r}: expected KIND=REF (e.g. cpu=registry/campseg:1)")
        images[kind] = ref
    if not images and IMAGES_FILE.is_file():
        images = recorded_images() or {}
    imagery = None
    if args.imagery_period:
        start, sep, end = args.imagery_period.partition("/")
        if not sep:
            raise PipelineInputError(f"--imagery-period {args.imagery_period!r}: expected START/END "
                                     "(ISO 8601, e.g. 2023-01-01/2023-06-30)")
        imagery = (start, end)
    return {"license": args.license, "providers": [{"name": n} for n in args.provider], "images": images,
            "imagery": imagery}


def run_all(args: argparse.Namespace) -> dict:
    """The whole chain on one run folder; returns the summary."""
    import os

    from components.contracts.naming import check_model_name
    from components.data.sample_data import generate_sample_dataset
    from components.ml.distributed import detect_launch
    from components.reporting.progress import StageLines
    from components.stages.dlpk import package_dlpk
    from components.stages.evaluate import evaluate_run
    from components.stages.export import export_models
    from components.stages.stac import build_stac_item, check_stac_options
    from components.stages.stats import compute_statistics
    from components.stages.train import train

    check_model_name(args.model_name)
    stac_options = _stac_options(args)  # bad STAC options are refused before hours of training
    check_stac_options(**stac_options)
    config = _config(args)
    if detect_launch(os.environ).external:
        raise PipelineInputError("all: started by torchrun (or another launcher of one process per device); "
                                 "launch only the train stage that way, and run the other stages once")
    # The whole chain holds the run folder: checked, locked and marked before anything is written.
    # Each stage prints its [i/n] start and end lines on stderr.
    with open_output(args.out, "all", data_dir=args.data):
        data = args.data
        lines = StageLines(6 if data is not None else 7)
        if data is None:
            with lines.stage("sample-data"):
                data = generate_sample_dataset(args.out / "sample-data", SAMPLE_CHIPS, SAMPLE_SIZE, seed=0)
        ratios = SplitRatios(args.train_ratio, args.val_ratio, args.test_ratio)
        with lines.stage("stats"):
            compute_statistics(data, args.out, args.image_size or None, config.network_depth, ratios, args.seed,
                               args.threshold, fingerprint=_fingerprint(data), nodata=args.nodata,
                               max_pixels_per_image=args.max_pixels, class_name=args.class_name)
        with lines.stage("train"):
            train(args.out, config, data)
        with lines.stage("export"):
            export_models(args.out, data)
        with lines.stage("evaluate"):
            evaluate_run(args.out, data, tta=args.tta)
        with lines.stage("dlpk"):
            package_dlpk(args.out, args.model_name)
        with lines.stage("stac"):
            build_stac_item(args.out, args.model_name, **stac_options)
        return read_json(RunLayout(args.out).summary)


def _fingerprint(data: Path) -> str | None:
    """The dataset's content fingerprint, recorded in ``stats.json`` and the run marker."""
    from components.storage import fingerprint

    return fingerprint(data) if Path(data).is_dir() else None


def run_predict(args: argparse.Namespace) -> dict:
    """``predict``: an ``s3://`` input is downloaded to a temporary folder first (links keep the URI)."""
    import shutil
    import tempfile

    from components.stages.predict import predict_scenes
    from components.storage import is_s3_uri, materialize

    # The pipeline's conventions: threshold 0 is the model's own, overlap -1 a quarter of the tile.
    options = dict(threshold=args.threshold or None, overlap=None if args.overlap == -1 else args.overlap,
                   batch_size=args.batch_size,
                   min_area_m2=args.min_area, device=args.device, resample=args.resample, tta=args.tta)
    if not is_s3_uri(args.input):
        return predict_scenes(args.run, Path(args.input), args.out, **options)
    cache = Path(tempfile.mkdtemp(prefix="campseg-scenes-"))
    try:
        local = materialize(args.input, cache)
        prefix = args.input.rstrip("/")
        uris = {str(p): f"{prefix}/{p.relative_to(local).as_posix()}" for p in local.rglob("*") if p.is_file()}
        return predict_scenes(args.run, local, args.out, scene_uris=uris, **options)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def dispatch(args: argparse.Namespace) -> dict | None:
    """Run the stage that ``args.stage`` names."""
    match args.stage:
        case "sample-data":
            from components.data.sample_data import generate_sample_dataset

            generate_sample_dataset(args.out, args.chips, args.size, args.seed)
            return {"dataset": str(args.out)}
        case "sample-scene":
            from components.data.sample_data import generate_sample_scene

            if args.tiles < 1 or args.size < 32:
                raise PipelineInputError(f"sample-scene: --tiles {args.tiles} must be >= 1 and --size {args.size} >= 32")
            return {"scene": str(generate_sample_scene(args.out, args.tiles, args.size, args.seed))}
        case "stats":
            from components.stages.stats import compute_statistics

            ratios = SplitRatios(args.train_ratio, args.val_ratio, args.test_ratio)
            return compute_statistics(args.data, args.out, args.image_size or None, args.depth, ratios, args.seed,
                                      args.threshold, fingerprint=_fingerprint(args.data), nodata=args.nodata,
                                      max_pixels_per_image=args.max_pixels, class_name=args.class_name)
        case "train":
            from components.stages.train import train

            return train(args.run, _config(args), args.data)
        case "export":
            from components.stages.export import export_models

            return export_models(args.run, args.data)
        case "evaluate":
            from components.stages.evaluate import evaluate_run

            if args.out is not None and args.data is None:
                raise PipelineInputError("evaluate --out needs --data: the labelled folder to evaluate")
            return evaluate_run(args.run, args.data, args.out, tta=args.tta)
        case "predict":
            return run_predict(args)
        case "dlpk":
            from components.stages.dlpk import package_dlpk

            return {"dlpk": str(package_dlpk(args.run, args.model_name, version=args.model_version))}
        case "stac":
            from components.stages.stac import build_stac_item

            return {"stac_item": str(build_stac_item(args.run, args.model_name, **_stac_options(args)))}
        case "all":
            return run_all(args)
    raise AssertionError(args.stage)


def _stage_parser(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.ArgumentParser | None:
    """The parser of the stage ``argv`` names (its first word), if any."""
    stages = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    word = next((a for a in argv if not a.startswith("-")), None)
    return stages.get(word)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stage; its result (JSON) is all that reaches stdout, its progress goes to stderr.

    A failure ends in one ``error:`` line: exit 2 for bad input or a stage's refusal (including a
    path that cannot be written), 1 for anything unexpected."""
    from components.cli.common import DEBUG_FLAG, DEBUG_HELP, check_numbers, pop_debug, report
    from components.reporting.progress import StageLines, stdout_to_stderr

    argv, debug = pop_debug(argv)
    parser = build_parser()
    parser.add_argument(DEBUG_FLAG, action="store_true", help=DEBUG_HELP)  # popped above: any position
    stage = _stage_parser(parser, argv)
    config = {}
    try:
        path = config_path(argv)
        if path is not None and stage is not None:  # before parsing: the file may give required options
            config = config_values(path, stage)
            apply_config(stage, config)
    except Exception as exc:  # noqa: BLE001 - a bad config file ends in one error line
        return report(exc, debug, stream=sys.stderr)
    args = parser.parse_args(argv)
    if stage is not None:
        fill_repeated(stage, args, config)
    if args.print_config:
        sys.stdout.write(dump_config(effective_config(stage, args)))
        return 0
    try:
        check_numbers(args, seeds=("seed",), nan_allowed=("nodata",))  # --nodata nan is a value
        with stdout_to_stderr():  # what the stages and their libraries print is progress, not result
            if args.stage == "all":  # numbers its stages itself
                result = dispatch(args)
            else:
                with StageLines(1, announce=False).stage(args.stage):
                    result = dispatch(args)
        if result is not None:
            print(json.dumps(result, indent=2, default=str))
    except Exception as exc:  # noqa: BLE001 - every failure ends in one error line
        return report(exc, debug, stream=sys.stderr)
    return 0
