"""SFE: the shallow feature extraction that replaces ResNet's conv1 in each encoder stream."""

from __future__ import annotations

import torch
from torch import nn


class FReLU(nn.Module):
    """Funnel activation FReLU(x) = max(x, BN(depthwise3x3(x))) (official class `FReLU`).

    Shapes: (B, channels, H, W) -> (B, channels, H, W).
    """

    conv_bn_pairs = (("conv_frelu", "bn_frelu"),)

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_frelu = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=True)
        self.bn_frelu = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.max(x, self.bn_frelu(self.conv_frelu(x)))


class SFE(nn.Module):
    """Shallow Feature Extraction, SFE in the paper (official class `Feature_extract`).

    SFEB1 = conv7x7 -> BN -> FReLU -> conv3x3 -> BN -> FReLU at full resolution;
    SFEB2 = conv3x3 stride 2 -> BN -> FReLU -> conv3x3. All convs have a bias. SFEB2 ends on the bare conv:
    the encoder applies the ResNet trunk's `bn1` + ReLU after it, as the official code does.

    Shapes: img (B, in_channels, H, W) -> (x1 (B, mid_channels, H, W),
    x2 (B, out_channels, ceil(H/2), ceil(W/2))).
    """

    def __init__(self, in_channels: int, mid_channels: int = 32, out_channels: int = 64) -> None:
        super().__init__()
        self.SFEB1 = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 7, padding=3),
            nn.BatchNorm2d(mid_channels),
            FReLU(mid_channels),
            nn.Conv2d(mid_channels, mid_channels, 3, padding=1),
            nn.BatchNorm2d(mid_channels),
            FReLU(mid_channels),
        )
        self.SFEB2 = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, 3, stride=2, padding=1),
            nn.BatchNorm2d(out_channels),
            FReLU(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x1 = self.SFEB1(img)
        return x1, self.SFEB2(x1)
