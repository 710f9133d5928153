"""ONNX export of a MAFS checkpoint (`mafs export --onnx`) and its check against PyTorch.

The exported graph is the network only:

    visible (B,3,H,W), thermal (B,1,H,W): float32 in [0, 1] at the network size (H, W multiples of 32)
    -> fused (B,1,H,W) luminance in [0, 1], semantic (B,C,H,W) logits

Thermal normalisation, resizing to a multiple of 32, colour restoration and argmax stay in MafsEngine, which
runs such a file through its onnxruntime backend (give the engine the .onnx path as its checkpoint).

Before tracing, BatchNorm is folded into the convolutions and the INN's invertible 1x1 convolutions are
frozen to plain convolutions (their weight is rebuilt from LU factors with torch.diag, which the exporter
cannot convert; at inference it is a constant).

Sizes: the model decides with Python shape comparisons whether to resize a tensor (`resize_to`,
`upsample_to`, the seg head's x2); the tracer records their outcome as constants. At every multiple of the
checkpoint's size_multiple (32) all of them come out the same way, so one graph with dynamic height and width
is exact at any multiple of 32 (the tests run it at sizes other than the traced one). At other sizes it is
wrong: onnxruntime fails with a broadcast error, and OnnxRuntimeNet refuses such inputs beforehand.

Exporter: the TorchScript-based `torch.onnx.export(..., dynamo=False)`. The torch.export-based default needs
the onnxscript package, which is not a dependency. PyTorch marks the TorchScript exporter deprecated (and
says so in a DeprecationWarning), but it is the one that works with the pinned dependencies.

Metadata (the model's metadata_props, every value JSON-encoded), so the .onnx file alone is enough:

    mafs_ros_onnx_version     1                      ONNX_FORMAT_VERSION; other versions are refused
    model_config, class_names, palette, input_conventions, trained, description
                                                     as in a checkpoint (see checkpoint.py); input_conventions
                                                     holds the thermal normalisation and size_multiple
    source_checkpoint         "mafs-lite.safetensors" file name of the exported checkpoint
    source_checkpoint_sha256  "hex"                  SHA-256 of that file's bytes
    mafs_ros_version          "0.1.0"                package version that exported it (informative)
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__
from .backends.onnxruntime_backend import OnnxRuntimeNet
from .checkpoint import Checkpoint, build_model_from_checkpoint, load_checkpoint
from .constants import (
    ONNX_DEFAULT_OPSET,
    ONNX_FORMAT_VERSION,
    ONNX_INPUT_NAMES,
    ONNX_MAX_OPSET,
    ONNX_MIN_OPSET,
    ONNX_OUTPUT_NAMES,
    ONNX_VERSION_FIELD,
)
from .engine import MafsEngine
from .model.fusion_decoder import InvertibleConv1x1
from .model.inference import fuse_conv_bn

logger = logging.getLogger(__name__)


class OnnxVerificationError(RuntimeError):
    """onnxruntime's outputs differ from PyTorch's by more than the tolerance; the message has the numbers."""


class ExportedNet(nn.Module):
    """What the ONNX graph computes: MafsNet's inference outputs as a (fused, semantic) tuple."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, visible: torch.Tensor, thermal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(visible, thermal, with_aux=False)
        return out.fused, out.semantic


def freeze_invertible_convs(model: nn.Module) -> int:
    """Replace every InvertibleConv1x1 by a bias-free 1x1 Conv2d holding its current weight matrix; returns
    how many. Inference only: the LU parameters are gone, so the model can no longer be trained or saved."""
    frozen = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, InvertibleConv1x1):
                with torch.no_grad():
                    weight = child.weight_matrix()
                conv = nn.Conv2d(weight.shape[1], weight.shape[0], 1, bias=False)
                conv.weight = nn.Parameter(weight[:, :, None, None].clone(), requires_grad=False)
                setattr(module, name, conv)
                frozen += 1
    return frozen


