"""KFP v2 components: thin wrappers that map KFP inputs and outputs onto :mod:`components.kubeflow.steps`.

Each function body imports the installed ``components`` package, so the same component runs in
KFP's local SubprocessRunner (the current environment) and in the project image on a cluster.
Artifact inputs and outputs carry the names of ``components.contracts.run_layout.ARTIFACTS``
(``statistics``, ``training``, ``models``, ``evaluation``, ``dlpk``, ``stac``).
:func:`make_components` binds them to an image; ``pipeline.py`` wires them.
"""


from types import SimpleNamespace

from kfp import dsl
from kfp.dsl import (
    HTML,
    Artifact,
    ClassificationMetrics,
    Dataset,
    Input,
    Markdown,
    Metrics,
    Model,
    Output,
)


def start_tracking(dataset_uri: str, publish_uri: str, experiment: str, model_name: str, kfp_run_id: str,
                   promotion_metric: str, promotion_margin: float) -> str:
    """Check the promotion settings, object storage and MLflow before any work; open the pipeline's MLflow run."""
    from components.kubeflow.steps import start_tracking as start

    return start(dataset_uri, publish_uri, experiment, model_name, kfp_run_id, promotion_metric, promotion_margin)


def dataset_fingerprint(dataset_uri: str) -> str:
    """Content fingerprint of the dataset; never cached, so changed data is always noticed."""
    from components.kubeflow.steps import dataset_fingerprint as fingerprint

    return fingerprint(dataset_uri)


def decide_training(
    fingerprint: str,
    model_name: str,
    mlflow_run_id: str,
    force_retrain: bool,
    dataset_image_size: int,
    split_train_ratio: float,
    split_val_ratio: float,
    split_test_ratio: float,
    split_seed: int,
    train_architecture: str,
    train_base_channels: int,
    train_depth: int,
    train_loss: str,
    train_optimizer: str,
    train_learning_rate: float,
    train_weight_decay: float,
    train_lr_schedule: str,
    train_augment: bool,
    train_warmup_epochs: float,
    train_crop_scale: float,
    train_color_jitter: float,
    train_dice_weight: float,
    train_ema_decay: float,
    train_epochs: int,
    train_batch_size: int,
    train_patience: int,
    train_precision: str,
    model_threshold: float,
    retraining: Output[Markdown],
) -> str:
    """``train``, or ``skip`` ("no new data") when the dataset and the training parameters are the champion's."""
    from components.kubeflow.steps import decide_training as decide

    parameters = dict(
        dataset_image_size=dataset_image_size, split_train_ratio=split_train_ratio, split_val_ratio=split_val_ratio,
        split_test_ratio=split_test_ratio, split_seed=split_seed, train_architecture=train_architecture,
        train_base_channels=train_base_channels, train_depth=train_depth, train_loss=train_loss,
        train_optimizer=train_optimizer, train_learning_rate=train_learning_rate,
        train_weight_decay=train_weight_decay, train_lr_schedule=train_lr_schedule, train_augment=train_augment,
        train_warmup_epochs=train_warmup_epochs, train_crop_scale=train_crop_scale,
        train_color_jitter=train_color_jitter, train_dice_weight=train_dice_weight, train_ema_decay=train_ema_decay,
        train_epochs=train_epochs, train_batch_size=train_batch_size, train_patience=train_patience,
        train_precision=train_precision, model_threshold=model_threshold,
    )
    outcome, reason = decide(fingerprint, parameters, model_name, mlflow_run_id, force_retrain)
    with open(retraining.path, "w") as f:
        f.write(f"# {model_name}: {'train' if outcome == 'train' else 'no new data'}\n\n{reason}\n\n"
                f"- dataset: `{fingerprint}`\n- MLflow run: `{mlflow_run_id}`\n")
    return outcome


def dataset_statistics(
    dataset_uri: str,
    fingerprint: str,
    image_size: int,
    architecture: str,
    depth: int,
    train_ratio: float,
    val_ratio: float,
    test_ratio: float,
    seed: int,
    threshold: float,
    statistics: Output[Dataset],
    dataset_metrics: Output[Metrics],
    class_name: str = "camp",
):
    """Validate the dataset, split it by ground and compute the preprocessing statistics."""
    from components.contracts.config import TrainConfig
    from components.kubeflow.steps import run_stats

    network_depth = TrainConfig(architecture=architecture, depth=depth).network_depth
    params = dict(image_size=image_size, network_depth=network_depth, train_ratio=train_ratio,
                  val_ratio=val_ratio, test_ratio=test_ratio, seed=seed, threshold=threshold,
                  class_name=class_name)
    stats = run_stats(dataset_uri, fingerprint, statistics.path, params)
    statistics.metadata.update({"fingerprint": fingerprint, "dataset_uri": dataset_uri, "num_chips": stats["num_chips"]})
    for split, count in stats["counts"].items():
        dataset_metrics.log_metric(f"chips_{split}", count)
        dataset_metrics.log_metric(f"positive_fraction_{split}", round(stats["positive_fraction"][split], 6))
    dataset_metrics.log_metric("image_size", stats["preprocessing"]["image_size"])


