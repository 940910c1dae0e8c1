"""Segmentation losses on logits, chosen by name in :func:`build_loss`.

Every loss takes logits and a float target of 0 (background), 1 (camp) or
:data:`~components.data.pairs.IGNORE` (255: no data). Ignored pixels add nothing to the loss or
its gradient; a batch without one computes the plain loss (up to rounding). The mask is always
applied, never tested for on the host: a test would wait for the GPU on every step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from components.contracts.config import LossName
from components.data.pairs import IGNORE


def split_target(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 0/1 target and a 0/1 weight of the pixels that count."""
    valid = target != IGNORE
    return torch.where(valid, target, torch.zeros_like(target)), valid.to(target.dtype)


def _mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (values * weight).sum() / weight.sum().clamp(min=1.0)


class BCELoss(nn.Module):
    """Binary cross-entropy on logits, mean over the pixels that count."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target, weight = split_target(target)
        return _mean(F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none"), weight)


class DiceLoss(nn.Module):
    """Soft Dice loss over the whole batch (1 - Dice of sigmoid probabilities)."""

    def __init__(self, smooth: float = 1.0) -> None:
        super().__init__()
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target, weight = split_target(target)
        probs = torch.sigmoid(logits.float()) * weight
        intersection = (probs * target).sum()
        return 1 - (2 * intersection + self.smooth) / (probs.sum() + target.sum() + self.smooth)


class FocalLoss(nn.Module):
    """Binary focal loss (Lin et al. 2017) with class weight ``alpha`` and focusing ``gamma``."""

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0) -> None:
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target, weight = split_target(target)
        logits = logits.float()
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        p_t = torch.exp(-bce)
        alpha_t = self.alpha * target + (1 - self.alpha) * (1 - target)
        return _mean(alpha_t * (1 - p_t) ** self.gamma * bce, weight)


class BCEDiceLoss(nn.Module):
    """Binary cross-entropy plus ``dice_weight`` x soft Dice: stable gradients and overlap-aware."""

    def __init__(self, dice_weight: float = 1.0) -> None:
        super().__init__()
        self.bce = BCELoss()
        self.dice = DiceLoss()
        self.dice_weight = dice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.bce(logits.float(), target) + self.dice_weight * self.dice(logits, target)


def build_loss(name: LossName, dice_weight: float = 1.0) -> nn.Module:
    """The loss module that ``name`` selects (``dice_weight``: the Dice term's weight in ``bce_dice``);
    every loss takes logits and a float target."""
    match name:
        case "bce":
            return BCELoss()
        case "dice":
            return DiceLoss()
        case "focal":
            return FocalLoss()
        case "bce_dice":
            return BCEDiceLoss(dice_weight)
    raise ValueError(name)
