"""The MAFS network in plain PyTorch (no torchvision/timm), module by module in the paper's vocabulary.

    from mafs_ros.model import get_config, build_model
    net = build_model(get_config("mafs-lite", num_classes=9))
    out = net(vi, ir)   # MafsOutput(semantic, aux, fused)
"""

from .config import CONFIGS, MafsConfig, get_config
from .build import build_model
from .mafs import MafsNet, MafsOutput, MafsPretrainer
from .mafs_lite import MafsLiteNet

__all__ = ["CONFIGS", "MafsConfig", "MafsLiteNet", "MafsNet", "MafsOutput", "MafsPretrainer", "build_model", "get_config"]
