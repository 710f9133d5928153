"""The one configuration object of the MAFS network, and the named configurations."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

EAEF_GATES = ("intended", "official_b1")
TRUNK_BLOCKS = ("bottleneck", "basic")
ENCODER_NAMES = ("resnet", "efficientnet_lite0")


@dataclass(frozen=True)
class MafsConfig:
    """Every width, depth and behaviour switch of the network.

    The default values are the paper's network (`mafs`): two ResNet-152 trunks, 64-wide decoder,
    32-wide fusion path. `mafs-lite` keeps the fusion path's topology on one early-fusion EfficientNet-Lite0
    trunk (model/mafs_lite.py).
    """

    name: str = "mafs"
    num_classes: int = 9
    # Trunk (model/encoders.py): "resnet" builds `MafsNet` (the paper, one per modality), the pretrained
    # "efficientnet_lite0" builds `MafsLiteNet` (one on RGB + thermal), whose trunk_*, sfe/stem/inn,
    # transformer and eaef fields are unused.
    encoder: str = "resnet"
    # MafsLiteNet: the encoders and the fusion weight maps run at 1/seg_downsample of the input size; the
    # fused image is composed at the input size.
    seg_downsample: int = 1
    # ResNet trunk per modality (conv1/fc of torchvision's ResNet are not used: the SFE replaces conv1).
    trunk_block: str = "bottleneck"
    trunk_layers: tuple[int, ...] = (3, 8, 36, 3)
    trunk_widths: tuple[int, ...] = (64, 128, 256, 512)
    # SFE: `sfe_width` channels at full resolution (SFEB1), `stem_width` at 1/2 (SFEB2, the trunk input).
    sfe_width: int = 32
    stem_width: int = 64
    # Fusion path (AFM, PHF, DSRM, INN fusion decoder) width and number of invertible blocks.
    fusion_width: int = 32
    inn_blocks: int = 5
    # Segmentation path (CAM outputs, FPN pixel decoder, ARM cascade, transformer decoder, seg head) width.
    decoder_width: int = 64
    transformer_heads: int = 2
    # CAM level (0..3 = F3..F6) the transformer decoder starts from; it ends at 8x that level's size.
    transformer_level: int = 2
    # DEM/EAEF cross gate: "intended" (per-channel diagonal) or "official_b1" (the official code's row-0
    # gate, which the released checkpoint was trained and tested with at batch 1).
    eaef_gate: str = "intended"
    # Keep the parameters of the official code's dead branches (never computed) so that an official
    # checkpoint loads strictly and `state_dict()` maps 1:1 onto the official key list.
    keep_official_unused: bool = False

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.encoder not in ENCODER_NAMES:
            raise ValueError(f"encoder must be one of {ENCODER_NAMES}, got {self.encoder!r}")
        if self.seg_downsample < 1:
            raise ValueError(f"seg_downsample must be >= 1, got {self.seg_downsample}")
        if self.trunk_block not in TRUNK_BLOCKS:
            raise ValueError(f"trunk_block must be one of {TRUNK_BLOCKS}, got {self.trunk_block!r}")
        if len(self.trunk_layers) != 4 or len(self.trunk_widths) != 4:
            raise ValueError("trunk_layers and trunk_widths need 4 entries (ResNet layer1..layer4)")
        if self.eaef_gate not in EAEF_GATES:
            raise ValueError(f"eaef_gate must be one of {EAEF_GATES}, got {self.eaef_gate!r}")
        if self.fusion_width % 2:
            raise ValueError(f"fusion_width must be even (the INN splits it in two), got {self.fusion_width}")
        if self.transformer_level not in (2, 3):
            raise ValueError(f"transformer_level must be 2 (F5) or 3 (F6), got {self.transformer_level}")
        if self.decoder_width % self.transformer_heads:
            raise ValueError("decoder_width must be divisible by transformer_heads")

    @property
    def trunk_channels(self) -> tuple[int, ...]:
        """Output channels of ResNet layer1..layer4."""
        expansion = 4 if self.trunk_block == "bottleneck" else 1
        return tuple(w * expansion for w in self.trunk_widths)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "MafsConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown MafsConfig fields: {unknown}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**values)

    def replace(self, **changes: Any) -> "MafsConfig":
        return dataclasses.replace(self, **changes)


CONFIGS: dict[str, MafsConfig] = {
    "mafs": MafsConfig(name="mafs"),
    # The paper's topology at toy widths (about 7 GMACs at 480x640 and 0.8 M parameters, random weights): tests
    # and quick CPU runs of the ResNet path, Stage I included.
    "mafs-tiny": MafsConfig(
        name="mafs-tiny",
        trunk_block="basic",
        trunk_layers=(1, 1, 1, 1),
        trunk_widths=(16, 32, 64, 128),
        sfe_width=6,
        stem_width=16,
        fusion_width=6,
        inn_blocks=3,
        decoder_width=12,
    ),
    # One ImageNet-pretrained EfficientNet-Lite0 on RGB + thermal at half the input size, a 64-wide FPN refined
    # at stride 2, and a 16-wide fusion path that predicts the fusion weight maps; the fused image itself is
    # composed from the full-size sources.
    "mafs-lite": MafsConfig(
        name="mafs-lite",
        encoder="efficientnet_lite0",
        seg_downsample=2,
        fusion_width=16,
        decoder_width=64,
    ),
}


def get_config(name: str, **overrides: Any) -> MafsConfig:
    """A named configuration (`mafs`, `mafs-lite`, `mafs-tiny`) with optional field overrides (e.g. num_classes)."""
    if name not in CONFIGS:
        raise KeyError(f"unknown model config {name!r}; known: {sorted(CONFIGS)}")
    return CONFIGS[name].replace(**overrides)
