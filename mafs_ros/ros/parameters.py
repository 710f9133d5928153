"""The node's parameters: their declarations, the checks configure runs on them, and which may change when.

The sync.* and registration defaults are the interface constants (`mafs_ros.constants`) that replay and the CLI
use as well. config/mafs.yaml lists every parameter here in the same order with the same default (a test checks).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.exceptions import InvalidParameterValueException, ParameterException
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from ..constants import IDENTITY_HOMOGRAPHY, MAX_WAIT_S, QUEUE_SIZE, SLOP_S, THERMAL_OFFSET_S
from ..stream.registration import parse_homography
from ..errors import MafsError


class StartupError(MafsError, RuntimeError):
    """A configuration problem found at start-up (bad parameter, checkpoint, device): the node exits != 0."""


RELIABILITIES = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}
SYNC_BACKENDS = ("builtin", "message_filters")

# name -> (default, description).
PARAMETERS: dict[str, tuple[Any, str]] = {
    "checkpoint": ("", "Checkpoint file (.safetensors, our format); empty: the packaged mafs-lite checkpoint."),
    "model_config": ("", "Expected model configuration ('mafs', 'mafs-lite'); empty: whatever the checkpoint holds. "
                         "A mismatch is a start-up error."),
    "device": ("auto", "auto | cpu | cuda | cuda:N. auto: first GPU, else CPU with a warning. "
                       "cuda without a GPU is a start-up error."),
    "precision": ("fp32", "fp32 | fp16 | bf16 (autocast; fp16 needs CUDA, bf16 runs on CUDA or CPU)."),
    "size_policy": ("resize", "resize (network runs at a multiple of 32 near the input size, official protocol) "
                              "| pad (reflect-pad to a multiple of 32, crop back)."),
    "warmup": (1, "Forward passes on blank 480x640 inputs at start-up so the first frame is not slow."),
    "backend": ("auto", "auto | torch | onnxruntime: what runs the network. auto: onnxruntime for fp32 on a CPU "
                        "(exported and checked against PyTorch at the first frame of each size, cached per user), "
                        "PyTorch otherwise."),
    "compile_mode": ("none", "none | default | reduce-overhead (CUDA graphs on a GPU) | max-autotune: torch.compile "
                            "the network; compiling takes minutes during the warm-up."),
    "thermal_normalization": ("auto", "Thermal scaling to [0, 1]: 'auto' (8-bit as 'fixed', 16-bit and 32FC1 by a "
                                      "percentile stretch smoothed over frames, as a camera's AGC); 'fixed' (8-bit /255, "
                                      "16-bit /65535; 32FC1 needs a range), 'fixed:LO,HI' (e.g. degrees C), 'minmax' "
                                      "(per frame), 'percentile:LO,HI' (per frame); empty: the checkpoint's (changeable "
                                      "at run time)."),
    "rgb_transport": ("auto", "raw | compressed | auto: the RGB input as sensor_msgs/Image on rgb/image or as "
                              "image_transport's compressed plugin (CompressedImage on rgb/image/compressed, JPEG or "
                              "PNG); auto: what the topic's publishers offer."),
    "thermal_transport": ("auto", "raw | compressed | auto, as rgb_transport (a 16-bit PNG keeps its 16 bits)."),
    "overlay_alpha": (0.5, "Weight of the label colours in segmentation/overlay, 0..1 (changeable at run time)."),
    "jpeg_quality": (90, "JPEG quality of fused/image/compressed and segmentation/overlay/compressed, which are "
                         "encoded only while subscribed (changeable at run time)."),
    "publish_confidence": (False, "Compute and publish segmentation/confidence (32FC1 max softmax) and fill "
                                  "mafs/result.confidence (changeable at run time)."),
    "qos.input.reliability": ("best_effort", "Input subscriptions: best_effort (REP-2003 sensor data; accepts "
                                             "both kinds of publisher) | reliable."),
    "qos.input.depth": (2, "Input subscription queue depth (keep small: the node keeps the latest pair only)."),
    "qos.output.reliability": ("reliable", "Output publishers: reliable (REP-2003; serves both kinds of "
                                           "subscriber) | best_effort."),
    "qos.output.depth": (2, "Output publisher queue depth."),
    "sync.backend": ("builtin", "builtin (mafs_ros pairing, same as the replay) | message_filters "
                                "(ApproximateTimeSynchronizer; only where the package is installed)."),
    "sync.slop_s": (SLOP_S, "Largest |thermal stamp + offset - RGB stamp| of a pair, seconds (changeable at run "
                            "time)."),
    "sync.queue_size": (QUEUE_SIZE, "Frames kept per input while waiting for a partner."),
    "sync.thermal_offset_s": (THERMAL_OFFSET_S, "Added to thermal stamps before pairing (thermal cameras often "
                                                "stamp late: use a negative value then), seconds (changeable at run "
                                                "time)."),
    "sync.max_wait_s": (MAX_WAIT_S, "Longest wait of a thermal frame for a nearer RGB frame once one within slop is "
                                    "there; 0: pair with the best frame at hand (changeable at run time)."),
    "sync.degraded_after_s": (1.0, "One input silent this long while the other flows: the node fuses the other "
                                   "alone (the missing image blank, as the model was trained for a failed camera), "
                                   "says so in /diagnostics and mafs/result, and pairs again when both flow; 0: "
                                   "never."),
    "registration.homography": (list(IDENTITY_HOMOGRAPHY), "Row-major 3x3 homography from thermal pixels to RGB "
                                                           "pixels; thermal is warped into the RGB image before "
                                                           "fusion. Identity: pre-registered cameras."),
    "diagnostics_period_s": (1.0, "Period of /diagnostics messages, seconds."),
    "lifecycle": (False, "true: a managed node driven through <node>/change_state (configure loads the model, "
                         "activate starts fusing); false: a plain node that starts fusing at once."),
    "autostart": (True, "With lifecycle true: configure and activate at start (false: wait unconfigured for a "
                        "lifecycle manager, e.g. nav2's)."),
}
# Numeric ranges (inclusive), in the descriptors (`ros2 param describe`) and checked by rclpy on every change.
RANGES: dict[str, tuple[float, float]] = {
    "warmup": (0, 100),
    "overlay_alpha": (0.0, 1.0),
    "jpeg_quality": (1, 100),
    "qos.input.depth": (1, 100),
    "qos.output.depth": (1, 100),
    "sync.slop_s": (1e-6, 3600.0),
    "sync.queue_size": (1, 1000),
    "sync.thermal_offset_s": (-3600.0, 3600.0),
    "sync.max_wait_s": (0.0, 3600.0),
    "sync.degraded_after_s": (0.0, 3600.0),
    "diagnostics_period_s": (0.01, 3600.0),
}
RUNTIME_PARAMETERS = ("overlay_alpha", "publish_confidence", "sync.slop_s", "sync.thermal_offset_s", "sync.max_wait_s",
                      "thermal_normalization", "jpeg_quality")
# Read when the node is created, in both modes; the other parameters are read by configure (a managed node
# accepts changes to them while unconfigured).
CREATION_PARAMETERS = ("lifecycle", "autostart", "diagnostics_period_s")
TRANSPORTS = ("auto", "raw", "compressed")

Getter = Callable[[str], Any]  # parameter name -> its current value


def usage() -> str:
    """`mafs_node --help`: how to start the node and every parameter with its default and range (no model is
    loaded, no torch imported)."""
    lines = ["usage: mafs_node [--ros-args -p NAME:=VALUE ... --params-file FILE]", "",
             "RGB + thermal fusion and semantic segmentation (MAFS). Parameters (default, range; runtime: changeable "
             "while running; read-only: a plain node reads it once, at start-up):", ""]
    for name, (default, description) in PARAMETERS.items():
        notes = [f"range {RANGES[name][0]:g}..{RANGES[name][1]:g}"] if name in RANGES else []
        notes.append("runtime" if name in RUNTIME_PARAMETERS else "read-only")
        lines.append(f"  {name} = {default!r}  ({', '.join(notes)})")
        lines.append(f"      {description}")
    return "\n".join(lines)


def declare_parameters(node: Any) -> bool:
    """Declares every parameter with its default, description, range and read-only flag; returns `lifecycle`.
    Raises StartupError for a value of the wrong type or out of range (given with -p or a parameter file).

    Read-only are the parameters read when the node is created and, for a plain node, every one but the runtime
    ones; a managed node reads them at configure, so they may change while it is unconfigured."""
    try:
        lifecycle = node.declare_parameter("lifecycle", False, _descriptor("lifecycle", read_only=True)).value
        for name, (default, _) in PARAMETERS.items():
            if name != "lifecycle":
                read_only = name in CREATION_PARAMETERS or (not lifecycle and name not in RUNTIME_PARAMETERS)
                node.declare_parameter(name, default, _descriptor(name, read_only))
    except InvalidParameterValueException as exc:  # out of range
        raise StartupError(f"bad parameter: {exc}") from None
    except ParameterException as exc:
        # rclpy types parameters strictly: `-p sync.slop_s:=1` is an integer where a double is declared.
        raise StartupError(f"bad parameter: {exc} (write 1.0, not 1, for a double; a list of doubles needs "
                           "every element as a double)") from None
    return bool(lifecycle)


def _descriptor(name: str, read_only: bool) -> ParameterDescriptor:
    descriptor = ParameterDescriptor(description=PARAMETERS[name][1], read_only=read_only)
    if name in RANGES:
        lo, hi = RANGES[name]
        if isinstance(PARAMETERS[name][0], int):
            descriptor.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
        else:
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    return descriptor


def positive(name: str, value: Any) -> float:
    """`value` of parameter `name` as a float; StartupError unless it is a finite number > 0."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise StartupError(f"parameter {name} must be a positive number, got {value!r}")
    return float(value)


