"""The MAFS network in plain PyTorch (no torchvision/timm), module by module in the paper's vocabulary.

    from mafs_ros.model import get_config, build_model
    net = build_model(get_config("mafs-lite", num_classes=9))
    out = net(vi, ir)   # MafsOutput(semantic, aux, fused)
"""

from .config import CONFIGS, MafsConfig, get_config
from .mafs import MafsNet, MafsOutput, MafsPretrainer, build_model

__all__ = ["CONFIGS", "MafsConfig", "MafsNet", "MafsOutput", "MafsPretrainer", "build_model", "get_config"]
