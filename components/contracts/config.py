"""The training configuration: one serialisable object handed to every stage that needs it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Mapping, get_args

from components.contracts.errors import ParameterError

Architecture = Literal["unet", "smp_unet", "seed_baseline"]
LossName = Literal["bce_dice", "bce", "dice", "focal"]
OptimizerName = Literal["adamw", "adam", "sgd"]
ScheduleName = Literal["cosine", "plateau", "none"]
PrecisionName = Literal["auto", "32", "bf16-mixed", "16-mixed"]
AcceleratorName = Literal["auto", "cpu", "gpu"]

#: Seeds numpy, torch and Lightning all accept: ``0 .. 2**32 - 1``.
SEED_MAX = 2**32 - 1


def check_seed(seed: object, name: str = "seed") -> int:
    """``seed`` as an int, or a :class:`ParameterError` unless it is an integer in ``[0, 2**32-1]``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise ParameterError(f"{name}={seed!r}: must be an integer from 0 to {SEED_MAX} (2**32-1)")
    return seed


def check_finite(value: object, name: str) -> float:
    """``value`` as a float, or a :class:`ParameterError` unless it is a finite number (not nan, not inf)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ParameterError(f"{name}={value!r}: must be a finite number")
    return float(value)


def _check_int(value: object, name: str, minimum: int) -> None:
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not whole or value < minimum:
        raise ParameterError(f"{name}={value!r}: must be an integer >= {minimum}")


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run.

    Args:
        architecture: ``unet`` (this project's U-Net), ``smp_unet`` (segmentation_models_pytorch
            U-Net, needs the ``smp`` extra) or ``seed_baseline`` (the seed document's network).
        base_channels: channels of the first U-Net level; each level doubles them.
        depth: number of 2x poolings in the U-Net encoder.
        encoder_name: encoder of ``smp_unet`` (random init: no weights are downloaded).
        loss: ``bce_dice`` (default), ``bce``, ``dice`` or ``focal``.
        optimizer: ``adamw`` (with weight decay), ``adam`` or ``sgd`` (with momentum).
        learning_rate: initial learning rate.
        weight_decay: weight decay of ``adamw`` and ``sgd``.
        momentum: momentum of ``sgd``.
        lr_schedule: ``cosine``, ``plateau`` (reduce on validation-loss plateau) or ``none``.
        warmup_epochs: epochs over which the learning rate rises linearly, step by step, from
            near 0 to ``learning_rate`` before the schedule takes over (0: no warm-up).
        augment: flips, 90-degree rotations and brightness/contrast jitter on the train split.
        crop_scale: with ``augment``, the smallest share of a chip's area that a random crop keeps
            before it is resized back to the chip's size (chip bilinear, mask nearest); 1: no crops.
        color_jitter: with ``augment``, the largest relative change of each band's gain (a
            per-band colour shift, on top of brightness/contrast); 0: none.
        dice_weight: weight of the Dice term in the ``bce_dice`` loss (BCE has weight 1).
        ema_decay: per-step decay of an exponential moving average of the weights, which
            validation, the checkpoint and the exports use (a steadier model than the last step's
            on little data); 0: no average.
        epochs: maximum number of epochs.
        batch_size: chips per batch and device; None (auto): 8 on the CPU, on a GPU from its memory,
            the image size and the train split's size (:func:`components.ml.batch_size.default_batch_size`).
        patience: epochs without validation-IoU improvement before early stopping.
        seed: seed of model initialisation, shuffling and augmentation.
        precision: ``auto`` (bf16 mixed precision on GPU, 32 on CPU) or a Lightning precision.
        num_workers: DataLoader worker processes per device; None picks from the CPU count (0 on
            the CPU, where the chips are already decoded in memory and workers would only take cores
            from the convolutions).
        accelerator: ``auto`` (a GPU when one is visible), ``cpu`` or ``gpu``.
        devices: processes (GPUs, or CPU processes) training together on each node; above 1,
            Lightning DDP (``ddp_spawn``: NCCL on GPUs, gloo on the CPU). ``batch_size`` is per device.
        num_nodes: nodes training together (Lightning ``num_nodes``); above 1 the processes must be
            started by a launcher such as torchrun (see ``docs/training.md``).
        compile: ``torch.compile`` the network for training (slow first steps, faster later ones).
        channels_last: train in the ``channels_last`` memory format (faster convolutions on CPU and GPU).
        deterministic: deterministic algorithms only (Lightning ``deterministic="warn"``): a seed trains
            the same model again. Off: cuDNN times and picks its fastest kernels (``cudnn.benchmark``),
            faster on GPUs, and two runs differ in the last bits.
    """

    architecture: Architecture = "unet"
    base_channels: int = 16
    depth: int = 4
    encoder_name: str = "resnet18"
    loss: LossName = "bce_dice"
    optimizer: OptimizerName = "adamw"
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    lr_schedule: ScheduleName = "cosine"
    warmup_epochs: float = 1.0
    augment: bool = True
    crop_scale: float = 1.0
    color_jitter: float = 0.0
    dice_weight: float = 1.0
    ema_decay: float = 0.0
    epochs: int = 15
    batch_size: int | None = None
    patience: int = 6
    seed: int = 42
    precision: PrecisionName = "auto"
    num_workers: int | None = None
    accelerator: AcceleratorName = "auto"
    devices: int = 1
    num_nodes: int = 1
    compile: bool = False
    channels_last: bool = True
    deterministic: bool = True

    def __post_init__(self) -> None:
        for name, allowed in (
            ("architecture", Architecture),
            ("loss", LossName),
            ("optimizer", OptimizerName),
            ("lr_schedule", ScheduleName),
            ("precision", PrecisionName),
            ("accelerator", AcceleratorName),
        ):
            value = getattr(self, name)
            if value not in get_args(allowed):
                raise ParameterError(f"{name}={value!r}: choose one of {', '.join(get_args(allowed))}")
        for name in ("base_channels", "depth", "epochs", "patience", "devices", "num_nodes"):
            _check_int(getattr(self, name), name, 1)
        if self.batch_size is not None:
            _check_int(self.batch_size, "batch_size", 1)
        if self.num_workers is not None:
            _check_int(self.num_workers, "num_workers", 0)
        check_seed(self.seed)
        for name in ("learning_rate", "weight_decay", "momentum", "warmup_epochs", "crop_scale", "color_jitter",
                     "dice_weight", "ema_decay"):
            check_finite(getattr(self, name), name)
        for name, low, high, closed in (("warmup_epochs", 0.0, float(self.epochs), True),
                                        ("crop_scale", 0.0, 1.0, True), ("color_jitter", 0.0, 1.0, False),
                                        ("ema_decay", 0.0, 1.0, False)):
            value = getattr(self, name)
            if not (low <= value <= high if closed else low <= value < high) or (name == "crop_scale" and value == 0):
                bound = f"({low:g}, {high:g}]" if name == "crop_scale" else f"[{low:g}, {high:g}{']' if closed else ')'}"
                raise ParameterError(f"{name}={value!r}: must be in {bound}")
        if not self.dice_weight >= 0:
            raise ParameterError(f"dice_weight={self.dice_weight!r}: must be >= 0")
        if not self.learning_rate > 0:
            raise ParameterError(f"learning_rate={self.learning_rate!r}: must be > 0")
        if not self.weight_decay >= 0:
            raise ParameterError(f"weight_decay={self.weight_decay!r}: must be >= 0")
        if not 0 <= self.momentum < 1:
            raise ParameterError(f"momentum={self.momentum!r}: must be in [0, 1)")
        for name in ("augment", "compile", "channels_last", "deterministic"):
            if not isinstance(getattr(self, name), bool):
                raise ParameterError(f"{name}={getattr(self, name)!r}: must be true or false")

    @property
    def network_depth(self) -> int:
        """How many times the network halves its input (what the image size must divide by)."""
        return {"unet": self.depth, "smp_unet": 5, "seed_baseline": 3}[self.architecture]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(payload) - known)
        if unknown:
            raise ParameterError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**dict(payload))