def non_negative(name: str, value: Any) -> float:
    """`value` of parameter `name` as a float; StartupError unless it is a finite number >= 0."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise StartupError(f"parameter {name} must be a finite number >= 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Settings:
    """What configure reads besides the engine's parameters, checked."""

    slop_s: float
    queue_size: int
    thermal_offset_s: float
    max_wait_s: float
    backend: str
    input_qos: QoSProfile
    output_qos: QoSProfile
    homography: np.ndarray | None  # None: identity, no warp
    overlay_alpha: Any  # checked by the engine, which takes it
    publish_confidence: bool
    rgb_transport: str
    thermal_transport: str
    jpeg_quality: int
    degraded_after_s: float  # 0: never


def read_settings(get: Getter) -> Settings:
    """The checked settings; raises StartupError naming the parameter at fault."""
    try:
        homography = parse_homography(get("registration.homography"), "registration.homography")
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    max_wait = non_negative("sync.max_wait_s", get("sync.max_wait_s"))
    slop_s = positive("sync.slop_s", get("sync.slop_s"))
    queue_size = int(positive("sync.queue_size", get("sync.queue_size")))
    input_qos, output_qos = _qos(get, "qos.input"), _qos(get, "qos.output")
    backend = str(get("sync.backend"))
    if backend not in SYNC_BACKENDS:
        raise StartupError(f"parameter sync.backend must be 'builtin' or 'message_filters', got {backend!r}")
    transports = {name: str(get(name)) for name in ("rgb_transport", "thermal_transport")}
    for name, transport in transports.items():
        if transport not in TRANSPORTS:
            raise StartupError(f"parameter {name} must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
        if backend == "message_filters" and transport == "compressed":
            raise StartupError(f"parameter {name} compressed needs sync.backend builtin")
    degraded_after_s = non_negative("sync.degraded_after_s", get("sync.degraded_after_s"))
    return Settings(
        slop_s=slop_s, queue_size=queue_size, thermal_offset_s=float(get("sync.thermal_offset_s")),
        max_wait_s=max_wait, backend=backend, input_qos=input_qos, output_qos=output_qos,
        homography=homography, overlay_alpha=get("overlay_alpha"), publish_confidence=bool(get("publish_confidence")),
        rgb_transport=transports["rgb_transport"], thermal_transport=transports["thermal_transport"],
        jpeg_quality=int(get("jpeg_quality")), degraded_after_s=degraded_after_s,
    )


def _qos(get: Getter, prefix: str) -> QoSProfile:
    reliability = str(get(f"{prefix}.reliability"))
    if reliability not in RELIABILITIES:
        raise StartupError(
            f"parameter {prefix}.reliability must be one of {sorted(RELIABILITIES)}, got {reliability!r}"
        )
    depth = get(f"{prefix}.depth")
    if not isinstance(depth, int) or depth < 1:
        raise StartupError(f"parameter {prefix}.depth must be an integer >= 1, got {depth!r}")
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=RELIABILITIES[reliability])


