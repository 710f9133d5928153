"""The onnxruntime backend: runs an ONNX file written by `mafs export --onnx` in place of MafsNet.

MafsEngine uses it when its checkpoint is a path ending in .onnx; everything the engine needs besides the
graph (config, class names, palette, input conventions, trained flag) comes from the file's metadata (the
format is described in backends/onnx_export.py; its names and version are in mafs_ros.constants).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

# The checkpoint's own validation: the export stores the same metadata fields as a checkpoint.
from ..checkpoint import CheckpointError, parse_metadata
from ..constants import (
    ONNX_FORMAT_VERSION,
    ONNX_INPUT_NAMES,
    ONNX_METADATA_FIELDS,
    ONNX_OUTPUT_NAMES,
    ONNX_VERSION_FIELD,
)
from ..errors import ConfigurationError, InputError, UnavailableError
from ..model import MafsOutput
from .base import LoadedNet


class OnnxRuntimeNet:
    """`net(vi (B,3,H,W), ir (B,1,H,W)) -> MafsOutput(semantic, (), fused)` like an eval-mode MafsNet, run by
    an onnxruntime session on the exported graph.

    device: cpu runs the CPUExecutionProvider, cuda the CUDAExecutionProvider (the onnxruntime-gpu package).
    Tensors go in and come out on `device`; they cross to onnxruntime through host memory (numpy).
    Attributes from the file: path, config, class_names, palette, inputs, trained, and input_size: the
    (H, W) of a fixed-size export, None for a dynamic one.
    Raises CheckpointError for a file that is missing, not ONNX or not exported by mafs_ros, RuntimeError
    when onnxruntime or its CUDA provider is unavailable.
    """

    def __init__(self, path: str | Path, device: torch.device) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"ONNX model not found: {self.path}")
        try:
            import onnxruntime as ort
        except ImportError:
            raise UnavailableError(f"running {self.path} needs onnxruntime: pip install onnxruntime") from None

        self._device = device
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UnavailableError(
                    f"device {device} with an ONNX model needs onnxruntime's CUDAExecutionProvider (the "
                    f"onnxruntime-gpu package); this onnxruntime has {ort.get_available_providers()}"
                )
            providers: list = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        # The same thread budget as PyTorch's (the node and the CLI set it), not one thread per core.
        options.intra_op_num_threads = torch.get_num_threads()
        # onnxruntime's threads spin after each run by default: they would hold the cores PyTorch's threads need
        # for the engine's pre- and postprocessing (on 2 cores that doubled the postprocessing time).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # onnxruntime's errors derive from Exception only
            raise CheckpointError(f"{self.path} is not a usable ONNX model: {exc}") from exc
        # onnxruntime falls back to the CPU when the CUDA libraries fail to load; a GPU user wants to know.
        if device.type == "cuda" and "CUDAExecutionProvider" not in self._session.get_providers():
            raise UnavailableError(f"onnxruntime could not start its CUDA provider for {self.path} (see its log)")

        self.config, self.class_names, self.palette, self.inputs, self.trained = parse_metadata(
            self.path, self._read_metadata()
        )
        self.input_size, self._batch = self._check_signature()

    def _read_metadata(self) -> dict:
        raw = self._session.get_modelmeta().custom_metadata_map
        if ONNX_VERSION_FIELD not in raw:
            raise CheckpointError(
                f"{self.path} is an ONNX model but not one exported by `mafs export --onnx` (no "
                f"{ONNX_VERSION_FIELD!r} metadata); export the checkpoint with `mafs export --onnx`"
            )
        if raw[ONNX_VERSION_FIELD] != json.dumps(ONNX_FORMAT_VERSION):
            raise CheckpointError(
                f"{self.path}: unsupported mafs_ros ONNX version {raw[ONNX_VERSION_FIELD]}; this "
                f"mafs_ros reads version {ONNX_FORMAT_VERSION}"
            )
        missing = [key for key in ONNX_METADATA_FIELDS if key not in raw]
        if missing:
            raise CheckpointError(f"{self.path}: missing metadata field(s) {missing}")
        try:
            return {key: json.loads(raw[key]) for key in ONNX_METADATA_FIELDS}
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{self.path}: metadata is not valid JSON: {exc}") from exc

    def _check_signature(self) -> tuple[tuple[int, int] | None, int | None]:
        """Check the graph's inputs and outputs; return the fixed (H, W) and fixed batch size, or None for
        dynamic ones."""
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        names = (tuple(i.name for i in inputs), tuple(o.name for o in outputs))
        if names != (ONNX_INPUT_NAMES, ONNX_OUTPUT_NAMES):
            raise CheckpointError(
                f"{self.path}: inputs {list(names[0])} and outputs {list(names[1])}, expected inputs "
                f"{list(ONNX_INPUT_NAMES)} and outputs {list(ONNX_OUTPUT_NAMES)}"
            )
        channels = {"visible": 3, "thermal": 1, "fused": 1, "semantic": self.config.num_classes}
        for arg in (*inputs, *outputs):
            if len(arg.shape) != 4 or arg.shape[1] != channels[arg.name]:
                raise CheckpointError(
                    f"{self.path}: {arg.name} has shape {arg.shape}, expected (batch, {channels[arg.name]}, "
                    "height, width)"
                )
        batch, _, height, width = inputs[0].shape
        size = (height, width) if isinstance(height, int) and isinstance(width, int) else None
        return size, batch if isinstance(batch, int) else None

    def __call__(self, vi: torch.Tensor, ir: torch.Tensor) -> MafsOutput:
        size = (vi.shape[-2], vi.shape[-1])
        if self.input_size is not None and size != self.input_size:
            raise InputError(
                f"{self.path.name} was exported for {self.input_size[0]}x{self.input_size[1]} network inputs, "
                f"got {size[0]}x{size[1]}; export it at this size, or with a dynamic size (no --height/--width)"
            )
        m = self.inputs.size_multiple
        if size[0] % m or size[1] % m:
            raise InputError(f"network input {size[0]}x{size[1]} is not a multiple of {m}")
        if vi.dtype != torch.float32 or ir.dtype != torch.float32:
            raise InputError(f"the ONNX model takes float32 inputs, got {vi.dtype} and {ir.dtype}")
        feeds = {"visible": _to_numpy(vi), "thermal": _to_numpy(ir[:, :1])}
        if self._batch is None or self._batch == vi.shape[0]:
            fused, semantic = self._session.run(list(ONNX_OUTPUT_NAMES), feeds)
        elif self._batch == 1:  # a fixed-batch export: one run per pair
            runs = [
                self._session.run(list(ONNX_OUTPUT_NAMES), {name: array[i : i + 1] for name, array in feeds.items()})
                for i in range(vi.shape[0])
            ]
            fused, semantic = (np.concatenate(arrays) for arrays in zip(*runs))
        else:
            raise InputError(f"{self.path.name} was exported for batch {self._batch}, got {vi.shape[0]}")
        return MafsOutput(
            semantic=torch.from_numpy(semantic).to(self._device), aux=(), fused=torch.from_numpy(fused).to(self._device)
        )


class OnnxRuntimeBackend:
    """`source`: the path of an .onnx file. fp32 only (onnxruntime runs the exported fp32 graph); the graph is
    already folded at export, so neither `optimize` nor `compile_mode` applies."""

    name = "onnxruntime"
    suffixes = (".onnx",)

    def load(
        self, source: Any, device: torch.device, *, precision: str, optimize: bool | None, compile_mode: str
    ) -> LoadedNet:
        refuse_torch_options(precision, compile_mode, "an ONNX model",
                             "use fp32, or build a TensorRT engine for fp16 (docs/PERFORMANCE.md)")
        if optimize:
            raise ConfigurationError("optimize does not apply to an ONNX model (BatchNorm is folded at export)")
        net = OnnxRuntimeNet(source, device)
        return LoadedNet(
            net=net, backend=self.name, config=net.config, class_names=net.class_names, palette=net.palette,
            inputs=net.inputs, trained=net.trained, path=net.path, optimized=False,
        )


def refuse_torch_options(precision: str, compile_mode: str, what: str, hint: str) -> None:
    """ConfigurationError for the PyTorch-only engine options with `what` (onnxruntime runs an fp32 graph and
    compiles it itself); `hint` says what to do instead."""
    if precision != "fp32":
        raise ConfigurationError(f"precision {precision!r} is not available with {what} (fp32 only: onnxruntime "
                                 f"runs an fp32 graph); {hint}")
    if compile_mode != "none":
        raise ConfigurationError(f"compile_mode does not apply to {what}; {hint}")


def _to_numpy(x: torch.Tensor) -> np.ndarray:
    # onnxruntime takes C-contiguous arrays; the engine's tensors may be channels-last
    return x.detach().cpu().contiguous().numpy()