def train_model(
    dataset_uri: str,
    statistics: Input[Dataset],
    architecture: str,
    base_channels: int,
    depth: int,
    loss: str,
    optimizer: str,
    learning_rate: float,
    weight_decay: float,
    lr_schedule: str,
    augment: bool,
    warmup_epochs: float,
    crop_scale: float,
    color_jitter: float,
    dice_weight: float,
    ema_decay: float,
    epochs: int,
    batch_size: int,
    patience: int,
    seed: int,
    precision: str,
    mlflow_run_id: str,
    training: Output[Model],
    training_metrics: Output[Metrics],
    devices: int = 1,
):
    """Train the U-Net (Lightning) and keep the checkpoint with the best validation IoU; ``devices``
    (the step's accelerator count) above 1 trains with DDP on that many GPUs."""
    from components.kubeflow.steps import run_train, tracking_listeners

    config = dict(architecture=architecture, base_channels=base_channels, depth=depth, loss=loss,
                  optimizer=optimizer, learning_rate=learning_rate, weight_decay=weight_decay,
                  lr_schedule=lr_schedule, augment=augment, warmup_epochs=warmup_epochs, crop_scale=crop_scale,
                  color_jitter=color_jitter, dice_weight=dice_weight, ema_decay=ema_decay, epochs=epochs,
                  batch_size=batch_size,
                  patience=patience, seed=seed, precision=precision, devices=devices)
    result = run_train(dataset_uri, statistics.path, training.path, config, tracking_listeners(mlflow_run_id, config))
    training.metadata.update({"framework": "pytorch-lightning", "best_epoch": result["best_epoch"]})
    for key in ("best_val_iou", "epochs_run", "train_images_per_second"):
        training_metrics.log_metric(key, round(float(result[key]), 6))


def train_model_job(
    dataset_uri: str,
    statistics: Input[Dataset],
    architecture: str,
    base_channels: int,
    depth: int,
    loss: str,
    optimizer: str,
    learning_rate: float,
    weight_decay: float,
    lr_schedule: str,
    augment: bool,
    warmup_epochs: float,
    crop_scale: float,
    color_jitter: float,
    dice_weight: float,
    ema_decay: float,
    epochs: int,
    batch_size: int,
    patience: int,
    seed: int,
    precision: str,
    mlflow_run_id: str,
    job: str,
    kfp_run_id: str,
    training: Output[Model],
    training_metrics: Output[Metrics],
):
    """Train on several nodes: submit a TrainJob (or PyTorchJob), wait for it, collect its run folder from S3."""
    from components.kubeflow.steps import run_train_job, tracking_listeners

    config = dict(architecture=architecture, base_channels=base_channels, depth=depth, loss=loss,
                  optimizer=optimizer, learning_rate=learning_rate, weight_decay=weight_decay,
                  lr_schedule=lr_schedule, augment=augment, warmup_epochs=warmup_epochs, crop_scale=crop_scale,
                  color_jitter=color_jitter, dice_weight=dice_weight, ema_decay=ema_decay, epochs=epochs,
                  batch_size=batch_size,
                  patience=patience, seed=seed, precision=precision)
    tracking_listeners(mlflow_run_id, config)  # logs the hyperparameters; the job's epochs are not streamed
    result = run_train_job(dataset_uri, statistics.path, training.path, config, job, kfp_run_id)
    training.metadata.update({"framework": "pytorch-lightning", "best_epoch": result["best_epoch"]})
    for key in ("best_val_iou", "epochs_run", "train_images_per_second"):
        training_metrics.log_metric(key, round(float(result[key]), 6))


def export_model(
    dataset_uri: str,
    statistics: Input[Dataset],
    training: Input[Model],
    models: Output[Model],
    export_metrics: Output[Metrics],
):
    """Export state dict, TorchScript and ONNX (probabilities, sigmoid inside), parity-checked."""
    from components.kubeflow.steps import run_export

    report = run_export(dataset_uri, statistics.path, training.path, models.path)
    models.metadata.update({"onnx": "models/model.onnx", "torchscript": "models/model.pt",
                              "state_dict": "models/model.pth", "output": report["output"]["description"]})
    export_metrics.log_metric("max_abs_diff_onnx", report["max_abs_diff_onnx"])
    export_metrics.log_metric("max_abs_diff_torchscript", report["max_abs_diff_torchscript"])
    export_metrics.log_metric("total_parameters", report["total_parameters"])