def engine_from_parameters(get: Getter, warn: Callable[[str], None]) -> Any:
    """A MafsEngine built and warmed up from the engine parameters; raises StartupError."""
    # torch is imported here, not at module level, so that parameter errors are reported before it loads.
    from ..engine import MafsEngine

    device = str(get("device"))
    if device.strip().lower() == "auto":
        import torch

        if not torch.cuda.is_available():
            warn("device auto: no CUDA GPU available, running on CPU (slow for 'mafs')")
    try:
        engine = MafsEngine(
            get("checkpoint") or None,
            device=device,
            precision=str(get("precision")),
            thermal_normalization=get("thermal_normalization") or None,
            size_policy=str(get("size_policy")),
            warmup=int(get("warmup")),
            compile_mode=str(get("compile_mode")),
            backend=str(get("backend")),
        )
    except (MafsError, OSError) as exc:  # anything else is a bug: its traceback is kept
        raise StartupError(f"cannot start the model: {exc}") from exc
    expected = str(get("model_config"))
    if expected and expected != engine.config.name:
        raise StartupError(
            f"parameter model_config is {expected!r} but checkpoint {engine.checkpoint_path} holds "
            f"{engine.config.name!r}"
        )
    if engine.checkpoint_trained is False:
        warn(f"checkpoint {engine.checkpoint_path} is UNTRAINED: outputs are meaningless")
    return engine


