"""CAM: the cross-modal fusion of the two deep encoder streams into the segmentation features F3..F6."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _ConvBNLeaky(nn.Module):
    """Conv3x3 (no bias) -> BN -> LeakyReLU(0.1) (LASNet's `BasicConv2d`).

    Shapes: (B, in_channels, H, W) -> (B, out_channels, H, W).
    """

    conv_bn_pairs = (("conv", "bn"),)

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.bn(self.conv(x)), 0.1)


class _SpatialAttention(nn.Module):
    """sigmoid(conv3x3 1->1, no bias) of the channel-wise max (LASNet's `SpatialAttention`).

    Shapes: (B, C, H, W) -> (B, 1, H, W).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 1, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv1(x.amax(dim=1, keepdim=True)))


class ChannelSelfAttention(nn.Module):
    """DANet channel attention (official class `CAM_Module`): out = gamma * (A @ F) + F.

    E = F F^T over the flattened pixels (C x C), A = softmax(rowmax(E) - E): channels that are *less*
    similar get more weight, as in DANet. `gamma` starts at 0, so the module starts as the identity.

    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = x.flatten(2)
        energy = torch.bmm(feats, feats.transpose(1, 2))
        attention = F.softmax(energy.amax(dim=-1, keepdim=True) - energy, dim=-1)
        return self.gamma * torch.bmm(attention, feats).view_as(x) + x


class CAM(nn.Module):
    """CAM in the paper (official class `CAM`, from LASNet): attention fusion of one deep stage pair.

    m = x*y, s = CBL3x3(x + y), a = sigmoid(conv3x3(max_c m)); out = DANet channel attention of s*a.

    Shapes: x, y (B, in_channels, H, W) -> (B, out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int = 64) -> None:
        super().__init__()
        self.conv2 = _ConvBNLeaky(in_channels, out_channels)
        self.sa = _SpatialAttention()
        self.cam = ChannelSelfAttention()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.cam(self.conv2(x + y) * self.sa(x * y))
