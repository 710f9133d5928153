"""`mafs export --onnx`: the export (backends/onnx_export.py, shared with the onnxruntime backend's cache) and
its check against PyTorch on real pairs, prepared exactly as MafsEngine prepares them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .backends.onnx_export import OnnxVerificationError, compare_outputs, export_onnx
from .backends.onnxruntime_backend import OnnxRuntimeNet
from .engine import MafsEngine

__all__ = ["OnnxVerificationError", "export_onnx", "verify_onnx"]


def verify_onnx(
    onnx_path: str | Path,
    checkpoint: str | Path | None,
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    atol: float = 1e-4,
) -> dict[str, Any]:
    """Run onnxruntime (CPU) and PyTorch fp32 (CPU) on the network inputs MafsEngine makes of each (rgb,
    thermal) pair and compare the raw outputs (`compare_outputs`: its tolerances and report). Raises
    OnnxVerificationError when an output is beyond its tolerance or the file holds another configuration,
    ValueError for unusable pairs (including sizes a fixed-size export does not take).
    """
    if not pairs:
        raise ValueError("verify_onnx needs at least one (rgb, thermal) pair")
    engine = MafsEngine(checkpoint, device="cpu", backend="torch")
    onnx_net = OnnxRuntimeNet(onnx_path, torch.device("cpu"))
    if onnx_net.config != engine.config:
        raise OnnxVerificationError(
            f"{onnx_path} holds {onnx_net.config.name!r} with a different configuration than checkpoint "
            f"{engine.checkpoint_path}; was it exported from another checkpoint?"
        )
    inputs = [engine.network_inputs([pair]) for pair in pairs]
    return compare_outputs(engine.model, onnx_net, inputs, str(onnx_path), atol)
