"""FPN pixel decoder (MaskFormer `BasePixelDecoder` without detectron2)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def group_norm_groups(channels: int, max_groups: int = 32) -> int:
    """Number of GroupNorm groups: detectron2's 32 where it divides `channels`, else the largest common divisor."""
    return math.gcd(max_groups, channels)


class ConvNorm(nn.Conv2d):
    """detectron2-style `Conv2d` with a `norm` child and an optional ReLU (keys `weight`, `norm.*`).

    Shapes: (B, in_channels, H, W) -> (B, out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, relu: bool) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = nn.GroupNorm(group_norm_groups(out_channels), out_channels)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(super().forward(x))
        return F.relu(x) if self.relu else x


class PixelDecoder(nn.Module):
    """FPN pixel decoder of MAFS (official `BasePixelDecoder` from MaskFormer, GroupNorm, no bias).

    The coarsest level goes through `layer_N` (3x3 conv + GN + ReLU); every finer level k adds its lateral
    `adapter_k` (1x1 conv + GN) to the nearest-upsampled coarser result, then applies `layer_k`.

    Args:
        in_channels: channels of the input maps, finest (1/4) to coarsest (1/32).
        dim: width of every output map (official conv_dim = 64).
        keep_official_unused: also register the official `mask_features` conv (never computed).

    forward([F_1/4, F_1/8, F_1/16, F_1/32]) -> [y_1/32, y_1/16, y_1/8, y_1/4], each (B, dim, h_k, w_k) at the
    size of the matching input (the official `multi_scale_features`, coarse first).
    """

    def __init__(self, in_channels: Sequence[int], dim: int = 64, keep_official_unused: bool = False) -> None:
        super().__init__()
        self.num_levels = len(in_channels)
        # Registration order (adapter_1, layer_1, ..., layer_N) follows the official state_dict order.
        for level, channels in enumerate(in_channels, start=1):
            if level < self.num_levels:
                self.add_module(f"adapter_{level}", ConvNorm(channels, dim, 1, relu=False))
            layer_in = dim if level < self.num_levels else channels
            self.add_module(f"layer_{level}", ConvNorm(layer_in, dim, 3, relu=True))
        if keep_official_unused:
            self.mask_features = nn.Conv2d(dim, dim, 3, padding=1)
        self._init_weights()

    def _init_weights(self) -> None:
        # detectron2's c2_xavier_fill, the official initialisation of every FPN conv.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(features) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature maps, got {len(features)}")
        y = getattr(self, f"layer_{self.num_levels}")(features[-1])
        outputs = [y]
        for level in range(self.num_levels - 1, 0, -1):
            lateral = getattr(self, f"adapter_{level}")(features[level - 1])
            y = lateral + F.interpolate(y, size=lateral.shape[-2:], mode="nearest")
            y = getattr(self, f"layer_{level}")(y)
            outputs.append(y)
        return outputs
