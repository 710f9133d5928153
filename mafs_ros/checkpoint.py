"""Our checkpoint format: one safetensors file with the weights and everything needed to use them.

Loading never executes pickled code (safetensors holds raw tensors and a JSON header only) and is strict.

Metadata schema (safetensors metadata is str -> str; every value below is JSON-encoded):

    mafs_format          "mafs_ros.checkpoint"          format tag
    mafs_format_version  1                              FORMAT_VERSION; other versions are refused
    mafs_ros_version     "0.1.0"                        package version that wrote the file (informative)
    model_config         {...}                          MafsConfig.to_dict()
    class_names          ["unlabeled", "car", ...]      num_classes entries
    palette              [[0, 0, 0], [64, 0, 128], ...] num_classes RGB triples, 0..255
    input_conventions    {"visible": {"channels": "RGB", "range": [0.0, 1.0], "mean": null, "std": null},
                          "thermal": {"channels": 1, "normalization": {"name": "fixed"}},
                          "ignore_label": 255, "size_multiple": 32}
    trained              true / false                   false: random weights, outputs are meaningless
    description          "free text"                    what it is, how it was made
    extra                {...}                          provenance (dataset, run, source file hashes, metrics)
    weights_sha256       "hex"                          SHA-256 over the tensors (names, dtypes, shapes,
                                                        bytes, sorted by name); detects edited weights

mafs_ros_version and extra are optional; keys other than these are ignored (tools may add their own).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from . import __version__
from .class_sets import IGNORE_LABEL
from .imaging import ThermalNormalization
from .model import MafsConfig, build_model
from .errors import MafsError

logger = logging.getLogger(__name__)

FORMAT_TAG = "mafs_ros.checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
DEFAULT_CHECKPOINT = CHECKPOINT_DIR / "mafs-lite.safetensors"

# The only visible-input convention the network has (the official code's): RGB in [0, 1], no ImageNet mean/std.
VISIBLE_CONVENTION: dict[str, Any] = {"channels": "RGB", "range": [0.0, 1.0], "mean": None, "std": None}
REQUIRED_FIELDS = (
    "mafs_format",
    "mafs_format_version",
    "model_config",
    "class_names",
    "palette",
    "input_conventions",
    "trained",
    "description",
    "weights_sha256",
)
OPTIONAL_FIELDS = ("mafs_ros_version", "extra")
_MAX_LISTED = 10


class CheckpointError(MafsError):
    """A checkpoint file that cannot be used; the message says which file and what is wrong."""


@dataclass(frozen=True)
class InputConventions:
    """What the network expects as input (see the module docstring for the stored form).

    The visible convention is fixed (RGB, [0, 1], no mean/std); the thermal normalisation is the one the
    weights were trained with; `size_multiple` is the stride the network input sizes must divide by.
    """

    thermal_normalization: ThermalNormalization = field(default_factory=ThermalNormalization)
    ignore_label: int = IGNORE_LABEL
    size_multiple: int = 32

    def to_dict(self) -> dict[str, Any]:
        return {
            "visible": dict(VISIBLE_CONVENTION),
            "thermal": {"channels": 1, "normalization": self.thermal_normalization.to_dict()},
            "ignore_label": self.ignore_label,
            "size_multiple": self.size_multiple,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "InputConventions":
        """Parse the stored form; raises ValueError for a convention this code cannot honour."""
        if values.get("visible") != VISIBLE_CONVENTION:
            raise ValueError(f"unsupported visible input convention {values.get('visible')}; "
                             f"supported: {VISIBLE_CONVENTION}")
        thermal = values.get("thermal")
        if not isinstance(thermal, dict) or thermal.get("channels") != 1 or "normalization" not in thermal:
            raise ValueError(f"unsupported thermal input convention {thermal}")
        if values.get("ignore_label") != IGNORE_LABEL:
            raise ValueError(f"ignore_label must be {IGNORE_LABEL}, got {values.get('ignore_label')}")
        size_multiple = values.get("size_multiple")
        if not isinstance(size_multiple, int) or size_multiple < 1:
            raise ValueError(f"size_multiple must be a positive integer, got {size_multiple}")
        return cls(
            thermal_normalization=ThermalNormalization.from_spec(thermal["normalization"]),
            ignore_label=IGNORE_LABEL,
            size_multiple=size_multiple,
        )


@dataclass
class Checkpoint:
    """A loaded checkpoint: metadata and weights (state_dict, on the requested device)."""

    path: Path
    config: MafsConfig
    class_names: tuple[str, ...]
    palette: np.ndarray  # (num_classes, 3) uint8 RGB
    inputs: InputConventions
    trained: bool
    description: str
    extra: dict[str, Any]
    state_dict: dict[str, torch.Tensor]

    @property
    def thermal_normalization(self) -> ThermalNormalization:
        return self.inputs.thermal_normalization


# ---------------------------------------------------------------------------------------------------------
# Saving


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    class_names: list[str] | tuple[str, ...],
    palette: Any,
    *,
    thermal_normalization: "str | dict[str, Any] | ThermalNormalization",
    trained: bool,
    description: str,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write `model` (which must carry its MafsConfig as `model.config`) and its metadata to `path`.

    palette: (num_classes, 3) RGB values 0..255 (nested lists or an array).
    extra: JSON-serialisable provenance. The file is written atomically (temporary file + rename).
    Raises CheckpointError for inconsistent metadata or non-finite weights (such a file could not be loaded).
    """
    path = Path(path)
    config = getattr(model, "config", None)
    if not isinstance(config, MafsConfig):
        raise CheckpointError("the model has no MafsConfig in `model.config`; build it with build_model()")
    class_names = tuple(class_names)
    palette_array = _check_classes(class_names, palette, config.num_classes)
    inputs = InputConventions(thermal_normalization=ThermalNormalization.from_spec(thermal_normalization))
    state_dict = {
        # clone(): safetensors refuses tensors that share memory (tied weights, views).
        name: tensor.detach().to("cpu").contiguous().clone()
        for name, tensor in model.state_dict().items()
    }
    _check_finite(state_dict, f"model to be saved as {path}")
    metadata = {
        "mafs_format": FORMAT_TAG,
        "mafs_format_version": FORMAT_VERSION,
        "mafs_ros_version": __version__,
        "model_config": config.to_dict(),
        "class_names": list(class_names),
        "palette": palette_array.tolist(),
        "input_conventions": inputs.to_dict(),
        "trained": bool(trained),
        "description": str(description),
        "extra": extra or {},
        "weights_sha256": weights_sha256(state_dict),
    }
    try:
        encoded = {key: json.dumps(value) for key, value in metadata.items()}
    except TypeError as exc:
        raise CheckpointError(f"checkpoint metadata is not JSON-serialisable (check `extra`): {exc}") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(state_dict, str(tmp), metadata=encoded)
        tmp.chmod(0o644)  # safetensors creates the file owner-only; a checkpoint is meant to be shared
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("saved checkpoint %s (%s, %d tensors, trained=%s)", path, config.name, len(state_dict), trained)
    return path


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and raw bytes, in name order (CPU tensors)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Loading


