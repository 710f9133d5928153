"""The ResNet trunk of each encoder stream: torchvision's ResNet v1.5 without conv1 and fc, in plain torch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import TRUNK_BLOCKS


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual (torchvision `BasicBlock`, ResNet-18/34).

    Shapes: (B, in_channels, H, W) -> (B, width, H / stride, W / stride).
    """

    expansion = 1
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(self, in_channels: int, width: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 convs with a residual (torchvision `Bottleneck`, ResNet-50/101/152).

    v1.5: the stride sits on the 3x3 conv, as in torchvision (and so in the official ImageNet weights).

    Shapes: (B, in_channels, H, W) -> (B, 4 * width, H / stride, W / stride).
    """

    expansion = 4
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def __init__(self, in_channels: int, width: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * self.expansion)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + identity)


_BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNetTrunk(nn.Module):
    """ResNet trunk of one encoder stream (official: torchvision `resnet152` minus `conv1`/`fc`).

    The SFE replaces conv1, so the trunk starts at `bn1`. Submodule names and state_dict keys equal
    torchvision's (`bn1`, `layer1..4`); the official checkpoint registers them as `encoder_{rgb,thermal}_bn1`
    and `encoder_{rgb,thermal}_layer{3..6}` (layer k = official layer k+2).

    The model interleaves DEM between stages, so it drives the trunk stage by stage:
    `stem(x)` (bn1 + ReLU), then `maxpool`, `layer1`..`layer4`. `forward` chains them without DEM.

    Shapes: x (B, in_channels, H, W) (the SFEB2 output, 1/2 scale) -> stem (B, in_channels, H, W);
    layer1..layer4 give `out_channels[i]` channels at 1/4, 1/8, 1/16, 1/32 of the image (ceil division).
    """

    def __init__(
        self,
        block: str = "bottleneck",
        layers: Sequence[int] = (3, 8, 36, 3),
        widths: Sequence[int] = (64, 128, 256, 512),
        in_channels: int = 64,
    ) -> None:
        super().__init__()
        if block not in TRUNK_BLOCKS:
            raise ValueError(f"block must be one of {TRUNK_BLOCKS}, got {block!r}")
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError("layers and widths need 4 entries (ResNet layer1..layer4)")
        block_cls = _BLOCKS[block]
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        channels = in_channels
        for index, (depth, width) in enumerate(zip(layers, widths)):
            stage, channels = self._make_layer(block_cls, channels, width, depth, stride=1 if index == 0 else 2)
            self.add_module(f"layer{index + 1}", stage)
        self.out_channels = tuple(width * block_cls.expansion for width in widths)
        self._init_weights()

    @staticmethod
    def _make_layer(
        block_cls: type[BasicBlock] | type[Bottleneck], in_channels: int, width: int, depth: int, stride: int
    ) -> tuple[nn.Sequential, int]:
        out_channels = width * block_cls.expansion
        downsample = None
        if stride != 1 or in_channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        blocks = [block_cls(in_channels, width, stride, downsample)]
        blocks += [block_cls(out_channels, width) for _ in range(depth - 1)]
        return nn.Sequential(*blocks), out_channels

    def _init_weights(self) -> None:
        # torchvision's initialisation, for training without ImageNet weights.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """bn1 + ReLU on the SFE output (the stage the first DEM is applied to)."""
        return F.relu(self.bn1(x))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four stage outputs [layer1, ..., layer4] for the SFE output `x`, without DEM."""
        x = self.maxpool(self.stem(x))
        features = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            features.append(x)
        return features
