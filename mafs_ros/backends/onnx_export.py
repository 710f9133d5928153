"""ONNX export of a MAFS checkpoint (`mafs export --onnx`, the onnxruntime backend's cache) and the comparison of
its outputs with PyTorch's.

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

import copy
import hashlib
import io
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..checkpoint import InputConventions, build_model_from_checkpoint, load_checkpoint
from ..constants import (
    ONNX_DEFAULT_OPSET,
    ONNX_FORMAT_VERSION,
    ONNX_INPUT_NAMES,
    ONNX_MAX_OPSET,
    ONNX_MIN_OPSET,
    ONNX_OUTPUT_NAMES,
    ONNX_VERSION_FIELD,
)
from ..errors import ConfigurationError, MafsError, UnavailableError
from ..model import MafsConfig
from ..model.fusion_decoder import InvertibleConv1x1
from ..model.inference import fuse_conv_bn

logger = logging.getLogger(__name__)


class OnnxVerificationError(MafsError, RuntimeError):
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
    if (height is None) != (width is None):
        raise ConfigurationError("give both height and width (a fixed size) or neither (dynamic size)")
    if not ONNX_MIN_OPSET <= opset <= ONNX_MAX_OPSET:
        raise ConfigurationError(f"opset must be within {ONNX_MIN_OPSET}..{ONNX_MAX_OPSET}, got {opset}")
    ckpt = load_checkpoint(checkpoint)
    metadata = metadata_props(
        ckpt.config, ckpt.class_names, ckpt.palette, ckpt.inputs, ckpt.trained, ckpt.description,
        source=ckpt.path.name, source_sha256=file_sha256(ckpt.path),
    )
    start = time.perf_counter()
    save_onnx(
        onnx_graph(build_model_from_checkpoint(ckpt), metadata, _trace_size(ckpt.inputs.size_multiple, height, width),
                   opset, dynamic_size=height is None, dynamic_batch=dynamic_batch),
        Path(out),
    )
    logger.info(
        "exported %s to %s (opset %d, %s, %s batch) in %.1f s",
        ckpt.path, out, opset, "dynamic size" if height is None else f"{height}x{width}",
        "dynamic" if dynamic_batch else "fixed 1", time.perf_counter() - start,
    )
    return Path(out)


def onnx_graph(net: nn.Module, metadata: dict[str, str], size: tuple[int, int], opset: int = ONNX_DEFAULT_OPSET, *,
               dynamic_size: bool, dynamic_batch: bool) -> Any:
    """A checked onnx.ModelProto of `net` (not modified: a copy is folded and frozen) traced at `size`, with
    `metadata` (`metadata_props`). Raises RuntimeError without the onnx package, ValueError for a bad opset."""
    if not ONNX_MIN_OPSET <= opset <= ONNX_MAX_OPSET:
        raise ConfigurationError(f"opset must be within {ONNX_MIN_OPSET}..{ONNX_MAX_OPSET}, got {opset}")
    try:
        import onnx
    except ImportError:
        raise UnavailableError("ONNX export needs the onnx package: pip install onnx") from None
    model = onnx.load_model_from_string(_traced_graph(copy.deepcopy(net), size, opset, dynamic_size=dynamic_size,
                                                      dynamic_batch=dynamic_batch))
    onnx.helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    return model


def save_onnx(model: Any, out: Path) -> None:
    """Write an onnx.ModelProto to `out` atomically (a reader never sees half a file)."""
    import onnx

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        onnx.save_model(model, str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _trace_size(m: int, height: int | None, width: int | None) -> tuple[int, int]:
    """The network input size to trace at: the fixed size, checked to be positive multiples of `m` (the
    network's stride), or for a dynamic size a small one."""
    if height is not None and width is not None:
        if min(height, width) < m or height % m or width % m:
            raise ConfigurationError(f"height and width must be positive multiples of {m} (the network's stride), "
                             f"got {height}x{width}")
        return height, width
    # Any multiple of m traces the same graph (see the module docstring): a small one exports fast, and
    # a non-square one keeps a swapped height and width from going unnoticed.
    return 2 * m, 3 * m


def _traced_graph(net: nn.Module, size: tuple[int, int], opset: int, *, dynamic_size: bool,
                  dynamic_batch: bool) -> bytes:
    """`net`, folded and frozen for inference (in place), traced at `size` to a serialized ONNX model."""
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


def metadata_props(config: MafsConfig, class_names: Sequence[str], palette: np.ndarray, inputs: InputConventions,
                   trained: bool | None, description: str, *, source: str, source_sha256: str) -> dict[str, str]:
    """The metadata_props of the module docstring (`source`: the exported checkpoint's file name)."""
    values = {
        ONNX_VERSION_FIELD: ONNX_FORMAT_VERSION,
        "model_config": config.to_dict(),
        "class_names": list(class_names),
        "palette": np.asarray(palette).tolist(),
        "input_conventions": inputs.to_dict(),
        "trained": trained,
        "description": description,
        "source_checkpoint": source,
        "source_checkpoint_sha256": source_sha256,
        "mafs_ros_version": __version__,
    }
    return {key: json.dumps(value) for key, value in values.items()}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def compare_outputs(
    reference: Callable[[torch.Tensor, torch.Tensor], Any],
    candidate: Callable[[torch.Tensor, torch.Tensor], Any],
    inputs: Sequence[tuple[torch.Tensor, torch.Tensor]],
    name: str,
    atol: float = 1e-4,
) -> dict[str, Any]:
    """Run PyTorch's network (`reference`) and onnxruntime's (`candidate`) on each (visible, thermal) network
    input and compare the raw outputs.

    The tolerance of an output is atol times its largest magnitude, at least 1: plain atol for the fused
    luminance (within [0, 1]), relative for the semantic logits (magnitudes around 30 for a trained model,
    where two fp32 libraries differ by up to about 2e-4: PyTorch's own fp32 logits differ from fp64 by
    about 7e-5 there). Returns {"pairs", "size" (the last input's size), "max_abs_error", "max_abs_value",
    "tolerance" (each per output name), "torch_ms", "onnxruntime_ms" (the fastest single forward)}. Raises
    OnnxVerificationError naming `name` (the ONNX file) when an output is beyond its tolerance.
    """
    errors = dict.fromkeys(ONNX_OUTPUT_NAMES, 0.0)
    magnitudes = dict.fromkeys(ONNX_OUTPUT_NAMES, 0.0)
    torch_ms, onnx_ms = [], []
    size: tuple[int, int] = (0, 0)
    for vi, ir in inputs:
        size = (vi.shape[-2], vi.shape[-1])
        with torch.inference_mode():
            start = time.perf_counter()
            expected_out = reference(vi, ir)
            torch_ms.append((time.perf_counter() - start) * 1e3)
            start = time.perf_counter()
            actual_out = candidate(vi, ir)
            onnx_ms.append((time.perf_counter() - start) * 1e3)
        for output in ONNX_OUTPUT_NAMES:
            expected, actual = getattr(expected_out, output), getattr(actual_out, output)
            errors[output] = max(errors[output], (actual - expected).abs().max().item())
            magnitudes[output] = max(magnitudes[output], expected.abs().max().item())
    tolerance = {output: atol * max(1.0, magnitudes[output]) for output in ONNX_OUTPUT_NAMES}
    report = {
        "pairs": len(inputs), "size": size, "max_abs_error": errors, "max_abs_value": magnitudes,
        "tolerance": tolerance, "torch_ms": min(torch_ms), "onnxruntime_ms": min(onnx_ms),
    }
    failed = [output for output in ONNX_OUTPUT_NAMES if not errors[output] <= tolerance[output]]
    if failed:
        details = ", ".join(f"{output} {errors[output]:.3g} > {tolerance[output]:.3g}" for output in failed)
        raise OnnxVerificationError(f"{name}: onnxruntime differs from PyTorch beyond the tolerance "
                                    f"({details}) on {len(inputs)} input(s) at {size[0]}x{size[1]}")
    return report
