"""MafsEngine: numpy images in, fused image + labels out. It owns the device, the precision and the pre- and
post-processing around the network; a backend (`mafs_ros.backends`: PyTorch or onnxruntime) loads and runs the
network itself. The CLI, the ROS node, replay, evaluation and the benchmarks infer through it.

Pipeline for one (visible, thermal) pair of size H x W:

    visible uint8 RGB (H,W,3) -> float [0,1] (1,3,H,W) on the device -> (Y, Cb, Cr) at H x W
    thermal (H,W) uint8/uint16/float -> ThermalNormalization -> float [0,1] (1,1,H,W) on the device
    -> network input size: `resize` (default, the official test protocol): PIL-like bicubic to
       the largest multiple of 32 not exceeding H x W; `pad`: reflect-pad bottom/right to the next multiple
    -> model(vi, ir) -> fused Y, semantic logits at the network size
    -> back to H x W (resize: bicubic for Y, bilinear for logits; pad: crop)
    -> fused RGB = YCbCr->RGB(fused Y, Cb and Cr of the *original-resolution* visible image); labels =
       argmax of the logits (uint8); confidence = max softmax probability.

Colour convention: the official fusion.py restores colour at the network size with the resized visible
Cb/Cr and then resizes the RGB result back. We resize only the fused Y back and combine it with the
full-resolution Cb/Cr, which keeps the visible image's chroma detail. At sizes that are multiples of 32
(MSRS, MFNet: 480x640) nothing is resized and both give the same image.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backends import LoadedNet, select_backend
from .checkpoint import Checkpoint
from .class_sets import IGNORE_LABEL
from .constants import COMPILE_MODES, PRECISION_NAMES, SIZE_POLICIES
from .errors import ConfigurationError, InputError, UnavailableError
from .imaging import THERMAL_DTYPES, ThermalAgc, ThermalNormalization, overlay, rgb_to_ycbcr, to_uint8, ycbcr_to_rgb
from .model import MafsConfig

logger = logging.getLogger(__name__)

# The autocast dtype of each precision (None: no autocast).
AUTOCAST_DTYPES = dict(zip(PRECISION_NAMES, (None, torch.float16, torch.bfloat16)))


@dataclass
class FusionResult:
    """The engine's output for one pair, all at the input resolution H x W.

    fused_rgb:  (H, W, 3) uint8 RGB, fused luminance with the visible image's chroma.
    fused_y:    (H, W) uint8 fused luminance.
    labels:     (H, W) uint8 class ids 0..num_classes-1 (255 is reserved for "ignore", never predicted).
    confidence: (H, W) float32 max softmax probability in [0, 1], or None if not requested.
    overlay:    (H, W, 3) uint8 label colours blended over fused_rgb, or None if not requested.
    timings:    milliseconds: preprocess_ms, inference_ms, postprocess_ms (for a batch: the batch's time
                divided by its size).
    thermal_span: the share of [0, 1] the normalised thermal input spans (1st to 99th percentile): a few
                percent means the thermal normalisation does not suit the camera (raw 16-bit counts under
                "fixed"), and the thermal image hardly reaches the network.
    """

    fused_rgb: np.ndarray
    fused_y: np.ndarray
    labels: np.ndarray
    confidence: np.ndarray | None
    overlay: np.ndarray | None
    timings: dict[str, float]
    thermal_span: float | None = None


def resolve_device(spec: str | torch.device) -> torch.device:
    """'auto' (cuda:0 if available, else cpu; logged), 'cpu', 'cuda' or 'cuda:N' -> torch.device.

    Raises RuntimeError if CUDA is requested but unavailable or N is out of range, ValueError for other
    strings.
    """
    text = str(spec).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            device = torch.device("cuda:0")
            logger.info("device auto -> %s (%s)", device, torch.cuda.get_device_name(device))
        else:
            device = torch.device("cpu")
            logger.info("device auto -> cpu (CUDA is not available)")
        return device
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        index_text = text.partition(":")[2] or "0"
        if not index_text.isdigit():
            raise ConfigurationError(f"bad device {spec!r}; use auto, cpu, cuda or cuda:N")
        if not torch.cuda.is_available():
            raise UnavailableError(
                f"device {spec!r} requested but CUDA is not available (torch {torch.__version__}, "
                f"built with CUDA: {torch.version.cuda is not None}); use device 'cpu' or 'auto'"
            )
        index = int(index_text)
        count = torch.cuda.device_count()
        if index >= count:
            raise UnavailableError(f"device {spec!r} requested but only {count} CUDA device(s) exist (cuda:0..{count - 1})")
        return torch.device("cuda", index)
    raise ConfigurationError(f"bad device {spec!r}; use auto, cpu, cuda or cuda:N")


def _check_options(size_policy: str, precision: str, overlay_alpha: float, compile_mode: str) -> None:
    """Raise ValueError for an option value MafsEngine does not know."""
    if size_policy not in SIZE_POLICIES:
        raise ConfigurationError(f"size_policy must be one of {SIZE_POLICIES}, got {size_policy!r}")
    if precision not in PRECISION_NAMES:
        raise ConfigurationError(f"precision must be one of {PRECISION_NAMES}, got {precision!r}")
    if not 0.0 <= overlay_alpha <= 1.0:
        raise ConfigurationError(f"overlay_alpha must be within [0, 1], got {overlay_alpha}")
    if compile_mode not in COMPILE_MODES:
        raise ConfigurationError(f"compile_mode must be one of {COMPILE_MODES}, got {compile_mode!r}")


class _StageClock:
    """Stage boundaries of one engine call. On CUDA they are events recorded on the stream, so timing adds no
    host-device synchronisation between stages (they are read once the outputs are on the host); on a CPU,
    wall-clock times."""

    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        self._marks: list[Any] = []
        self.mark()

    def mark(self) -> None:
        if self._cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._marks.append(event)
        else:
            self._marks.append(time.perf_counter())

    def intervals_ms(self) -> list[float]:
        """Milliseconds between consecutive marks."""
        if self._cuda:
            self._marks[-1].synchronize()
            return [a.elapsed_time(b) for a, b in zip(self._marks, self._marks[1:])]
        return [(b - a) * 1e3 for a, b in zip(self._marks, self._marks[1:])]


class MafsEngine:
    """Runs a MAFS network on (visible, thermal) numpy pairs.

    Build it from a checkpoint file (None: the packaged DEFAULT_CHECKPOINT) or a loaded `Checkpoint`, or
    from an already-built `model` (tests, training) whose `model.config` is its MafsConfig; class names and
    palette then default to `class_sets.default_class_set(num_classes)` and the thermal normalisation to
    "fixed". The engine moves the model to `device` and puts it in eval mode.
    backend: 'auto' (default), 'torch' or 'onnxruntime' (`backends.select_backend`). auto runs a checkpoint in
    onnxruntime for fp32 on a CPU (`backends.onnxruntime_cache`: exported and checked against PyTorch at the
    first frame of each network size, then cached per user) and in PyTorch otherwise; a given `model` runs in
    PyTorch unless 'onnxruntime' is asked for. A checkpoint path ending in .onnx (written by `mafs export
    --onnx`) always runs in onnxruntime (`backends.onnxruntime_backend`). onnxruntime is fp32 only, and
    `optimize` and `compile_mode` do not apply to it.

    device: 'auto' | 'cpu' | 'cuda' | 'cuda:N' (see `resolve_device`).
    precision: 'fp32', 'fp16' (CUDA) or 'bf16' (CUDA, or CPUs with bf16 units): autocast, the weights stay
    fp32. `mafs bench --check-precision` measures what it costs in accuracy (fused PSNR, label agreement).
    thermal_normalization: overrides the checkpoint's (a ThermalNormalization, spec string or dict); a
        checkpoint's plain "fixed" runs as "auto" (the same on 8-bit frames; 16-bit counts stretched, not squeezed).
    size_policy: 'resize' (official protocol, default) or 'pad' (reflect-pad to a multiple of 32, crop back).
    warmup: forward passes at `warmup_size` (H, W) run once here, so the first real frame is not slow.
    overlay_alpha: label colour weight of `FusionResult.overlay`.
    optimize: rewrite the network for inference (`model.inference.prepare_for_inference`: BatchNorm folded
    into the convolutions, channels-last; same outputs to float rounding). Default: on for a model the engine
    loads from a checkpoint; for a given `model` (which the caller may go on training) it is off, and `True`
    optimises a copy.
    compile_mode: "none", or a `torch.compile` mode ("default", "reduce-overhead" = CUDA graphs on a GPU,
    "max-autotune"). Compiling takes minutes at the first forward of each input size (the warm-up pays it);
    `mafs bench --compile MODE --check-precision` measures the speed and checks the outputs against eager.
    """

    def __init__(
        self,
        checkpoint: "str | Path | Checkpoint | None" = None,
        *,
        model: nn.Module | None = None,
        class_names: Sequence[str] | None = None,
        palette: Any = None,
        device: str | torch.device = "auto",
        precision: str = "fp32",
        thermal_normalization: "str | dict[str, Any] | ThermalNormalization | None" = None,
        size_policy: str = "resize",
        warmup: int = 0,
        warmup_size: tuple[int, int] = (480, 640),
        overlay_alpha: float = 0.5,
        optimize: bool | None = None,
        compile_mode: str = "none",
        backend: str = "auto",
    ) -> None:
        _check_options(size_policy, precision, overlay_alpha, compile_mode)
        self._device = resolve_device(device)
        if precision == "fp16" and self._device.type != "cuda":
            raise ConfigurationError(f"precision 'fp16' needs a CUDA device (got {self._device}); use fp32 or bf16 on CPU")
        if precision == "bf16" and self._device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigurationError("precision 'bf16' is not supported by this GPU; use fp16 or fp32")
        if model is not None and checkpoint is not None:
            raise ConfigurationError("give either a checkpoint or a model, not both")
        source = model if model is not None else checkpoint
        loaded = select_backend(source, backend, self._device, precision, compile_mode).load(
            source, self._device, precision=precision, optimize=optimize, compile_mode=compile_mode
        )
        self._set_network(loaded, class_names, palette)
        self._compile_mode = compile_mode
        self._precision = precision
        self._size_policy = size_policy
        self._checkpoint_thermal = loaded.inputs.thermal_normalization
        if str(self._checkpoint_thermal) == "fixed":
            # A checkpoint trained on 8-bit thermal says "fixed", which squeezes a camera's raw 16-bit counts into a
            # few percent of [0, 1]; "auto" is the same on 8-bit frames and stretches 16-bit ones.
            self._checkpoint_thermal = ThermalNormalization("auto")
        self._thermal = ThermalAgc(
            ThermalNormalization.from_spec(thermal_normalization)
            if thermal_normalization is not None
            else self._checkpoint_thermal
        )
        self._overlay_alpha = overlay_alpha
        logger.info(
            "MafsEngine: %s (%d classes) on %s, %s, thermal %s, size policy %s",
            self._config.name, self._config.num_classes, self._device, precision, self.thermal_normalization,
            size_policy,
        )
        if warmup > 0:
            self.warmup(warmup, warmup_size)

    def _set_network(self, loaded: LoadedNet, class_names: Sequence[str] | None, palette: Any) -> None:
        """Take the backend's network and its description; `class_names` and `palette` override its own."""
        config = loaded.config
        self._class_names = tuple(class_names) if class_names is not None else loaded.class_names
        self._palette = np.asarray(palette if palette is not None else loaded.palette, dtype=np.uint8)
        if not 2 <= config.num_classes < IGNORE_LABEL:
            raise ConfigurationError(f"num_classes must be in 2..{IGNORE_LABEL - 1} for uint8 labels, got {config.num_classes}")
        if len(self._class_names) != config.num_classes or self._palette.shape != (config.num_classes, 3):
            raise ConfigurationError(
                f"{len(self._class_names)} class names / palette {self._palette.shape} do not match "
                f"the model's {config.num_classes} classes"
            )
        self._config = config
        self._model = loaded.net
        self._backend = loaded.backend
        self._optimized = loaded.optimized
        self._memory_format = torch.channels_last if loaded.optimized else torch.contiguous_format
        self._size_multiple = loaded.inputs.size_multiple
        self._trained = loaded.trained
        self._checkpoint_path = loaded.path

    # ------------------------------------------------------------------------------------------------
    # Properties

    @property
    def model(self) -> Callable[[torch.Tensor, torch.Tensor], Any]:
        """The network the backend runs: an nn.Module for 'torch', a callable onnxruntime network for 'onnxruntime'."""
        return self._model

    @property
    def backend(self) -> str:
        """'torch' or 'onnxruntime': what runs the network (see `backend` above)."""
        return self._backend

    @property
    def config(self) -> MafsConfig:
        return self._config

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._class_names

    @property
    def palette(self) -> np.ndarray:
        """(num_classes, 3) uint8 RGB."""
        return self._palette

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def precision(self) -> str:
        return self._precision

    @property
    def size_policy(self) -> str:
        return self._size_policy

    @property
    def thermal_normalization(self) -> ThermalNormalization:
        """How thermal frames become the network's input; settable while running (a spec string, dict or
        ThermalNormalization; "auto" then starts its smoothed range over)."""
        return self._thermal.normalization

    @thermal_normalization.setter
    def thermal_normalization(self, spec: "str | dict[str, Any] | ThermalNormalization | None") -> None:
        normalization = self._checkpoint_thermal if spec is None else ThermalNormalization.from_spec(spec)
        self._thermal = ThermalAgc(normalization, self._thermal.weight)

    @property
    def overlay_alpha(self) -> float:
        return self._overlay_alpha

    @overlay_alpha.setter
    def overlay_alpha(self, alpha: float) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ConfigurationError(f"overlay_alpha must be within [0, 1], got {alpha}")
        self._overlay_alpha = float(alpha)

    @property
    def compile_mode(self) -> str:
        return self._compile_mode

    @property
    def optimized(self) -> bool:
        """Whether the network was rewritten for inference (BatchNorm folded, channels-last)."""
        return self._optimized

    @property
    def checkpoint_trained(self) -> bool | None:
        """The checkpoint's `trained` flag; None when the engine was built from a model."""
        return self._trained

    @property
    def checkpoint_path(self) -> Path | None:
        return self._checkpoint_path

    def describe(self) -> dict[str, dict[str, Any]]:
        """What the reports of `mafs eval` and `mafs replay` record about the model: {"checkpoint": {path,
        trained, config}, "engine": {device, precision, thermal_normalization, size_policy}}."""
        return {
            "checkpoint": {
                "path": str(self._checkpoint_path) if self._checkpoint_path is not None else None,
                "trained": self._trained,
                "config": self._config.name,
            },
            "engine": {
                "device": str(self._device),
                "precision": self._precision,
                "thermal_normalization": str(self.thermal_normalization),
                "size_policy": self._size_policy,
            },
        }

    # ------------------------------------------------------------------------------------------------
    # Inference

    def warmup(self, iterations: int = 1, size: tuple[int, int] = (480, 640)) -> None:
        """Run `iterations` forward passes on blank (H, W) = `size` inputs (kernel selection, allocation)."""
        rgb = np.zeros((*size, 3), dtype=np.uint8)
        thermal = np.zeros(size, dtype=np.uint8)
        start = time.perf_counter()
        for _ in range(iterations):
            self.infer(rgb, thermal, want_confidence=False)
        logger.info("warm-up: %d pass(es) at %dx%d in %.0f ms", iterations, *size, (time.perf_counter() - start) * 1e3)

    def infer(
        self, rgb: np.ndarray, thermal: np.ndarray, *, want_confidence: bool = True, want_overlay: bool = False
    ) -> FusionResult:
        """Fuse and segment one pair.

        rgb: (H, W, 3) uint8 RGB. thermal: (H, W) (or (H, W, 1); (H, W, 3) uses channel 0 like the official
        code) uint8, uint16, float32 or float64, normalised by the engine's ThermalNormalization.
        Raises ValueError naming the problem for invalid inputs.
        """
        return self.infer_batch([(rgb, thermal)], want_confidence=want_confidence, want_overlay=want_overlay)[0]

    def infer_batch(
        self,
        pairs: Sequence[tuple[np.ndarray, np.ndarray]],
        *,
        want_confidence: bool = True,
        want_overlay: bool = False,
        max_batch_size: int | None = None,
    ) -> list[FusionResult]:
        """`infer` for several pairs: same-size pairs go through the network together (at most
        `max_batch_size` per forward). Results are in input order. All pairs are validated first; a bad
        one raises ValueError naming its index.
        """
        if max_batch_size is not None and max_batch_size < 1:
            raise ConfigurationError(f"max_batch_size must be >= 1, got {max_batch_size}")
        thermals = []
        for index, (rgb, thermal) in enumerate(pairs):
            try:
                thermals.append(self._validate(rgb, thermal))
            except ValueError as exc:
                raise InputError(f"pair {index}: {exc}" if len(pairs) > 1 else str(exc)) from None
        groups: dict[tuple[int, int], list[int]] = {}
        for index, (rgb, _) in enumerate(pairs):
            groups.setdefault(rgb.shape[:2], []).append(index)
        step = max_batch_size or len(pairs)
        results: list[FusionResult | None] = [None] * len(pairs)
        for indices in groups.values():
            for start in range(0, len(indices), step):
                chunk = indices[start : start + step]
                batch = [(pairs[i][0], thermals[i]) for i in chunk]
                for i, result in zip(chunk, self._run(batch, want_confidence, want_overlay)):
                    results[i] = result
        return results  # type: ignore[return-value]

    def _validate(self, rgb: np.ndarray, thermal: np.ndarray) -> np.ndarray:
        """Check one pair; return the thermal image as (H, W)."""
        if not isinstance(rgb, np.ndarray):
            raise InputError(f"visible image must be a numpy array, got {type(rgb).__name__}")
        if not isinstance(thermal, np.ndarray):
            raise InputError(f"thermal image must be a numpy array, got {type(thermal).__name__}")
        if rgb.dtype != np.uint8:
            raise InputError(f"visible image must be uint8, got {rgb.dtype}")
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise InputError(f"visible image must be (H, W, 3) RGB, got shape {rgb.shape}")
        if thermal.dtype not in [np.dtype(d) for d in THERMAL_DTYPES]:
            raise InputError(f"thermal image must be uint8, uint16, float32 or float64, got {thermal.dtype}")
        if thermal.ndim == 3 and thermal.shape[2] in (1, 3):
            thermal = thermal[:, :, 0]
        if thermal.ndim != 2:
            raise InputError(f"thermal image must be (H, W) (or (H, W, 1) / (H, W, 3)), got shape {thermal.shape}")
        if rgb.size == 0 or thermal.size == 0:
            raise InputError(f"empty image: visible {rgb.shape}, thermal {thermal.shape}")
        if rgb.shape[:2] != thermal.shape:
            raise InputError(
                f"thermal {thermal.shape[0]}x{thermal.shape[1]} and visible {rgb.shape[0]}x{rgb.shape[1]} "
                "differ in size; register/resize them to the same size first"
            )
        m = self._size_multiple
        if min(thermal.shape) < m:
            raise InputError(f"image {thermal.shape[0]}x{thermal.shape[1]} is too small: both sides need >= {m} px")
        return thermal

    def _network_size(self, height: int, width: int) -> tuple[int, int]:
        m = self._size_multiple
        if self._size_policy == "resize":
            return height // m * m, width // m * m
        return -(-height // m) * m, -(-width // m) * m

    @torch.inference_mode()
    def _run(
        self, batch: list[tuple[np.ndarray, np.ndarray]], want_confidence: bool, want_overlay: bool
    ) -> list[FusionResult]:
        """One forward for same-size, validated pairs (thermal already (H, W))."""
        clock = _StageClock(self._device)
        height, width = batch[0][1].shape
        vi_net, ir_net, cb, cr = self._preprocess(batch)
        clock.mark()

        dtype = AUTOCAST_DTYPES[self._precision]
        autocast = torch.autocast(self._device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with autocast:
            out = self._model(vi_net, ir_net)
        clock.mark()

        fused = self._from_network_size(out.fused.float(), (height, width), "bicubic").clamp(0.0, 1.0)
        # Channels-last, as the optimised network gives them: a reduction over the classes of contiguous (NCHW)
        # logits, as onnxruntime gives them, is about eight times slower on a CPU.
        logits = self._from_network_size(out.semantic.float(), (height, width), "bilinear").contiguous(
            memory_format=torch.channels_last)
        # contiguous: (H, W, 3) numpy images that OpenCV and ROS messages take without a copy
        fused_rgb = to_uint8(ycbcr_to_rgb(fused, cb, cr)).permute(0, 2, 3, 1).contiguous().cpu().numpy()
        fused_y = to_uint8(fused[:, 0]).cpu().numpy()
        labels = logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
        confidence = torch.softmax(logits, dim=1).amax(dim=1).cpu().numpy() if want_confidence else None
        # Every 4th pixel of each axis gives the percentiles to a few thousandths.
        levels = torch.tensor([0.01, 0.99], device=ir_net.device)
        lo, hi = torch.quantile(ir_net[:, 0, ::4, ::4].flatten(1).float(), levels, dim=1)
        thermal_spans = (hi - lo).tolist()
        results = []
        for i in range(len(batch)):
            overlay_img = (
                overlay(fused_rgb[i], labels[i], self._palette, self._overlay_alpha) if want_overlay else None
            )
            results.append(
                FusionResult(
                    fused_rgb=fused_rgb[i],
                    fused_y=fused_y[i],
                    labels=labels[i],
                    confidence=confidence[i] if confidence is not None else None,
                    overlay=overlay_img,
                    timings={},
                    thermal_span=thermal_spans[i],
                )
            )
        clock.mark()
        n = len(batch)
        stages = ("preprocess_ms", "inference_ms", "postprocess_ms")
        timings = {name: ms / n for name, ms in zip(stages, clock.intervals_ms())}
        for result in results:
            result.timings = dict(timings)
        return results

    def network_inputs(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's inputs for same-size pairs, exactly as `infer_batch` makes them: visible (B, 3, h, w)
        and thermal (B, 1, h, w) float32 in [0, 1] on the engine's device at the network size (benchmarks,
        export checks)."""
        thermals = [self._validate(rgb, thermal) for rgb, thermal in pairs]
        if len({thermal.shape for thermal in thermals}) != 1:
            raise InputError("network_inputs needs pairs of one size")
        with torch.inference_mode():
            vi_net, ir_net, _, _ = self._preprocess([(rgb, th) for (rgb, _), th in zip(pairs, thermals)])
        return vi_net, ir_net

    def _preprocess(
        self, batch: Sequence[tuple[np.ndarray, np.ndarray]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Validated same-size pairs -> (visible, thermal) at the network size in the model's memory format,
        and the visible Cb, Cr (B, 1, H, W) at the input size for colour restoration."""
        net_size = self._network_size(*batch[0][1].shape)
        vi = torch.stack([self._visible_tensor(rgb) for rgb, _ in batch])  # (B,3,H,W)
        ir = torch.stack([self._thermal.apply(th, self._device) for _, th in batch]).unsqueeze(1)
        _, cb, cr = rgb_to_ycbcr(vi)
        vi_net = self._to_network_size(vi, net_size).contiguous(memory_format=self._memory_format)
        ir_net = self._to_network_size(ir, net_size).contiguous(memory_format=self._memory_format)
        return vi_net, ir_net, cb, cr

    def _visible_tensor(self, rgb: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1] on the device (converted after the transfer,
        so only uint8 bytes cross the bus)."""
        if not (rgb.flags.c_contiguous and rgb.flags.writeable):
            rgb = np.array(rgb, order="C", copy=True)
        t = torch.from_numpy(rgb)
        if self._device.type == "cuda":
            t = t.pin_memory()  # a copy from pinned memory is asynchronous; from pageable memory it is not
        return t.to(self._device, non_blocking=True).permute(2, 0, 1).float().div_(255.0)

    def _to_network_size(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B,C,H,W) in [0,1] -> (B,C,*size): PIL-like bicubic resize (antialiased), or reflect padding."""
        if tuple(x.shape[-2:]) == size:
            return x
        if self._size_policy == "resize":
            return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0.0, 1.0)
        pad_h, pad_w = size[0] - x.shape[-2], size[1] - x.shape[-1]
        return F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")

    def _from_network_size(self, x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
        """Inverse of `_to_network_size` for a network output: resize with `mode`, or crop the padding."""
        if tuple(x.shape[-2:]) == size:
            return x
        if self._size_policy == "resize":
            antialias = mode == "bicubic"
            return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=antialias)
        return x[..., : size[0], : size[1]]
