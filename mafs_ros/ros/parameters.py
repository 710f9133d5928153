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
from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rclpy.exceptions import ParameterException
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
    "overlay_alpha": (0.5, "Weight of the label colours in segmentation/overlay, 0..1 (changeable at run time)."),
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
    "registration.homography": (list(IDENTITY_HOMOGRAPHY), "Row-major 3x3 homography from thermal pixels to RGB "
                                                           "pixels; thermal is warped into the RGB image before "
                                                           "fusion. Identity: pre-registered cameras."),
    "diagnostics_period_s": (1.0, "Period of /diagnostics messages, seconds."),
    "lifecycle": (False, "true: a managed node that starts unconfigured and is driven through <node>/change_state "
                         "(configure loads the model, activate starts fusing); false: it starts fusing at once."),
}
RUNTIME_PARAMETERS = ("overlay_alpha", "publish_confidence", "sync.slop_s", "sync.thermal_offset_s", "sync.max_wait_s",
                      "thermal_normalization")
# Read when the node is created, in both modes; the other parameters are read by configure (a managed node
# accepts changes to them while unconfigured).
CREATION_PARAMETERS = ("lifecycle", "diagnostics_period_s")

Getter = Callable[[str], Any]  # parameter name -> its current value


def usage() -> str:
    """`mafs_node --help`: how to start the node and every parameter with its default (no model is loaded)."""
    lines = ["usage: mafs_node [--ros-args -p NAME:=VALUE ... --params-file FILE]", "",
             "RGB + thermal fusion and semantic segmentation (MAFS). Parameters (default; (runtime): changeable "
             "while running):", ""]
    for name, (default, description) in PARAMETERS.items():
        runtime = " (runtime)" if name in RUNTIME_PARAMETERS else ""
        lines.append(f"  {name} = {default!r}{runtime}")
        lines.append(f"      {description}")
    return "\n".join(lines)


def declare_parameters(node: Any) -> None:
    """Declares every parameter with its default and description; raises StartupError for a value of the wrong
    type (given with -p or a parameter file)."""
    try:
        for name, (default, description) in PARAMETERS.items():
            node.declare_parameter(name, default, ParameterDescriptor(description=description))
    except ParameterException as exc:
        # rclpy types parameters strictly: `-p sync.slop_s:=1` is an integer where a double is declared.
        raise StartupError(f"bad parameter: {exc} (write 1.0, not 1, for a double; a list of doubles needs "
                           "every element as a double)") from None


def positive(name: str, value: Any) -> float:
    """`value` of parameter `name` as a float; StartupError unless it is a finite number > 0."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise StartupError(f"parameter {name} must be a positive number, got {value!r}")
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


def read_settings(get: Getter) -> Settings:
    """The checked settings; raises StartupError naming the parameter at fault."""
    try:
        homography = parse_homography(get("registration.homography"), "registration.homography")
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    max_wait = get("sync.max_wait_s")
    if runtime_value_problem("sync.max_wait_s", max_wait, ParameterType.PARAMETER_DOUBLE):
        raise StartupError(f"parameter sync.max_wait_s must be a finite number >= 0, got {max_wait!r}")
    slop_s = positive("sync.slop_s", get("sync.slop_s"))
    queue_size = int(positive("sync.queue_size", get("sync.queue_size")))
    input_qos, output_qos = _qos(get, "qos.input"), _qos(get, "qos.output")
    backend = str(get("sync.backend"))
    if backend not in SYNC_BACKENDS:
        raise StartupError(f"parameter sync.backend must be 'builtin' or 'message_filters', got {backend!r}")
    return Settings(
        slop_s=slop_s, queue_size=queue_size, thermal_offset_s=float(get("sync.thermal_offset_s")),
        max_wait_s=float(max_wait), backend=backend, input_qos=input_qos, output_qos=output_qos,
        homography=homography, overlay_alpha=get("overlay_alpha"), publish_confidence=bool(get("publish_confidence")),
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