def change_refusal(name: str, value: Any, kind: int, *, configured: bool, lifecycle: bool,
                   backend: str | None) -> str | None:
    """Why a `ros2 param set` of `name` is refused now (None: accepted). `configured`: the node holds a
    configuration, which reads every parameter but the runtime ones once; `backend`: its sync.backend."""
    # A managed node reads these at configure: they may change until then, and again after a cleanup.
    when, restart = ("configure", "cleanup the node") if lifecycle else ("start-up", "restart the node")
    if name in CREATION_PARAMETERS:
        return f"{name} is read at start-up; restart the node to change it"
    if name in PARAMETERS and name not in RUNTIME_PARAMETERS and configured:
        return f"{name} is read at {when}; {restart} to change it"
    if name.startswith("sync.") and configured and backend == "message_filters":
        return (f"{name} cannot change under sync.backend message_filters (its synchronizer is built at {when}); "
                f"{restart} to change it")
    problem = runtime_value_problem(name, value, kind)
    return f"{name} {problem}, got {value!r}" if problem else None


def runtime_value_problem(name: str, value: Any, kind: int) -> str | None:
    """Why `value` is not acceptable for runtime parameter `name` (None: fine)."""
    number = kind in (ParameterType.PARAMETER_DOUBLE, ParameterType.PARAMETER_INTEGER) and np.isfinite(value)
    if name == "overlay_alpha" and not (number and 0 <= value <= 1):
        return "must be within [0, 1]"
    if name == "sync.slop_s" and not (number and value > 0):
        return "must be > 0"
    if name == "sync.thermal_offset_s" and not number:
        return "must be a finite number"
    if name == "sync.max_wait_s" and not (number and value >= 0):
        return "must be a finite number >= 0"
    if name == "jpeg_quality" and not (kind == ParameterType.PARAMETER_INTEGER and 1 <= value <= 100):
        return "must be an integer within [1, 100]"
    if name == "publish_confidence" and kind != ParameterType.PARAMETER_BOOL:
        return "must be true or false"
    if name == "thermal_normalization":
        if kind != ParameterType.PARAMETER_STRING:
            return "must be a string"
        from ..imaging import ThermalNormalization

        try:
            ThermalNormalization.from_spec(value) if value else None
        except MafsError as exc:
            return f"is not a thermal normalisation ({exc})"
    return None