def export_onnx(
    checkpoint: str | Path | None,
    out: str | Path,
    *,
    height: int | None = None,
    width: int | None = None,
    opset: int = ONNX_DEFAULT_OPSET,
    dynamic_batch: bool = True,
) -> Path:
    """Export `checkpoint` (None: the packaged default) to the ONNX file `out` and return its path.

    height, width: a fixed network input size (positive multiples of the checkpoint's size_multiple); neither:
    dynamic height and width (any multiple). dynamic_batch: a dynamic batch axis, else batch 1.
    The file is written atomically. Raises CheckpointError for an unusable checkpoint, ValueError for bad
    arguments, RuntimeError without the onnx package or when the exporter fails.
    """
    if not ONNX_MIN_OPSET <= opset <= ONNX_MAX_OPSET:
        raise ValueError(f"opset must be within {ONNX_MIN_OPSET}..{ONNX_MAX_OPSET}, got {opset}")
    if (height is None) != (width is None):
        raise ValueError("give both height and width (a fixed size) or neither (dynamic size)")
    try:
        import onnx
    except ImportError:
        raise RuntimeError("ONNX export needs the onnx package: pip install 'mafs_ros[onnx]'") from None

    out = Path(out)
    ckpt = load_checkpoint(checkpoint)
    size = _trace_size(ckpt.inputs.size_multiple, height, width)
    start = time.perf_counter()
    model = onnx.load_model_from_string(_traced_graph(ckpt, size, opset, dynamic_size=height is None,
                                                      dynamic_batch=dynamic_batch))
    onnx.helper.set_model_props(model, _metadata(ckpt))
    onnx.checker.check_model(model)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        onnx.save_model(model, str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info(
        "exported %s to %s (opset %d, %s, %s batch) in %.1f s",
        ckpt.path, out, opset, "dynamic size" if height is None else f"{height}x{width}",
        "dynamic" if dynamic_batch else "fixed 1", time.perf_counter() - start,
    )
    return out


def _trace_size(m: int, height: int | None, width: int | None) -> tuple[int, int]:
    """The network input size to trace at: the fixed size, checked to be positive multiples of `m` (the
    network's stride), or for a dynamic size a small one."""
    if height is not None and width is not None:
        if min(height, width) < m or height % m or width % m:
            raise ValueError(f"height and width must be positive multiples of {m} (the network's stride), "
                             f"got {height}x{width}")
        return height, width
    # Any multiple of m traces the same graph (see the module docstring): a small one exports fast, and
    # a non-square one keeps a swapped height and width from going unnoticed.
    return 2 * m, 3 * m


def _traced_graph(ckpt: Checkpoint, size: tuple[int, int], opset: int, *, dynamic_size: bool,
                  dynamic_batch: bool) -> bytes:
    """The checkpoint's network, folded and frozen for inference, traced at `size` to a serialized ONNX model."""
    net = build_model_from_checkpoint(ckpt)
    fuse_conv_bn(net)
    freeze_invertible_convs(net)
    exported = ExportedNet(net).eval()
    # Batch 2 when the batch is dynamic, so that no size-1 broadcast gets baked into the graph.
    batch = 2 if dynamic_batch else 1
    example = (torch.rand(batch, 3, *size), torch.rand(batch, 1, *size))
    axes: dict[int, str] = {}
    if dynamic_batch:
        axes[0] = "batch"
    if dynamic_size:
        axes.update({2: "height", 3: "width"})
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # Expected: the shape comparisons recorded as constants (see the module docstring), and InstanceNorm
        # "exported with train=True", which is what InstanceNorm2d without running statistics computes in
        # eval mode too (the statistics of each image).
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*'instance_norm' is set to train=True")
        torch.onnx.export(
            exported,
            example,
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=list(ONNX_INPUT_NAMES),
            output_names=list(ONNX_OUTPUT_NAMES),
            dynamic_axes={name: axes for name in ONNX_INPUT_NAMES + ONNX_OUTPUT_NAMES} if axes else None,
        )
    return buffer.getvalue()


def _metadata(ckpt: Checkpoint) -> dict[str, str]:
    """The metadata_props of the module docstring for a loaded Checkpoint."""
    values = {
        ONNX_VERSION_FIELD: ONNX_FORMAT_VERSION,
        "model_config": ckpt.config.to_dict(),
        "class_names": list(ckpt.class_names),
        "palette": ckpt.palette.tolist(),
        "input_conventions": ckpt.inputs.to_dict(),
        "trained": ckpt.trained,
        "description": ckpt.description,
        "source_checkpoint": ckpt.path.name,
        "source_checkpoint_sha256": _file_sha256(ckpt.path),
        "mafs_ros_version": __version__,
    }
    return {key: json.dumps(value) for key, value in values.items()}


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_onnx(
    onnx_path: str | Path,
    checkpoint: str | Path | None,
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    atol: float = 1e-4,
) -> dict[str, Any]:
    """Run onnxruntime (CPU) and PyTorch fp32 (CPU) on the network inputs MafsEngine makes of each (rgb,
    thermal) pair and compare the raw outputs.

    The tolerance of an output is atol times its largest magnitude, at least 1: plain atol for the fused
    luminance (within [0, 1]), relative for the semantic logits (magnitudes around 30 for a trained model,
    where two fp32 libraries differ by up to about 2e-4: PyTorch's own fp32 logits differ from fp64 by
    about 7e-5 there). Returns {"pairs", "size" (the last pair's network size), "max_abs_error",
    "max_abs_value", "tolerance" (each per output name), "torch_ms", "onnxruntime_ms" (the fastest single
    forward over the pairs)}. Raises OnnxVerificationError when an output is beyond its tolerance, ValueError
    for unusable pairs (including sizes a fixed-size export does not take).
    """
    if not pairs:
        raise ValueError("verify_onnx needs at least one (rgb, thermal) pair")
    engine = MafsEngine(checkpoint, device="cpu")
    onnx_net = OnnxRuntimeNet(onnx_path, torch.device("cpu"))
    if onnx_net.config != engine.config:
        raise OnnxVerificationError(
            f"{onnx_path} holds {onnx_net.config.name!r} with a different configuration than checkpoint "
            f"{engine.checkpoint_path}; was it exported from another checkpoint?"
        )
    errors = dict.fromkeys(ONNX_OUTPUT_NAMES, 0.0)
    magnitudes = dict.fromkeys(ONNX_OUTPUT_NAMES, 0.0)
    torch_ms, onnx_ms = [], []
    size: tuple[int, int] = (0, 0)
    for rgb, thermal in pairs:
        vi, ir = engine.network_inputs([(rgb, thermal)])
        size = (vi.shape[-2], vi.shape[-1])
        with torch.inference_mode():
            start = time.perf_counter()
            reference = engine.model(vi, ir)
            torch_ms.append((time.perf_counter() - start) * 1e3)
            start = time.perf_counter()
            candidate = onnx_net(vi, ir)
            onnx_ms.append((time.perf_counter() - start) * 1e3)
        for name in ONNX_OUTPUT_NAMES:
            expected, actual = getattr(reference, name), getattr(candidate, name)
            errors[name] = max(errors[name], (actual - expected).abs().max().item())
            magnitudes[name] = max(magnitudes[name], expected.abs().max().item())
    tolerance = {name: atol * max(1.0, magnitudes[name]) for name in ONNX_OUTPUT_NAMES}
    report = {
        "pairs": len(pairs),
        "size": size,
        "max_abs_error": errors,
        "max_abs_value": magnitudes,
        "tolerance": tolerance,
        "torch_ms": min(torch_ms),
        "onnxruntime_ms": min(onnx_ms),
    }
    failed = [name for name in ONNX_OUTPUT_NAMES if not errors[name] <= tolerance[name]]
    if failed:
        details = ", ".join(f"{name} {errors[name]:.3g} > {tolerance[name]:.3g}" for name in failed)
        raise OnnxVerificationError(f"{onnx_path}: onnxruntime differs from PyTorch beyond the tolerance "
                                    f"({details}) on {len(pairs)} pair(s) at {size[0]}x{size[1]}")
    return report
