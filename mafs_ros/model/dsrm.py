"""DSRM: the dense block that turns the modulated shallow fusion feature into the fusion decoder input."""

from __future__ import annotations

import torch
from torch import nn


class _ConvBN(nn.Module):
    """Conv3x3 (no bias) -> BN (official class `BasicConv2d`; its ReLU is defined but never applied).

    Shapes: (B, in_channels, H, W) -> (B, out_channels, H, W).
    """

    conv_bn_pairs = (("conv", "bn"),)
    # forward returns bn(conv(x)): once `bn` is folded, a BatchNorm after this module folds into `conv` as well.
    output_conv = "conv"

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class DSRM(nn.Module):
    """DSRM in the paper (official class `DSRM`): dense block of the fusion branch.

    Four dense layers; layer i sees cat([x, y_1, ..., y_{i-1}]) and applies conv3x3 -> BN -> BN -> ReLU.
    The back-to-back BNs reproduce the official `BasicConv2d` (its own BN) followed by the block's BN.
    The output is y_4 alone, not the concatenation.

    Shapes: (B, in_channels, H, W) -> (B, out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block1 = self._layer(in_channels, out_channels)
        self.block2 = self._layer(in_channels + out_channels, out_channels)
        self.block3 = self._layer(in_channels + 2 * out_channels, out_channels)
        self.block4 = self._layer(in_channels + 3 * out_channels, out_channels)

    @staticmethod
    def _layer(in_channels: int, out_channels: int) -> nn.Sequential:
        return nn.Sequential(_ConvBN(in_channels, out_channels), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y1 = self.block1(x)
        y2 = self.block2(torch.cat([x, y1], dim=1))
        y3 = self.block3(torch.cat([x, y1, y2], dim=1))
        return self.block4(torch.cat([x, y1, y2, y3], dim=1))
