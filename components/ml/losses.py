"""Segmentation losses on logits, chosen by name in :func:`build_loss`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from components.contracts.config import LossName


class DiceLoss(nn.Module):
    """Soft Dice loss over the whole batch (1 - Dice of sigmoid probabilities)."""

    def __init__(self, smooth: float = 1.0) -> None:
        super().__init__()
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = torch.sigmoid(logits.float())
        intersection = (probs * target).sum()
        return 1 - (2 * intersection + self.smooth) / (probs.sum() + target.sum() + self.smooth)


class FocalLoss(nn.Module):
    """Binary focal loss (Lin et al. 2017) with class weight ``alpha`` and focusing ``gamma``."""

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0) -> None:
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        p_t = torch.exp(-bce)
        alpha_t = self.alpha * target + (1 - self.alpha) * (1 - target)
        return (alpha_t * (1 - p_t) ** self.gamma * bce).mean()


class BCEDiceLoss(nn.Module):
    """Sum of binary cross-entropy and soft Dice: stable gradients and overlap-aware."""

    def __init__(self) -> None:
        super().__init__()
        self.bce = nn.BCEWithLogitsLoss()
        self.dice = DiceLoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.bce(logits.float(), target) + self.dice(logits, target)


def build_loss(name: LossName) -> nn.Module:
    """The loss module that ``name`` selects; every loss takes logits and a float target."""
    match name:
        case "bce":
            return nn.BCEWithLogitsLoss()
        case "dice":
            return DiceLoss()
        case "focal":
            return FocalLoss()
        case "bce_dice":
            return BCEDiceLoss()
    raise ValueError(name)
