"""FPN segmentation decoder of the early-fusion `mafs-lite` (and of the plain baseline it is compared with).

The FPN (Lin et al., CVPR 2017; the light "semantic FPN" head) sums the smoothed top-down maps of the four
encoder levels at the finest one (stride 4 of the encoder input). With `fine_channels`, a refinement step
brings in the stem features (stride 2) before the classifier: curbs, guardrails and bumps are a few pixels
high in a road scene, and at stride 4 of a half-size input (1/8 of the image) no cell of the class map is
mostly curb, so a classifier there never predicts one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class FpnDecoder(nn.Module):
    """Top-down FPN over `in_channels` (fine to coarse), `width` wide, summed at the finest level.

    forward(features [(B, in_channels[i], H_i, W_i)], fine (B, fine_channels, 2 H_0, 2 W_0) or None)
      -> (pyramid (B, width, H_0, W_0), head (B, head_width, 2 H_0, 2 W_0) with `fine_channels`, else the pyramid)
    `pyramid` is what other paths may read (mafs-lite's fusion guide); `head` feeds the classifier.
    """

    def __init__(self, in_channels: Sequence[int], width: int, fine_channels: int = 0, head_width: int = 32) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in in_channels)
        self.smooth = nn.ModuleList(_conv_bn_relu(width, width) for _ in in_channels)
        self.fine_channels = fine_channels
        self.out_channels = head_width if fine_channels else width
        if fine_channels:
            # Depthwise-separable at stride 2: a full 3x3 there would cost about as much as the encoder.
            self.fine_lateral = _conv_bn_relu(fine_channels, head_width // 2, 1)
            self.refine = nn.Sequential(
                _conv_bn_relu(width + head_width // 2, head_width, 1),
                _conv_bn_relu(head_width, head_width, 3, groups=head_width),
            )

    def forward(
        self, features: Sequence[torch.Tensor], fine: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        top = self.lateral[-1](features[-1])
        finest = features[0].shape[-2:]
        pyramid = F.interpolate(self.smooth[-1](top), size=finest, mode="bilinear", align_corners=False)
        for level in range(len(features) - 2, -1, -1):
            top = self.lateral[level](features[level]) + F.interpolate(top, size=features[level].shape[-2:], mode="nearest")
            pyramid = pyramid + F.interpolate(self.smooth[level](top), size=finest, mode="bilinear", align_corners=False)
        if not self.fine_channels:
            return pyramid, pyramid
        if fine is None:
            raise ValueError("this FpnDecoder refines with stem features: pass `fine`")
        up = F.interpolate(pyramid, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return pyramid, self.refine(torch.cat([up, self.fine_lateral(fine)], dim=1))
