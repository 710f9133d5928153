"""Encoder registry: the trunk of each modality stream, by name.

    get_encoder("efficientnet_lite0", in_channels=1)   # a thermal EfficientNet-Lite0 trunk
    get_encoder("resnet", block="basic", layers=(1, 1, 1, 1), widths=(16, 32, 64, 128), in_channels=16)

`resnet` is the paper's trunk (`mafs`; it starts after the SFE stem). `efficientnet_lite0` is the trunk of
`mafs-lite`, which starts from ImageNet weights (`load_imagenet_weights`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .efficientnet_lite import EfficientNetLite0
from .resnet import ResNetTrunk

ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "resnet": ResNetTrunk,
    "efficientnet_lite0": EfficientNetLite0,
}


def get_encoder(name: str, **kwargs: Any) -> nn.Module:
    """A freshly initialised encoder `name` built with `kwargs` (see each class for its arguments)."""
    if name not in ENCODERS:
        raise KeyError(f"unknown encoder {name!r}; known: {sorted(ENCODERS)}")
    return ENCODERS[name](**kwargs)