def evaluate_model(
    dataset_uri: str,
    statistics: Input[Dataset],
    models: Input[Model],
    training: Input[Artifact],
    evaluation: Output[Artifact],
    test_metrics: Output[Metrics],
    confusion_matrix: Output[ClassificationMetrics],
    report: Output[HTML],
    tta: bool = False,
):
    """Score the ONNX model on the test split (``tta``: the mean over the four flips of every chip);
    metrics, confusion matrix, figures and an HTML report."""
    import json
    import shutil
    from pathlib import Path

    from components.kubeflow.steps import run_evaluate
    from components.ml.metrics import METRIC_NAMES

    metrics = run_evaluate(dataset_uri, statistics.path, models.path, evaluation.path, training.path, tta=tta)
    evaluation.metadata.update({"tta": metrics["tta"], "tta_flips": metrics["tta_flips"]})
    for name in METRIC_NAMES:
        test_metrics.log_metric(name, round(metrics[name], 6))
    cm = metrics["confusion_matrix"]
    class_name = json.loads((Path(statistics.path) / "stats.json").read_text())["preprocessing"].get("class_name", "camp")
    confusion_matrix.log_confusion_matrix(["background", class_name], [[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]])
    shutil.copyfile(Path(evaluation.path) / "evaluation" / "report.html", report.path)  # the same page as the run's


def package_dlpk(
    statistics: Input[Dataset],
    models: Input[Model],
    model_name: str,
    dlpk: Output[Model],
):
    """Package the TorchScript model as an Esri deep learning package (.dlpk) for ArcGIS Pro."""
    from components.kubeflow.steps import run_dlpk

    package = run_dlpk(statistics.path, models.path, dlpk.path, model_name)
    dlpk.metadata.update({"file": str(package.relative_to(dlpk.path)), "runtime": "ArcGIS Pro deep learning (PyTorch)"})


def generate_stac_item(
    statistics: Input[Dataset],
    training: Input[Model],
    models: Input[Model],
    evaluation: Input[Artifact],
    dlpk: Input[Model],
    model_name: str,
    stac: Output[Artifact],
):
    """Describe the evaluated model as a STAC item with the MLM extension, validated offline."""
    from components.kubeflow.steps import run_stac

    artifacts = dict(statistics=statistics.path, training=training.path, models=models.path,
                     evaluation=evaluation.path, dlpk=dlpk.path)
    item = run_stac(artifacts, stac.path, model_name)
    stac.metadata.update({"id": item["id"], "file": "metadata/stac_item.json", "stac_version": item["stac_version"]})


def register_model(
    dataset_uri: str,
    statistics: Input[Dataset],
    training: Input[Model],
    models: Input[Model],
    evaluation: Input[Artifact],
    dlpk: Input[Model],
    stac: Input[Artifact],
    mlflow_run_id: str,
    model_name: str,
    promotion_metric: str,
    promotion_margin: float,
    publish_uri: str,
    decision: Output[Markdown],
) -> str:
    """Log the run to MLflow, register a model version, publish it, and move `champion` if better."""
    from components.kubeflow.steps import register_and_promote

    artifacts = dict(statistics=statistics.path, training=training.path, models=models.path,
                     evaluation=evaluation.path, dlpk=dlpk.path, stac=stac.path)
    result = register_and_promote(artifacts, dataset_uri, mlflow_run_id, model_name, promotion_metric,
                                  promotion_margin, publish_uri)
    lines = [f"# {model_name} version {result['version']}: {result['decision'].replace('_', ' ')}", "",
             result["reason"], "", f"- MLflow run: `{mlflow_run_id}`",
             f"- champion: version {result.get('champion_version')}"]
    if result.get("stac_item"):
        lines.append(f"- published: `{result['base_uri']}` (STAC item `{result['stac_item']}`)")
    with open(decision.path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return result["version"]


def end_tracking(kfp_run_id: str, status: dsl.PipelineTaskFinalStatus):
    """Exit handler: close the MLflow run as FINISHED, FAILED when any step failed, KILLED when cancelled."""
    from components.kubeflow.steps import end_tracking as end

    end(kfp_run_id, status.state, status.error_message or "")


def predict_scenes(scene_uri: str, model_ref: str, output_uri: str, kfp_run_id: str, threshold: float,
                   overlap: int, min_area_m2: float, device: str, preview: Output[HTML], tta: bool = False) -> str:
    """Map camps on every scene under scene_uri with model_ref; outputs to output_uri/<run id>/, an HTML preview."""
    from components.kubeflow.prediction_steps import run_batch_prediction
    from components.storage import join_uri

    target = join_uri(output_uri, kfp_run_id) if output_uri else ""
    run_batch_prediction(scene_uri, model_ref, target, preview.path, threshold=threshold, overlap=overlap,
                         min_area_m2=min_area_m2, device=device, tta=tta)
    return target


STAGES = (start_tracking, end_tracking, register_model, dataset_fingerprint, decide_training, dataset_statistics,
          train_model, train_model_job, export_model, evaluate_model, package_dlpk, generate_stac_item, predict_scenes)


def make_components(image: str) -> SimpleNamespace:
    """The components bound to ``image`` (the project image; it holds kfp, so none is installed)."""
    return SimpleNamespace(**{
        fn.__name__: dsl.component(base_image=image, install_kfp_package=False)(fn) for fn in STAGES
    })
