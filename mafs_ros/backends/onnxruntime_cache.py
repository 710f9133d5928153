"""The onnxruntime backend for a mafs_ros checkpoint: the default on a CPU, where onnxruntime runs the same
weights about twice as fast as PyTorch's eager forward (README, performance).

The network is exported to ONNX (backends/onnx_export.py) once per checkpoint, network input size and
onnxruntime version, at the first forward of each size (the engine's warm-up does it at start-up for the
expected size). Each export is checked against PyTorch on a seeded input of that size with the tolerances of
`mafs export` (`compare_outputs`) before it is used, and kept in the cache folder:

    $MAFS_ROS_CACHE, else $XDG_CACHE_HOME/mafs_ros, else ~/.cache/mafs_ros; under it onnx/NAME.onnx and NAME.json

NAME holds the configuration, the size and a hash of everything the graph depends on: the checkpoint's bytes
(for a model given in memory, its weights), the model code, the onnxruntime, torch and mafs_ros versions and
the ONNX format. The .json records the check and the SHA-256 of the .onnx file; an entry whose .json is
missing, unreadable, of another key or whose .onnx does not match it, or that onnxruntime cannot load, is
rebuilt, never trusted. Deleting the folder is always safe.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..checkpoint import CheckpointError
from ..constants import ONNX_DEFAULT_OPSET, ONNX_FORMAT_VERSION
from ..errors import UnavailableError
from ..model import MafsOutput
from .base import LoadedNet
from .onnx_export import compare_outputs, file_sha256, metadata_props, onnx_graph, save_onnx
from .onnxruntime_backend import OnnxRuntimeNet, refuse_torch_options
from .torch_backend import TorchBackend

logger = logging.getLogger(__name__)

CACHE_ENV = "MAFS_ROS_CACHE"
MODEL_CODE = Path(__file__).resolve().parent.parent / "model"


def cache_dir() -> Path:
    """The folder of the exported graphs (see the module docstring)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / "onnx"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mafs_ros" / "onnx"


