"""ASPP applied (with shared weights) to every pixel-decoder level before the transformer decoder."""

from __future__ import annotations

import torch
from torch import nn


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling with a residual (official `ASPP` in MAFS's SegmentationDecoder).

    Five parallel convs with bias (`conv0` 1x1, `conv1`..`conv4` 3x3 with dilation 1..4), concatenated in the
    order [conv0, conv1, ..., conv4], a 1x1 `conv` back to dim, + x, then `rconv` = conv3x3 -> BN -> ReLU.

    Shapes: (B, dim, H, W) -> (B, dim, H, W).
    """

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        # conv1..conv4 are registered before conv0, as in the official state_dict order.
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1, dilation=1)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=2, dilation=2)
        self.conv3 = nn.Conv2d(dim, dim, 3, padding=3, dilation=3)
        self.conv4 = nn.Conv2d(dim, dim, 3, padding=4, dilation=4)
        self.conv0 = nn.Conv2d(dim, dim, 1)
        self.conv = nn.Conv2d(5 * dim, dim, 1)
        self.rconv = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.BatchNorm2d(dim), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.conv0(x), self.conv1(x), self.conv2(x), self.conv3(x), self.conv4(x)]
        return self.rconv(self.conv(torch.cat(branches, dim=1)) + x)
