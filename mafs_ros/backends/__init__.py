"""How MafsEngine runs a network: one backend per kind of model file, behind the small `Backend` protocol
(`base`), in the manner of rosbags' storage plugins.

    torch_backend        mafs_ros checkpoints (.safetensors) and built models, eager or torch.compile'd
    onnxruntime_backend  .onnx files written by `mafs export --onnx`

The engine keeps everything around the network (devices, precision, pre- and post-processing); a backend only
loads the network and says what it is. To add one, write a class with `name`, `suffixes` and `load` and add an
instance to `BACKENDS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import Backend, LoadedNet
from .onnxruntime_backend import OnnxRuntimeBackend
from .torch_backend import TorchBackend

TORCH = TorchBackend()
BACKENDS: tuple[Backend, ...] = (TORCH, OnnxRuntimeBackend())

__all__ = ["BACKENDS", "Backend", "LoadedNet", "backend_for"]


def backend_for(source: Any) -> Backend:
    """The backend of a model file by its suffix (.onnx: onnxruntime); PyTorch for anything else: a checkpoint
    file, a loaded `Checkpoint`, a built model, or None (the packaged checkpoint)."""
    if isinstance(source, (str, Path)):
        suffix = Path(source).suffix.lower()
        for backend in BACKENDS:
            if suffix in backend.suffixes:
                return backend
    return TORCH
