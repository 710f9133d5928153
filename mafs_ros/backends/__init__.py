"""How MafsEngine runs a network: one backend per kind of model file, behind the small `Backend` protocol
(`base`), in the manner of rosbags' storage plugins.

    torch_backend        mafs_ros checkpoints (.safetensors) and built models, eager or torch.compile'd
    onnxruntime_cache    the same checkpoints run in onnxruntime from graphs exported and checked on first use
                         (the default on a CPU)
    onnxruntime_backend  .onnx files written by `mafs export --onnx`

The engine keeps everything around the network (devices, precision, pre- and post-processing); a backend only
loads the network and says what it is. To add one, write a class with `name`, `suffixes` and `load` and add an
instance to `BACKENDS`. `select_backend` says which one runs what.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..constants import BACKEND_NAMES
from ..errors import ConfigurationError
from .base import Backend, LoadedNet
from .onnxruntime_backend import OnnxRuntimeBackend
from .onnxruntime_cache import CachedOnnxRuntimeBackend
from .torch_backend import TorchBackend

TORCH = TorchBackend()
ONNXRUNTIME = CachedOnnxRuntimeBackend()
ONNX_FILE = OnnxRuntimeBackend()
BACKENDS: tuple[Backend, ...] = (TORCH, ONNXRUNTIME, ONNX_FILE)

__all__ = ["BACKENDS", "BACKEND_NAMES", "Backend", "LoadedNet", "default_backend", "select_backend"]


def default_backend(device: torch.device, precision: str, compile_mode: str) -> str:
    """What `auto` runs a checkpoint with: onnxruntime for fp32 on a CPU (faster there, and checked against
    PyTorch), PyTorch otherwise (CUDA, bf16 autocast, torch.compile) or where onnxruntime is not installed."""
    if device.type != "cpu" or precision != "fp32" or compile_mode != "none":
        return "torch"
    return "onnxruntime" if importlib.util.find_spec("onnxruntime") is not None else "torch"


def select_backend(source: Any, requested: str, device: torch.device, precision: str, compile_mode: str) -> Backend:
    """The backend that runs `source` (a model file path, a loaded `Checkpoint`, a built model, or None: the
    packaged checkpoint) for backend name `requested` (BACKEND_NAMES). An .onnx file always runs in
    onnxruntime; a built model, which the caller may go on training, in PyTorch unless 'onnxruntime' is asked
    for. Raises ValueError for an unknown name or a file the requested backend cannot run."""
    if requested not in BACKEND_NAMES:
        raise ConfigurationError(f"unknown backend {requested!r}; known: {', '.join(BACKEND_NAMES)}")
    if isinstance(source, (str, Path)) and Path(source).suffix.lower() in ONNX_FILE.suffixes:
        if requested == "torch":
            raise ConfigurationError(f"{source} is an ONNX file: it runs with backend 'onnxruntime' (or 'auto'), not 'torch'")
        return ONNX_FILE
    if requested == "auto":
        requested = "torch" if isinstance(source, nn.Module) else default_backend(device, precision, compile_mode)
    return ONNXRUNTIME if requested == "onnxruntime" else TORCH
