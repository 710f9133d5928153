"""The one place that turns a `MafsConfig` into a network."""

from __future__ import annotations

from torch import nn

from .config import MafsConfig
from .mafs import MafsNet
from .mafs_lite import MafsLiteNet


def build_model(cfg: MafsConfig) -> nn.Module:
    """A MAFS network for `cfg` (in train mode, freshly initialised): `MafsNet` on the paper's ResNet trunks,
    `MafsLiteNet` on EfficientNet-Lite0 trunks. Both take (vi, ir) and return a `MafsOutput`."""
    if cfg.encoder == "resnet":
        return MafsNet(cfg)
    return MafsLiteNet(cfg)
