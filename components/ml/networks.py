"""Networks: this project's U-Net, the seed document's baseline and the exported inference model."""

from __future__ import annotations

import torch
from torch import nn

from components.contracts.config import TrainConfig


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by batch norm and ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net (Ronneberger et al. 2015) with batch norm; emits one channel of logits.

    Args:
        in_channels: input bands.
        base_channels: channels of the first level; each deeper level doubles them.
        depth: number of 2x max-pools in the encoder (the input size must divide by 2**depth).
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 16, depth: int = 4) -> None:
        super().__init__()
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.encoders = nn.ModuleList()
        channels = in_channels
        for width in widths[:-1]:
            self.encoders.append(_conv_block(channels, width))
            channels = width
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _conv_block(widths[-2], widths[-1])
        self.upsamples = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for deep, shallow in zip(reversed(widths[1:]), reversed(widths[:-1])):
            self.upsamples.append(nn.ConvTranspose2d(deep, shallow, 2, stride=2))
            self.decoders.append(_conv_block(shallow * 2, shallow))
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for upsample, decoder, skip in zip(self.upsamples, self.decoders, reversed(skips)):
            x = decoder(torch.cat([upsample(x), skip], dim=1))
        return self.head(x)


class SeedBaselineNet(nn.Module):
    """The seed document's network: no skips, 3-64-128-256-512 encoder, three transposed convs.

    Emits logits (the seed's final sigmoid lives in :class:`InferenceModel` and the BCE loss).
    """

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        widths = [in_channels, 64, 128, 256, 512]
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
        for cin, cout in ((512, 256), (256, 128), (128, 64)):
            layers += [nn.ConvTranspose2d(cin, cout, 2, stride=2), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(64, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_network(config: TrainConfig, in_channels: int = 3) -> nn.Module:
    """Build the logits network that ``config.architecture`` names (random initialisation)."""
    match config.architecture:
        case "unet":
            return UNet(in_channels, config.base_channels, config.depth)
        case "seed_baseline":
            return SeedBaselineNet(in_channels)
        case "smp_unet":
            try:
                import segmentation_models_pytorch as smp
            except ImportError as exc:  # pragma: no cover - depends on the optional extra
                from components.contracts.errors import ParameterError

                raise ParameterError(
                    "architecture='smp_unet' needs segmentation_models_pytorch: "
                    "pip install 'campseg[smp]'"
                ) from exc
            return smp.Unet(config.encoder_name, encoder_weights=None, in_channels=in_channels, classes=1)
    raise AssertionError(config.architecture)


class InferenceModel(nn.Module):
    """What every exported artifact contains: the network followed by a sigmoid.

    Input: float32 (N, bands, H, W), normalised as :class:`~components.contracts.preprocessing.Preprocessing`
    says. Output: float32 (N, 1, H, W) probabilities of the camp class in [0, 1].
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.network(x))


def count_parameters(module: nn.Module) -> int:
    """Total number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())
