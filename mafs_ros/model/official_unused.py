"""Parameters of the official MAFS code's dead branches (official defect #10, docs/MODEL.md; 1.28 M parameters).

`keep_official_unused=True` registers them, never computes them, so that an official checkpoint loads
strictly and `MafsNet.state_dict()` maps 1:1 onto the official key list. Names are the official ones.
"""

from __future__ import annotations

from torch import nn

from .arm import MultiDilationFusion
from .config import MafsConfig
from .phf import PHF
from .sfe import SFE


class _S2PMBlock(nn.Module):
    """One block of the official, never-called `S2PM` module: conv (no bias) + BN, then a second BN."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        conv_bn = nn.Module()
        conv_bn.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        conv_bn.bn = nn.BatchNorm2d(out_channels)
        self.add_module("0", conv_bn)
        self.add_module("1", nn.BatchNorm2d(out_channels))


class OfficialUnusedEncoderParams(nn.Module):
    """Parameters of the official Encoder's dead branches, for strict loading only; never called.

    Official names kept: SFEB2 (an SFE block on rec_f1), to_fused_seg (four 3x3 convs), SIM3 (a PHF),
    seg_decoder (S2PM) and ARM (a multi-dilation fusion over 5 concatenated maps).
    """

    def __init__(self, cfg: MafsConfig) -> None:
        super().__init__()
        dim = cfg.decoder_width
        self.SFEB2 = SFE(1, cfg.fusion_width, dim).SFEB2
        self.to_fused_seg = nn.ModuleList(nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1)) for _ in range(4))
        self.SIM3 = PHF(cfg.fusion_width, dim, cfg.fusion_width)
        self.seg_decoder = nn.Module()
        self.seg_decoder.block1 = _S2PMBlock(4 * dim, dim)
        self.seg_decoder.block2 = _S2PMBlock(dim, dim)
        self.seg_decoder.block3 = _S2PMBlock(dim, dim)
        self.ARM = MultiDilationFusion(5 * dim, dim)

    def forward(self, *args: object) -> None:
        raise RuntimeError("the official code's dead branches are kept for loading only, never computed")


class OfficialUnusedDecoderParams(nn.Module):
    """The official SegmentationDecoder's never-called `intermediate_head` (hard-wired to 9 outputs)."""

    def __init__(self, cfg: MafsConfig) -> None:
        super().__init__()
        self.intermediate_head = nn.Conv2d(cfg.decoder_width, 9, 1)

    def forward(self, *args: object) -> None:
        raise RuntimeError("the official code's dead branches are kept for loading only, never computed")
