"""ARM cascade (CAINet), the multi-dilation fusion before the seg head, and the deep-supervision classifiers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConvBNReLU6, resize_to


def upsample_to(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Resize `x` to `reference`'s spatial size.

    An exact x2 uses bilinear with align_corners=True, the official `UpsamplingBilinear2d`; any other size
    (odd input sizes) falls back to the generic `resize_to`.
    """
    size = reference.shape[-2:]
    if x.shape[-2:] == size:
        return x
    if (2 * x.shape[-2], 2 * x.shape[-1]) == tuple(size):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    return resize_to(x, reference)


class ARM(nn.Module):
    """Attention refinement module of the ARM cascade (official `ARM_I` / `ARM_II` from CAINet).

    ARM_I and ARM_II compute the same thing with the same keys. prev and high are first resized to low's
    size; x = cat([low, prev, high]) goes through three parallel 3x3 CBR6 with dilation 1, 2, 4 and a 1x1
    CBR6 (l); h = 1x1 CBR6 of high.

    forward(low (B, low_channels, H, W), prev (B, prev_channels, h, w), high (B, high_channels, h, w))
    -> (product = l * h, sum = l * h + h), both (B, dim, H, W).
    """

    def __init__(self, low_channels: int, prev_channels: int, high_channels: int, dim: int) -> None:
        super().__init__()
        in_channels = low_channels + prev_channels + high_channels
        self.dilation_conv1 = ConvBNReLU6(in_channels, dim, 3, dilation=1)
        self.dilation_conv2 = ConvBNReLU6(in_channels, dim, 3, dilation=2)
        self.dilation_conv3 = ConvBNReLU6(in_channels, dim, 3, dilation=4)
        self.conv1 = ConvBNReLU6(3 * dim, dim, 1)
        self.high_out = ConvBNReLU6(high_channels, dim, 1)

    def forward(self, low: torch.Tensor, prev: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prev = upsample_to(prev, low)
        high = upsample_to(high, low)
        x = torch.cat([low, prev, high], dim=1)
        x = torch.cat([self.dilation_conv1(x), self.dilation_conv2(x), self.dilation_conv3(x)], dim=1)
        h = self.high_out(high)
        product = self.conv1(x) * h
        return product, product + h


class MultiDilationFusion(nn.Module):
    """Multi-dilation fusion before the seg head (official `seg_decoder.ARM`, class `ARM2`).

    Parallel 3x3 CBR6 with the given dilations (official 1, 2, 4, 8), concatenated, then a 1x1 CBR6.
    In MAFS the input is cat([rec_f1, preliminary decoder output]).

    Shapes: (B, in_channels, H, W) -> (B, dim, H, W).
    """

    def __init__(self, in_channels: int, dim: int, dilations: Sequence[int] = (1, 2, 4, 8)) -> None:
        super().__init__()
        self.num_branches = len(dilations)
        for i, dilation in enumerate(dilations, start=1):
            self.add_module(f"dilation_conv{i}", ConvBNReLU6(in_channels, dim, 3, dilation=dilation))
        self.conv1 = ConvBNReLU6(len(dilations) * dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [getattr(self, f"dilation_conv{i}")(x) for i in range(1, self.num_branches + 1)]
        return self.conv1(torch.cat(branches, dim=1))


class DeepSupervisionClassifier(nn.Sequential):
    """Deep-supervision classifier on an ARM output (official `classifier_Z1` .. `classifier_Z6`).

    3x3 CBR6 (keys `0.conv`, `0.bnop`) -> bilinear x up_first -> 1x1 conv with bias (`2.*`) -> bilinear
    x up_second; both upsamplings use align_corners=True like the official `UpsamplingBilinear2d`.

    Shapes: (B, dim, H, W) -> (B, num_outputs, H * up_first * up_second, W * up_first * up_second).
    """

    def __init__(self, dim: int, num_outputs: int, up_first: int, up_second: int) -> None:
        super().__init__(
            ConvBNReLU6(dim, dim, 3, norm_name="bnop"),
            nn.Upsample(scale_factor=up_first, mode="bilinear", align_corners=True),
            nn.Conv2d(dim, num_outputs, 1),
            nn.Upsample(scale_factor=up_second, mode="bilinear", align_corners=True),
        )