def _model_code_digest() -> str:
    """A hash of the model package's source: a graph exported by other model code is another graph."""
    digest = hashlib.sha256()
    for path in sorted(MODEL_CODE.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def _weights_digest(net: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in net.state_dict().items():
        digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class CachedOnnxRuntimeNet:
    """`net(vi, ir) -> MafsOutput` like the PyTorch network of `loaded` (an eval-mode LoadedNet on the CPU), run
    in onnxruntime from a graph exported per network input size (module docstring). Exporting needs the onnx
    package; running, onnxruntime."""

    def __init__(self, loaded: LoadedNet, weights_sha256: str, device: torch.device, folder: Path | None = None) -> None:
        import onnxruntime

        self._loaded = loaded
        self._device = device
        self._folder = folder or cache_dir()
        self._key = {
            "weights_sha256": weights_sha256, "model_code": _model_code_digest(), "onnx_format": ONNX_FORMAT_VERSION,
            "opset": ONNX_DEFAULT_OPSET, "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
            "mafs_ros": __version__,
        }
        self._sessions: dict[tuple[int, int], OnnxRuntimeNet] = {}

    def __call__(self, vi: torch.Tensor, ir: torch.Tensor) -> MafsOutput:
        size = (int(vi.shape[-2]), int(vi.shape[-1]))
        if size not in self._sessions:
            self._sessions[size] = self._session(size)
        return self._sessions[size](vi, ir)

    def entry(self, size: tuple[int, int]) -> tuple[Path, Path, dict[str, Any]]:
        """The .onnx and .json paths of the cache entry for network input `size`, and its key."""
        key = {**self._key, "size": list(size)}
        name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        stem = f"{self._loaded.config.name}-{size[0]}x{size[1]}-{name}"
        return self._folder / f"{stem}.onnx", self._folder / f"{stem}.json", key

    def _session(self, size: tuple[int, int]) -> OnnxRuntimeNet:
        onnx_path, record_path, key = self.entry(size)
        problem = self._stale(onnx_path, record_path, key)
        if problem is None:
            try:
                net = OnnxRuntimeNet(onnx_path, self._device)
                logger.info("onnxruntime: %s from the cache %s", self._loaded.config.name, onnx_path)
                return net
            except CheckpointError as exc:
                problem = str(exc)
        if onnx_path.exists() or record_path.exists():
            logger.warning("rebuilding the cached ONNX graph %s: %s", onnx_path, problem)
        return self._build(size, onnx_path, record_path, key)

    @staticmethod
    def _stale(onnx_path: Path, record_path: Path, key: dict[str, Any]) -> str | None:
        """Why the cache entry cannot be used, or None."""
        if not onnx_path.is_file() or not record_path.is_file():
            return "not in the cache"
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError) as exc:
            return f"unreadable record {record_path}: {exc}"
        if not isinstance(record, dict) or record.get("key") != key:
            return "its record was made for another checkpoint, size or version"
        if record.get("onnx_sha256") != file_sha256(onnx_path):
            return "the .onnx file is not the one that was checked"
        return None

    def _build(self, size: tuple[int, int], onnx_path: Path, record_path: Path, key: dict[str, Any]) -> OnnxRuntimeNet:
        loaded = self._loaded
        start = time.perf_counter()
        # The file's own description; the engine keeps the LoadedNet's (a model in memory has trained None, which
        # the ONNX format has no value for).
        metadata = metadata_props(loaded.config, loaded.class_names, loaded.palette, loaded.inputs, bool(loaded.trained),
                                  f"{loaded.config.name}, exported for the onnxruntime backend",
                                  source=loaded.path.name if loaded.path else "", source_sha256=key["weights_sha256"])
        graph = onnx_graph(loaded.net, metadata, size, ONNX_DEFAULT_OPSET, dynamic_size=False, dynamic_batch=True)
        try:
            self._folder.mkdir(parents=True, exist_ok=True)
            save_onnx(graph, onnx_path)
        except OSError as exc:
            folder = Path(tempfile.mkdtemp(prefix="mafs_ros_onnx_"))
            logger.warning("cannot write the ONNX cache %s (%s); using %s for this run (set %s to a writable "
                           "folder)", self._folder, exc, folder, CACHE_ENV)
            self._folder = folder
            onnx_path, record_path, key = self.entry(size)
            save_onnx(graph, onnx_path)
        net = OnnxRuntimeNet(onnx_path, self._device)
        generator = torch.Generator().manual_seed(0)
        inputs = [(torch.rand(1, 3, *size, generator=generator), torch.rand(1, 1, *size, generator=generator))]
        report = compare_outputs(loaded.net, net, inputs, str(onnx_path))
        record = {"key": key, "onnx_sha256": file_sha256(onnx_path), "check": report,
                  "source": str(loaded.path) if loaded.path else "a model given in memory"}
        tmp = record_path.with_name(f".{record_path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, record_path)
        logger.info("onnxruntime: exported %s at %dx%d and checked it against PyTorch in %.1f s (largest logit "
                    "difference %.2g); cached as %s", loaded.config.name, size[0], size[1],
                    time.perf_counter() - start, report["max_abs_error"]["semantic"], onnx_path)
        return net


class CachedOnnxRuntimeBackend:
    """Backend 'onnxruntime' for a checkpoint (or a built model): fp32 on the CPU or, with onnxruntime-gpu, CUDA.
    `optimize` and `compile_mode` do not apply (the exported graph is folded, and onnxruntime optimises it)."""

    name = "onnxruntime"
    suffixes: tuple[str, ...] = ()  # chosen by name (`backend`), not by file suffix

    def load(
        self, source: Any, device: torch.device, *, precision: str, optimize: bool | None, compile_mode: str
    ) -> LoadedNet:
        refuse_torch_options(precision, compile_mode, "backend 'onnxruntime'", "use backend 'torch'")
        if importlib.util.find_spec("onnxruntime") is None:
            raise UnavailableError("backend 'onnxruntime' needs onnxruntime: pip install onnxruntime onnx")
        loaded = TorchBackend().load(source, torch.device("cpu"), precision="fp32", optimize=False,
                                     compile_mode="none")
        weights = file_sha256(loaded.path) if loaded.path is not None else _weights_digest(loaded.net)
        net = CachedOnnxRuntimeNet(loaded, weights, device)
        return dataclasses.replace(loaded, net=net, backend=self.name, optimized=False)
