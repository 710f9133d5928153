"""PHF: SPADE-like modulation of a fusion feature by a segmentation-side guidance feature."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import resize_to


class PHF(nn.Module):
    """PHF in the paper (official class `SIM`): heterogeneous feature fusion by SPADE-like modulation.

    h = ReLU(conv3x3(resize(guide))); gamma = sigmoid(conv3x3(h)); beta = conv3x3(h);
    out = BN(IN(x) * (1 + gamma)) + beta, with IN = instance norm without affine or running stats.
    beta is added after the BN, as in the official code. All convs have a bias; the guide is resized to
    x's size (bilinear, align_corners=False).

    Shapes: x (B, norm_channels, H, W), guide (B, guide_channels, h, w) -> (B, norm_channels, H, W).
    """

    def __init__(self, norm_channels: int, guide_channels: int, hidden_channels: int = 32) -> None:
        super().__init__()
        self.mlp_shared = nn.Sequential(nn.Conv2d(guide_channels, hidden_channels, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Sequential(nn.Conv2d(hidden_channels, norm_channels, 3, padding=1), nn.Sigmoid())
        self.mlp_beta = nn.Conv2d(hidden_channels, norm_channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(norm_channels)

    def forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        hidden = self.mlp_shared(resize_to(guide, x))
        gamma = self.mlp_gamma(hidden)
        return self.bn(F.instance_norm(x, eps=1e-5) * (1 + gamma)) + self.mlp_beta(hidden)
