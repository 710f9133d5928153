"""Preliminary decoder and the binary-gated semantic segmentation head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConvBNReLU6


class ConvBlock(nn.Module):
    """conv3x3 (no bias) -> BatchNorm -> ReLU (official `ConvBlock`; keys `conv`, `bn1`).

    Shapes: (B, in_channels, H, W) -> (B, out_channels, H, W).
    """

    conv_bn_pairs = (("conv", "bn1"),)

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv(x)))


class PreliminaryDecoder(nn.Sequential):
    """Preliminary decoder after the transformer decoder (official `preliminary_decoder`, two ConvBlocks).

    Shapes: (B, dim, H, W) -> (B, dim, H, W).
    """

    def __init__(self, dim: int) -> None:
        super().__init__(ConvBlock(dim, dim), ConvBlock(dim, dim))


class SegHead(nn.Module):
    """Binary-gated semantic segmentation head of MAFS (official `SegHead`).

    A 2-class foreground branch gives a per-pixel gate = P(foreground); the semantic branch classifies the
    gated features, then upsamples x2 (bilinear, align_corners=True). The binary logits are not returned.

    Args:
        dim: input width (official 64); the binary branch is dim // 4 wide.
        num_classes: semantic classes (the official code hard-wires 15).
        keep_official_unused: also register the official boundary convs (never computed).

    Shapes: (B, dim, H, W) -> logits (B, num_classes, 2H, 2W).
    """

    def __init__(self, dim: int, num_classes: int, keep_official_unused: bool = False) -> None:
        super().__init__()
        self.binary_conv1 = ConvBNReLU6(dim, dim // 4, 1, norm_name="bnop")
        self.binary_conv2 = nn.Conv2d(dim // 4, 2, 3, padding=1)
        self.semantic_conv1 = ConvBNReLU6(dim, dim, 1, norm_name="bnop")
        self.semantic_conv2 = nn.Conv2d(dim, num_classes, 3, padding=1)
        if keep_official_unused:
            self.boundary_conv1 = ConvBNReLU6(2 * dim, dim, 1, norm_name="bnop")
            self.boundary_conv2 = nn.Conv2d(dim, 2, 3, padding=1)
            self.boundary_conv = nn.Sequential(
                nn.Conv2d(2 * dim, dim, 1),
                nn.BatchNorm2d(dim),
                nn.ReLU(inplace=True),
                nn.Conv2d(dim, 2, 3, padding=1),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        binary = torch.exp(self.binary_conv2(self.binary_conv1(x)))
        # Hand-written softmax without max-subtraction, as in the official code: `softmax` differs by ~4e-7.
        gate = binary[:, 1:2] / binary.sum(dim=1, keepdim=True)
        logits = self.semantic_conv2(self.semantic_conv1(x * gate))
        return F.interpolate(logits, scale_factor=2, mode="bilinear", align_corners=True)
