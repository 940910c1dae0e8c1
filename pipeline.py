"""The camp-segmentation training pipeline for Kubeflow Pipelines v2: its steps, their policy, its DAG.

    python pipeline.py --compile --image REF --gpu-image REF [--output pipeline.yaml] [cluster flags]
    python pipeline.py --run-local [--dataset-uri PATH] [parameters] [--output-dir DIR]
    python pipeline.py --submit --host URL (--image REF --gpu-image REF | --package pipeline.yaml) [parameters]
    python pipeline.py --pipeline predict --compile|--submit ... --scene-uri s3://... --output-uri s3://...

This module wires components; the stage logic lives in ``components/``, the KFP glue in
``components/kubeflow/`` and the command line in ``components/cli/pipeline.py``.
"""

import sys
from pathlib import Path
from typing import Sequence

from kfp import dsl

from components.cli.pipeline import main as run_cli
from components.contracts.config import TrainConfig
from components.contracts.preprocessing import Preprocessing
from components.data.splits import SplitRatios
from components.kubeflow.cluster import ClusterSettings, Resources, Step, step_factory, train_job_settings
from components.kubeflow.submission import compile_package
from components.tracking.promotion import CHAMPION_ALIAS

PIPELINE_NAME = "camp-segmentation-training"

#: The policy of every step, in pipeline order (``components/kubeflow/cluster.py`` applies it).
#: image: cpu runs on --image, gpu on --gpu-image. pool: gpu puts the step on the GPU node pool
#: (node selector and toleration; --only-gpu-pool puts every step there); GPU: the step requests
#: the accelerator (never a CPU-bound step). cache: KFP may reuse the result (never for steps that
#: read data behind an unchanged URI or talk to MLflow for this run). retry: idempotent and talks
#: to storage or MLflow, so transient failures are retried in-process (--retries; a deterministic
#: error fails at once). scratch: downloads data, so gets the scratch volume with TMPDIR on it
#: (--scratch-size). resources: CPU and memory requests and limits (--resources overrides them).
STEPS = {
    #                           image  pool   GPU    cache  retry  scratch  resources: CPU request, limit; memory request, limit
    "start-tracking":      Step("cpu", "any", False, False, True,  False,   Resources("250m", "1", "512Mi", "1Gi")),
    "dataset-fingerprint": Step("cpu", "any", False, False, True,  False,   Resources("250m", "1", "256Mi", "1Gi")),
    "decide-training":     Step("cpu", "any", False, False, True,  False,   Resources("250m", "1", "512Mi", "1Gi")),
    "dataset-statistics":  Step("cpu", "any", False, True,  True,  True,    Resources("1", "2", "2Gi", "4Gi")),
    "train-model":         Step("gpu", "gpu", True,  True,  True,  True,    Resources("4", "8", "16Gi", "32Gi")),
    "export-model":        Step("cpu", "any", False, True,  True,  True,    Resources("2", "4", "4Gi", "8Gi")),
    "evaluate-model":      Step("cpu", "any", False, True,  True,  True,    Resources("2", "4", "4Gi", "8Gi")),
    "package-dlpk":        Step("cpu", "any", False, True,  False, False,   Resources("1", "2", "2Gi", "4Gi")),
    "generate-stac-item":  Step("cpu", "any", False, True,  False, False,   Resources("500m", "1", "1Gi", "2Gi")),
    "register-model":      Step("cpu", "any", False, False, True,  True,    Resources("1", "2", "2Gi", "4Gi")),
    "end-tracking":        Step("cpu", "any", False, False, False, False,   Resources("250m", "1", "512Mi", "1Gi")),
}

#: ``--train-nodes N`` (N > 1): the training step submits a TrainJob/PyTorchJob, waits for it and
#: collects its run folder (``components/kubeflow/train_jobs.py``); it holds no GPU itself. The job's
#: nodes get the GPU image, ``train-model``'s resources (or --resources train-model=...) and its GPUs.
#: Not cached: its inputs include the KFP run id (the job is named after the run).
TRAIN_JOB_STEP = Step("cpu", "any", False, False, True, True, Resources("500m", "2", "2Gi", "8Gi"),
                      component="train_model_job")


