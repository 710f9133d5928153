"""Compatibility with the official MAFS code: key names, dead parameters, checkpoint conversion.

Our module names follow the paper (SFE, DEM, CAM, AFM, PHF, DSRM); inside each module the parameter
names are the official ones, so converting a state dict only renames a handful of prefixes. The
official dead branches are in `official_unused.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from .config import MafsConfig, get_config
from .mafs import MafsNet
from ..errors import MafsError

# (our prefix, official prefix), matched longest first.
_PREFIXES: list[tuple[str, str]] = [
    ("encoder.sfe_rgb.", "encoder.encoder_rgb_conv1."),
    ("encoder.sfe_thermal.", "encoder.encoder_thermal_conv1."),
    ("encoder.afm_full.", "encoder.low_fuse1."),
    ("encoder.afm_half.", "encoder.low_fuse2."),
    ("encoder.phf_half.", "encoder.SIM1."),
    ("encoder.phf_full.", "encoder.SIM2."),
    ("encoder.dsrm.", "encoder.rec_decoder."),
    ("fusion_decoder.", "fuse_decoder."),
    ("seg_decoder.arm_16.", "seg_decoder.arm3."),
    ("seg_decoder.arm_8.", "seg_decoder.arm2."),
    ("seg_decoder.arm_4.", "seg_decoder.arm1."),
    ("seg_decoder.transformer_decoder.", "seg_decoder.invpt."),
    ("seg_decoder.arm_fuse.", "seg_decoder.ARM."),
    ("seg_decoder.official_unused.intermediate_head.", "seg_decoder.intermediate_head."),
]
_PREFIXES += [
    (f"encoder.official_unused.{name}.", f"encoder.{name}.")
    for name in ("SFEB2", "to_fused_seg", "SIM3", "seg_decoder", "ARM")
]
for _stream in ("rgb", "thermal"):
    _PREFIXES.append((f"encoder.trunk_{_stream}.bn1.", f"encoder.encoder_{_stream}_bn1."))
    # Official `layer3..layer6` are ResNet layer1..layer4.
    _PREFIXES += [
        (f"encoder.trunk_{_stream}.layer{k}.", f"encoder.encoder_{_stream}_layer{k + 2}.") for k in range(1, 5)
    ]
_PREFIXES += [(f"encoder.dem.{i}.", f"encoder.EAEF{i + 2}.") for i in range(4)]
_PREFIXES += [
    (f"encoder.cam.{i}.", f"encoder.{name}.")
    for i, name in enumerate(["low_fuse3", "high_fuse4", "high_fuse5", "high_fuse6"])
]
_PREFIXES += [
    (f"seg_decoder.aux_heads.{i}.", f"seg_decoder.classifier_{name}.")
    for i, name in enumerate(["Z6", "Z3", "Z5", "Z2", "Z4", "Z1"])
]
# Longest prefix first, so that e.g. `encoder.SIM1.` never captures a longer official name.
_PREFIXES.sort(key=lambda pair: len(pair[0]), reverse=True)
_OFFICIAL_PREFIXES = sorted(_PREFIXES, key=lambda pair: len(pair[1]), reverse=True)


def to_official_key(key: str) -> str:
    """Our state-dict key -> the official `NetworkStage2` key."""
    for ours, official in _PREFIXES:
        if key.startswith(ours):
            return official + key[len(ours) :]
    return key


def from_official_key(key: str) -> str:
    """Official `NetworkStage2` key -> ours (inverse of `to_official_key`)."""
    for ours, official in _OFFICIAL_PREFIXES:
        if key.startswith(official):
            return ours + key[len(official) :]
    return key


class OfficialCheckpointError(MafsError, ValueError):
    """An official checkpoint that does not match the MAFS network (names the offending keys)."""


def _describe_mismatch(missing: list[str], unexpected: list[str], shapes: list[str]) -> str:
    lines = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            shown = ", ".join(items[:10]) + (f", ... ({len(items)} in all)" if len(items) > 10 else "")
            lines.append(f"{title}: {shown}")
    return "; ".join(lines)


def convert_official_state_dict(
    official: Mapping[str, torch.Tensor], num_classes: int
) -> tuple[MafsConfig, dict[str, torch.Tensor]]:
    """Convert an official `NetworkStage2` state dict (the `MTAN` entry of a released checkpoint) to ours.

    The whole official state dict is checked strictly against the paper config with `num_classes`
    (every key present, none unexpected, every shape equal); the returned config uses the official
    batch-1 EAEF gate (the behaviour the checkpoint was trained and tested with) and drops the dead
    parameters, which the returned state dict does not contain.
    """
    official = {k.removeprefix("module."): v for k, v in official.items()}
    full_cfg = get_config("mafs", num_classes=num_classes, keep_official_unused=True, eaef_gate="official_b1")
    expected = {to_official_key(k): v.shape for k, v in MafsNet(full_cfg).state_dict().items()}
    head = official.get("seg_decoder.seg_head.semantic_conv2.weight")
    if head is not None and head.shape[0] != num_classes:
        raise OfficialCheckpointError(
            f"the checkpoint's seg head predicts {head.shape[0]} classes, but --classes {num_classes} was given"
        )
    missing = [k for k in expected if k not in official]
    unexpected = [k for k in official if k not in expected]
    shapes = [
        f"{k} {tuple(official[k].shape)} != {tuple(shape)}"
        for k, shape in expected.items()
        if k in official and official[k].shape != shape
    ]
    if missing or unexpected or shapes:
        mismatch = _describe_mismatch(missing, unexpected, shapes)
        raise OfficialCheckpointError(f"not an official MAFS checkpoint: {mismatch}")

    cfg = full_cfg.replace(keep_official_unused=False)
    ours = {from_official_key(k): v for k, v in official.items()}
    kept = MafsNet(cfg).state_dict().keys()
    return cfg, {k: ours[k] for k in kept}


def load_official_checkpoint(path: str | Path, num_classes: int) -> tuple[MafsConfig, dict[str, torch.Tensor]]:
    """Read a checkpoint file released with the paper (`{'MTAN': state_dict, ...}` or a bare state dict)
    without executing pickled code, and convert it with `convert_official_state_dict`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or pickled-code files
        raise OfficialCheckpointError(f"cannot read {path} as a weights-only torch checkpoint: {exc}") from exc
    if isinstance(data, Mapping) and "MTAN" in data:
        data = data["MTAN"]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise OfficialCheckpointError(f"{path} holds no state dict (expected a dict of tensors or {{'MTAN': ...}})")
    return convert_official_state_dict(data, num_classes)
