"""The training configuration: one serialisable object handed to every stage that needs it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Mapping, get_args

from components.contracts.errors import ParameterError

Architecture = Literal["unet", "smp_unet", "seed_baseline"]
LossName = Literal["bce_dice", "bce", "dice", "focal"]
OptimizerName = Literal["adamw", "adam", "sgd"]
ScheduleName = Literal["cosine", "plateau", "none"]
PrecisionName = Literal["auto", "32", "bf16-mixed", "16-mixed"]


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
        augment: flips, 90-degree rotations and brightness/contrast jitter on the train split.
        epochs: maximum number of epochs.
        batch_size: chips per batch.
        patience: epochs without validation-IoU improvement before early stopping.
        seed: seed of model initialisation, shuffling and augmentation.
        precision: ``auto`` (bf16 mixed precision on GPU, 32 on CPU) or a Lightning precision.
        num_workers: DataLoader worker processes.
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
    augment: bool = True
    epochs: int = 15
    batch_size: int = 8
    patience: int = 6
    seed: int = 42
    precision: PrecisionName = "auto"
    num_workers: int = 0

    def __post_init__(self) -> None:
        for name, allowed in (
            ("architecture", Architecture),
            ("loss", LossName),
            ("optimizer", OptimizerName),
            ("lr_schedule", ScheduleName),
            ("precision", PrecisionName),
        ):
            value = getattr(self, name)
            if value not in get_args(allowed):
                raise ParameterError(f"{name}={value!r}: choose one of {', '.join(get_args(allowed))}")
        for name in ("base_channels", "depth", "epochs", "batch_size", "patience"):
            if int(getattr(self, name)) < 1:
                raise ParameterError(f"{name}={getattr(self, name)!r}: must be a positive integer")
        if not self.learning_rate > 0:
            raise ParameterError(f"learning_rate={self.learning_rate!r}: must be > 0")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ParameterError("weight_decay must be >= 0 and momentum in [0, 1)")

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