def train_step(settings: ClusterSettings) -> tuple[dict[str, Step], dict]:
    """The step table for ``settings`` and the extra inputs of its training step: on one node the
    step's accelerator count as its DDP device count, on several the job it submits."""
    if settings.train_nodes <= 1:
        return STEPS, {"devices": max(settings.accelerator_count, 1)}
    job = train_job_settings(settings, settings.resources.get("train-model", STEPS["train-model"].resources))
    return {**STEPS, "train-model": TRAIN_JOB_STEP}, {"job": job.to_json(),
                                                       "kfp_run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER}


def build_pipeline(settings: ClusterSettings = ClusterSettings()):
    """The pipeline function, each step on its image with its policy and ``settings`` applied."""
    steps, train_job = train_step(settings)
    step = step_factory(steps, settings)

    @dsl.pipeline(name=PIPELINE_NAME)
    def camp_segmentation_training(
        dataset_uri: str,
        dataset_image_size: int = 0,
        split_train_ratio: float = SplitRatios.train,
        split_val_ratio: float = SplitRatios.val,
        split_test_ratio: float = SplitRatios.test,
        split_seed: int = TrainConfig.seed,
        train_architecture: str = TrainConfig.architecture,
        train_base_channels: int = TrainConfig.base_channels,
        train_depth: int = TrainConfig.depth,
        train_loss: str = TrainConfig.loss,
        train_optimizer: str = TrainConfig.optimizer,
        train_learning_rate: float = TrainConfig.learning_rate,
        train_weight_decay: float = TrainConfig.weight_decay,
        train_lr_schedule: str = TrainConfig.lr_schedule,
        train_augment: bool = TrainConfig.augment,
        train_warmup_epochs: float = TrainConfig.warmup_epochs,
        train_crop_scale: float = TrainConfig.crop_scale,
        train_color_jitter: float = TrainConfig.color_jitter,
        train_dice_weight: float = TrainConfig.dice_weight,
        train_ema_decay: float = TrainConfig.ema_decay,
        # The cluster's budget, on purpose larger than TrainConfig's (the defaults of --run-local).
        train_epochs: int = 50,
        train_batch_size: int = 0,
        train_patience: int = 10,
        train_precision: str = TrainConfig.precision,
        evaluate_tta: bool = False,
        model_name: str = "camp-segmentation",
        model_threshold: float = Preprocessing.threshold,
        model_class_name: str = Preprocessing.class_name,
        model_publish_uri: str = "",
        tracking_experiment: str = "camp-segmentation",
        tracking_promotion_metric: str = "iou",
        tracking_promotion_margin: float = 0.0,
        force_retrain: bool = False,
    ):
        """Train, export, evaluate and package a camp-segmentation U-Net.

        Args:
            dataset_uri: Dataset folder with chips/ and labels/ paired by file stem: s3://bucket/prefix/ or a local path.
            dataset_image_size: Network input size in pixels (a multiple of 2**depth); 0 uses the chips' own size.
            split_train_ratio: Fraction of ground groups in the train split.
            split_val_ratio: Fraction of ground groups in the validation split (model selection, early stopping).
            split_test_ratio: Fraction of ground groups in the test split (evaluation, promotion).
            split_seed: Seed of the split hash and of training.
            train_architecture: unet (this project's U-Net), smp_unet (needs segmentation_models_pytorch) or seed_baseline.
            train_base_channels: Channels of the first U-Net level; each level doubles them.
            train_depth: Number of 2x poolings of the U-Net encoder.
            train_loss: bce_dice, bce, dice or focal.
            train_optimizer: adamw (with weight decay), adam or sgd (with momentum 0.9).
            train_learning_rate: Initial learning rate.
            train_weight_decay: Weight decay of adamw and sgd.
            train_lr_schedule: cosine, plateau (reduce on validation-loss plateau) or none.
            train_augment: Flips, 90-degree rotations and brightness/contrast jitter on the train split.
            train_warmup_epochs: Epochs of linear learning-rate warm-up, step by step, before the schedule (0: none).
            train_crop_scale: With augmentation, the smallest share of a chip's area a random crop keeps before it is resized back (1: no crops).
            train_color_jitter: With augmentation, the largest relative change of each band's gain (0: none).
            train_dice_weight: Weight of the Dice term of the bce_dice loss (BCE has weight 1).
            train_ema_decay: Per-step decay of the weights' moving average that validates and is exported (0: none).
            train_epochs: Maximum number of epochs.
            train_batch_size: Chips per batch and GPU; 0 picks it: 8 on the CPU, from the GPU's memory, the image size and the train split's size on a GPU.
            train_patience: Epochs without validation-IoU improvement before early stopping.
            train_precision: auto (bf16 mixed precision on GPU, fp32 on CPU), 32, bf16-mixed or 16-mixed.
            evaluate_tta: Test-time augmentation in evaluation: score the mean probability of each test chip and its horizontal, vertical and double flips (recorded in metrics.json; promotion compares with the champion's own test metrics, so keep it the same across versions).
            model_name: Name of the model in packages, the STAC item and the registry.
            model_threshold: Camp probability at or above which a pixel is camp.
            model_class_name: Name of the foreground class (value 1; background is 0) in the figures, the STAC item and the DLPK, e.g. camp or building.
            model_publish_uri: s3://bucket/prefix/ to publish the final artifacts to, as <prefix>/<model_name>/<version>/ with a STAC item pointing there; empty to keep them in the pipeline's artifact store only.
            tracking_experiment: MLflow experiment of the pipeline's run (the server is MLFLOW_TRACKING_URI).
            tracking_promotion_metric: Test metric that decides whether the new version becomes the registry's champion.
            tracking_promotion_margin: How much the new version must beat the champion by, on the same test split, to take the alias.
            force_retrain: Train even when the dataset and the training parameters are those of the registry's champion (a scheduled run otherwise records "no new data" and skips training and registration).
        """
        closing = step("end-tracking", kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        with dsl.ExitHandler(closing, name="close-mlflow-run-on-exit"):
            tracking = step("start-tracking", dataset_uri=dataset_uri, publish_uri=model_publish_uri,
                            experiment=tracking_experiment, model_name=model_name,
                            kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, promotion_metric=tracking_promotion_metric,
                            promotion_margin=tracking_promotion_margin)
            fingerprint = step("dataset-fingerprint", dataset_uri=dataset_uri).after(tracking)
            decision = step(
                "decide-training", fingerprint=fingerprint.output, model_name=model_name,
                mlflow_run_id=tracking.output, force_retrain=force_retrain, dataset_image_size=dataset_image_size,
                split_train_ratio=split_train_ratio, split_val_ratio=split_val_ratio,
                split_test_ratio=split_test_ratio, split_seed=split_seed, train_architecture=train_architecture,
                train_base_channels=train_base_channels, train_depth=train_depth, train_loss=train_loss,
                train_optimizer=train_optimizer, train_learning_rate=train_learning_rate,
                train_weight_decay=train_weight_decay, train_lr_schedule=train_lr_schedule,
                train_augment=train_augment, train_warmup_epochs=train_warmup_epochs, train_crop_scale=train_crop_scale,
                train_color_jitter=train_color_jitter, train_dice_weight=train_dice_weight,
                train_ema_decay=train_ema_decay, train_epochs=train_epochs, train_batch_size=train_batch_size,
                train_patience=train_patience, train_precision=train_precision, model_threshold=model_threshold,
            )
            # Unchanged data and parameters (and no force_retrain): the run ends here, "no new data".
            with dsl.If(decision.outputs["Output"] == "train", name="train-and-register"):
                statistics = step(
                    "dataset-statistics", dataset_uri=dataset_uri, fingerprint=fingerprint.output,
                    image_size=dataset_image_size, architecture=train_architecture, depth=train_depth,
                    train_ratio=split_train_ratio, val_ratio=split_val_ratio, test_ratio=split_test_ratio,
                    seed=split_seed, threshold=model_threshold, class_name=model_class_name,
                ).outputs["statistics"]
                training = step(
                    "train-model", dataset_uri=dataset_uri, statistics=statistics, architecture=train_architecture,
                    base_channels=train_base_channels, depth=train_depth, loss=train_loss, optimizer=train_optimizer,
                    learning_rate=train_learning_rate, weight_decay=train_weight_decay,
                    lr_schedule=train_lr_schedule, augment=train_augment, warmup_epochs=train_warmup_epochs,
                    crop_scale=train_crop_scale, color_jitter=train_color_jitter, dice_weight=train_dice_weight,
                    ema_decay=train_ema_decay, epochs=train_epochs,
                    batch_size=train_batch_size, patience=train_patience, seed=split_seed, precision=train_precision,
                    mlflow_run_id=tracking.output, **train_job,
                ).outputs["training"]
                models = step("export-model", dataset_uri=dataset_uri, statistics=statistics,
                              training=training).outputs["models"]
                evaluation = step("evaluate-model", dataset_uri=dataset_uri, statistics=statistics,
                                  models=models, training=training, tta=evaluate_tta).outputs["evaluation"]
                dlpk = step("package-dlpk", statistics=statistics, models=models,
                            model_name=model_name).outputs["dlpk"]
                stac = step("generate-stac-item", statistics=statistics, training=training, models=models,
                            evaluation=evaluation, dlpk=dlpk, model_name=model_name).outputs["stac"]
                step("register-model", dataset_uri=dataset_uri, statistics=statistics, training=training,
                     models=models, evaluation=evaluation, dlpk=dlpk, stac=stac, mlflow_run_id=tracking.output,
                     model_name=model_name, promotion_metric=tracking_promotion_metric,
                     promotion_margin=tracking_promotion_margin, publish_uri=model_publish_uri)
    return camp_segmentation_training


PREDICT_PIPELINE_NAME = "camp-segmentation-prediction"

#: The batch-prediction pipeline's step policy (same columns as STEPS). Not cached: new scenes may
#: arrive under an unchanged prefix, and the champion may move.
PREDICT_STEPS = {
    "predict-scenes":      Step("cpu", "any", False, False, True,  True,    Resources("2", "4", "4Gi", "8Gi")),
}


def build_predict_pipeline(settings: ClusterSettings = ClusterSettings()):
    """The batch-prediction pipeline: the champion (or another model) over a prefix of scenes."""
    step = step_factory(PREDICT_STEPS, settings)

    @dsl.pipeline(name=PREDICT_PIPELINE_NAME)
    def camp_segmentation_prediction(
        scene_uri: str,
        output_uri: str,
        model_ref: str = f"models:/camp-segmentation@{CHAMPION_ALIAS}",
        predict_threshold: float = 0.0,
        predict_overlap: int = -1,
        predict_min_area_m2: float = 0.0,
        predict_device: str = "cpu",
        predict_tta: bool = False,
    ):
        """Map camps on new scenes: georeferenced masks, probabilities, polygons and STAC items.

        Args:
            scene_uri: s3://bucket/prefix/ of GeoTIFF/COG scenes (every *.tif directly under it), or a local path.
            output_uri: s3://bucket/prefix/ the outputs go under, as <prefix>/<KFP run id>/.
            model_ref: models:/NAME@ALIAS or models:/NAME/VERSION in the MLflow registry (MLFLOW_TRACKING_URI), or a run folder.
            predict_threshold: Camp probability threshold; 0 uses the model's own.
            predict_overlap: Pixels neighbouring windows share; -1 uses a quarter of the model's tile.
            predict_min_area_m2: Camp polygons smaller than this many m² are left out of the GeoJSON.
            predict_device: cpu, or cuda for ONNX Runtime's CUDA provider where the image has it.
            predict_tta: Test-time augmentation: predict every window with its horizontal, vertical and double flips too and blend the mean probability (four model calls per window; recorded in predictions.json).
        """
        step("predict-scenes", scene_uri=scene_uri, model_ref=model_ref, output_uri=output_uri,
             kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, threshold=predict_threshold, overlap=predict_overlap,
             min_area_m2=predict_min_area_m2, device=predict_device, tta=predict_tta)
    return camp_segmentation_prediction


#: ``--pipeline NAME``: each pipeline's factory and step policy.
PIPELINES = {"training": (build_pipeline, STEPS), "predict": (build_predict_pipeline, PREDICT_STEPS)}


def compile_pipeline(output: Path, settings: ClusterSettings) -> Path:
    """Write the pipeline YAML that the KFP UI uploads; ``settings`` must name the step images
    (:meth:`ClusterSettings.check`)."""
    return compile_package(build_pipeline(settings.check()), output)


def main(argv: Sequence[str] | None = None) -> int:
    """``python pipeline.py [--pipeline training|predict]``: the command line of
    ``components/cli/pipeline.py`` for that pipeline (default: training)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    name = "training"
    for i, arg in enumerate(argv):
        if arg == "--pipeline" and i + 1 < len(argv) or arg.startswith("--pipeline="):
            name = arg.split("=", 1)[1] if "=" in arg else argv[i + 1]
            del argv[i:i + (1 if "=" in arg else 2)]
            break
    if name not in PIPELINES:
        print(f"error: --pipeline {name!r}: one of {', '.join(PIPELINES)}", file=sys.stderr)
        return 2
    if name != "training" and "--run-local" in argv:
        print(f"error: --pipeline {name}: --run-local runs the training pipeline only; run "
              "python -m components predict locally", file=sys.stderr)
        return 2
    factory, steps = PIPELINES[name]
    return run_cli(argv, build_pipeline=factory, steps=steps)


if __name__ == "__main__":
    sys.exit(main())
