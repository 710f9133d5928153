"""AFM: the attention fusion of the two shallow (full- and half-resolution) encoder features."""

from __future__ import annotations

import torch
from torch import nn


class _ConvBNReLU(nn.Module):
    """Conv3x3 (no bias) -> BN -> ReLU (official class `BBasicConv2d`, keys `basicconv.{0,1}`).

    Shapes: (B, in_channels, H, W) -> (B, out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.basicconv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.basicconv(x)


class FusionModule(nn.Module):
    """The fusion part of AFM (official class `Fusion_module`).

    z = [x1; x2]; z' = z * w_c + z with the SE-like recalibration weight w_c (2C -> 2C/r -> 2C);
    u = CBR1x1(z') (2C -> C); w = sigmoid(Local(u) * Global(u)) (a product, as in the official code);
    out = w * x1' + (1 - w) * x2', with (x1', x2') the two halves of z'. All 1x1 convs have a bias.

    Shapes: x1, x2 (B, channels, H, W) -> (B, channels, H, W).
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.channels = channels
        hidden = max(1, channels // reduction)
        self.Recalibrate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(2 * channels, 2 * hidden, 1),
            nn.BatchNorm2d(2 * hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * hidden, 2 * channels, 1),
            nn.BatchNorm2d(2 * channels),
            nn.Sigmoid(),
        )
        self.channel_agg = nn.Sequential(
            nn.Conv2d(2 * channels, channels, 1),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.local_att = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.BatchNorm2d(channels),
        )
        self.global_att = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        z = torch.cat([x1, x2], dim=1)
        z = z * self.Recalibrate(z) + z
        x1, x2 = torch.split(z, self.channels, dim=1)
        u = self.channel_agg(z)
        w = torch.sigmoid(self.local_att(u) * self.global_att(u))
        return w * x1 + (1 - w) * x2


class AFM(nn.Module):
    """AFM in the paper (official class `SDFM`): fusion of one pair of shallow features.

    Per modality three CBR3x3 layers (in -> out -> out -> out), then `FusionModule(out_channels, 4)`.
    The argument order matters: the fusion weight w multiplies the RGB branch.

    Shapes: rgb, ir (B, in_channels, H, W) -> (B, out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.RGBobj1_1 = _ConvBNReLU(in_channels, out_channels)
        self.RGBobj1_2 = _ConvBNReLU(out_channels, out_channels)
        self.RGBspr = _ConvBNReLU(out_channels, out_channels)
        self.Infobj1_1 = _ConvBNReLU(in_channels, out_channels)
        self.Infobj1_2 = _ConvBNReLU(out_channels, out_channels)
        self.Infspr = _ConvBNReLU(out_channels, out_channels)
        self.obj_fuse = FusionModule(out_channels, reduction=4)

    def forward(self, rgb: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        rgb = self.RGBspr(self.RGBobj1_2(self.RGBobj1_1(rgb)))
        ir = self.Infspr(self.Infobj1_2(self.Infobj1_1(ir)))
        return self.obj_fuse(rgb, ir)