def load_checkpoint(path: str | Path | None = None, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read and verify a checkpoint (None: DEFAULT_CHECKPOINT); tensors end up on `map_location`.

    Raises CheckpointError when the file is missing, not a (complete) safetensors file, not ours, of an
    unknown format version, has missing or inconsistent metadata, non-finite weights, or weights that do
    not match their recorded checksum. Logs a warning for an untrained checkpoint.
    """
    is_default = path is None
    path = DEFAULT_CHECKPOINT if path is None else Path(path)
    if not path.is_file():
        what = "the packaged default checkpoint" if is_default else "checkpoint"
        reason = "is a directory, not a file" if path.is_dir() else "not found"
        raise CheckpointError(f"{what} {reason}: {path}")

    try:
        with safe_open(str(path), framework="pt", device="cpu") as reader:
            raw_metadata = reader.metadata() or {}
            state_dict = {name: reader.get_tensor(name) for name in reader.keys()}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file (truncated, corrupted or another format): {exc}"
        ) from exc

    metadata = _decode_metadata(path, raw_metadata)
    config, class_names, palette, inputs, trained = parse_metadata(path, metadata)
    _check_finite(state_dict, str(path))
    if weights_sha256(state_dict) != metadata["weights_sha256"]:
        raise CheckpointError(
            f"{path}: the weights do not match the checksum recorded in the file (corrupted or modified)"
        )
    if not trained:
        logger.warning(
            "!!! checkpoint %s is UNTRAINED (random weights): fused images and labels are meaningless. "
            "Train one with `mafs train` or convert the paper's with `mafs import-official`. !!!",
            path,
        )
    return Checkpoint(
        path=path,
        config=config,
        class_names=class_names,
        palette=palette,
        inputs=inputs,
        trained=trained,
        description=metadata["description"],
        extra=metadata.get("extra", {}),
        state_dict={name: tensor.to(map_location) for name, tensor in state_dict.items()},
    )


def _decode_metadata(path: Path, raw: dict[str, str]) -> dict[str, Any]:
    """JSON-decode the metadata after checking the format tag, version and required fields."""
    if "mafs_format" not in raw:
        raise CheckpointError(
            f"{path} is a safetensors file but not a mafs_ros checkpoint (no 'mafs_format' metadata); "
            "checkpoints released with the paper are converted with `mafs import-official`"
        )
    decoded: dict[str, Any] = {}
    # Only our fields: other tools may add their own plain-string keys (e.g. "format": "pt").
    for key, text in raw.items():
        if key not in REQUIRED_FIELDS and key not in OPTIONAL_FIELDS:
            continue
        try:
            decoded[key] = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: metadata field {key!r} is not valid JSON: {exc}") from exc
    if decoded["mafs_format"] != FORMAT_TAG:
        raise CheckpointError(f"{path}: unknown format tag {decoded['mafs_format']!r} (expected {FORMAT_TAG!r})")
    version = decoded.get("mafs_format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: unsupported checkpoint format version {version!r}; this mafs_ros "
            f"{__version__} reads version {FORMAT_VERSION}"
        )
    missing = [key for key in REQUIRED_FIELDS if key not in decoded]
    if missing:
        raise CheckpointError(f"{path}: missing metadata field(s) {missing}")
    return decoded


def parse_metadata(
    path: Path, metadata: dict[str, Any]
) -> tuple[MafsConfig, tuple[str, ...], np.ndarray, InputConventions, bool]:
    """Typed, validated config, class names, palette, input conventions and trained flag of decoded checkpoint
    metadata (a safetensors header, or the metadata an ONNX export carries); CheckpointError names `path`."""
    try:
        config = MafsConfig.from_dict(metadata["model_config"])
    except (ValueError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: invalid model_config: {exc}") from exc
    try:
        class_names = tuple(metadata["class_names"])
        palette = _check_classes(class_names, metadata["palette"], config.num_classes)
    except (CheckpointError, TypeError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    try:
        inputs = InputConventions.from_dict(metadata["input_conventions"])
    except (ValueError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: invalid input_conventions: {exc}") from exc
    trained = metadata["trained"]
    if not isinstance(trained, bool):
        raise CheckpointError(f"{path}: metadata 'trained' must be true or false, got {trained!r}")
    if not isinstance(metadata["description"], str):
        raise CheckpointError(f"{path}: metadata 'description' must be a string")
    return config, class_names, palette, inputs, trained


def _check_classes(class_names: tuple[str, ...], palette: Any, num_classes: int) -> np.ndarray:
    """Validate names and palette against num_classes; the palette as (num_classes, 3) uint8."""
    if len(class_names) != num_classes or not all(isinstance(n, str) for n in class_names):
        raise CheckpointError(
            f"class_names must be {num_classes} strings (the model's num_classes), got {len(class_names)}"
        )
    try:
        values = np.asarray(palette)
    except ValueError:  # ragged nested lists
        raise CheckpointError(f"palette must be {num_classes} RGB triples of integers 0..255") from None
    if values.shape != (num_classes, 3) or values.dtype.kind not in "iu" or values.min() < 0 or values.max() > 255:
        raise CheckpointError(f"palette must be {num_classes} RGB triples of integers 0..255, got shape {values.shape}")
    return values.astype(np.uint8)


def _check_finite(state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Raise naming the first (by name) floating tensor with NaN or inf values (CPU tensors).

    numpy, because a thousand small torch.isfinite calls cost ~1 ms each in thread overhead.
    """
    for name in sorted(state_dict):
        tensor = state_dict[name]
        if not tensor.is_floating_point():
            continue
        values = (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
        finite = np.isfinite(values)
        if not finite.all():
            bad = int(finite.size - np.count_nonzero(finite))
            raise CheckpointError(f"{source}: tensor {name!r} has {bad} non-finite value(s) (NaN/inf)")


# ---------------------------------------------------------------------------------------------------------
# Building the network


def _listing(title: str, items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = f", ... ({len(items)} in all)" if len(items) > _MAX_LISTED else ""
    return f"{len(items)} {title}: {shown}{more}"


def load_state_dict_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "state dict") -> None:
    """Load `state_dict` into `model`, requiring exactly the same keys and shapes.

    Raises CheckpointError listing missing keys, unexpected keys and shape mismatches (the first ten of
    each, with counts) before anything is copied, so the model is unchanged on error.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} != model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    problems = [
        _listing(title, items)
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
        if items
    ]
    if problems:
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)


def build_model_from_checkpoint(ckpt: Checkpoint) -> nn.Module:
    """The network of `ckpt` with its weights loaded strictly, in eval mode, on CPU."""
    model = build_model(ckpt.config)
    load_state_dict_strict(model, ckpt.state_dict, source=f"checkpoint {ckpt.path}")
    return model.eval()
