"""A stand-in for the MAFS network with known outputs, for tests where the real network is not the point."""

from __future__ import annotations

import torch
from torch import nn

from mafs_ros.imaging import rgb_to_ycbcr
from mafs_ros.model import MafsOutput, get_config

NUM_CLASSES = 9


class KnownNet(nn.Module):
    """Logits peak at class floor(ir * NUM_CLASSES); fused = the visible Y ("visible_y") or the mean of the
    visible Y and the infrared ("mean"). Records the input sizes it was called with."""

    def __init__(self, fused: str = "visible_y") -> None:
        super().__init__()
        self.config = get_config("mafs-lite", num_classes=NUM_CLASSES)
        self.scale = nn.Parameter(torch.tensor(10.0))
        self.fused = fused
        self.input_sizes: list[tuple[int, ...]] = []

    def forward(self, vi: torch.Tensor, ir: torch.Tensor) -> MafsOutput:
        self.input_sizes.append(tuple(vi.shape))
        target = (ir[:, :1] * NUM_CLASSES).floor().clamp(max=NUM_CLASSES - 1)
        classes = torch.arange(NUM_CLASSES, dtype=vi.dtype).view(1, -1, 1, 1)
        logits = -self.scale * (classes - target).abs()
        y = rgb_to_ycbcr(vi)[0]
        fused = y if self.fused == "visible_y" else (y + ir[:, :1]) / 2
        return MafsOutput(logits, (logits,) * 6, fused)
