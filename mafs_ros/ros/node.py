"""The MAFS ROS 2 node: paired thermal + RGB images in, fused image and semantic labels out.

Data flow (one process, a `SingleThreadedExecutor` plus the inference thread):

    rgb/image ─────┐ (subscription callbacks, group "inputs": check the message, pair by stamp)
    thermal/image ─┴─► ApproximateTimePairer ─► one-slot mailbox (a newer pair overwrites: counted as a drop)
                                                    │
                         inference worker thread ◄──┘ decode, register thermal, MafsEngine.infer, publish
    diagnostics timer (group "diagnostics") ─► /diagnostics about once per second

Keeping the model off the executor's thread means parameter services and diagnostics stay responsive while
a slow model runs, and a camera faster than the model costs drops, not latency. The callbacks are short, so one
executor thread is enough; rclpy's MultiThreadedExecutor would cost far more: in rclpy 9.1.2 (Kilted) it re-queues
tasks it already queued and keeps the GIL busy doing so (rclpy#1452), which on two cores lost about 70 % of 30 Hz frames
in the soak test. The callback groups keep the callbacks apart when the node is spun by a multi-threaded one.

Everything model-related comes from `mafs_ros.engine.MafsEngine`; this file only knows messages.

Start-up is two steps, `_configure` (parameters, model, publishers, threads) and `_activate` (subscriptions,
fusing). A plain node (parameter `lifecycle` false) runs both in its constructor; a managed node (`lifecycle` true)
runs them from its lifecycle transitions, and `_deactivate` / `_release` undo them.
"""

from __future__ import annotations

import copy
import gc
import logging
import os
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNodeMixin, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.task import Future

try:
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import SubscriptionEventCallbacks
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSCompatibility, QoSProfile, ReliabilityPolicy, \
    qos_check_compatible
from sensor_msgs.msg import CameraInfo, Image

from mafs_ros.class_sets import IGNORE_LABEL
from mafs_ros.ros.conversions import (
    ImageConversionError,
    numpy_to_image,
    thermal_with_repairs,
    visible_from_image,
)
from mafs_ros.ros.frame_loss import FrameLossEstimator
from mafs_ros.ros.pairing import DEFAULT_MAX_WAIT_S, ApproximateTimePairer, Pair
from mafs_ros.ros.registration import IDENTITY_HOMOGRAPHY, parse_homography, warp_thermal_to_rgb
from mafs_ros.ros.transport import use_large_image_profile

NODE_NAME = "mafs"

# Topic names, relative so that namespaces and remapping work (launch files and tests use these constants).
RGB_TOPIC = "rgb/image"
THERMAL_TOPIC = "thermal/image"
CAMERA_INFO_TOPIC = "rgb/camera_info"
FUSED_TOPIC = "fused/image"
LABELS_TOPIC = "segmentation/labels"
OVERLAY_TOPIC = "segmentation/overlay"
CONFIDENCE_TOPIC = "segmentation/confidence"
RESULT_TOPIC = "mafs/result"
INFO_TOPIC = "segmentation/info"
FUSED_CAMERA_INFO_TOPIC = "fused/camera_info"
DIAGNOSTICS_TOPIC = "/diagnostics"
INPUT_TOPICS = (RGB_TOPIC, THERMAL_TOPIC, CAMERA_INFO_TOPIC)
OUTPUT_TOPICS = (
    FUSED_TOPIC, LABELS_TOPIC, OVERLAY_TOPIC, CONFIDENCE_TOPIC, RESULT_TOPIC, INFO_TOPIC, FUSED_CAMERA_INFO_TOPIC,
)

RELIABILITIES = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}

# name -> (default, description). The order is the order of config/mafs.yaml; test_node checks they agree.
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
    "compile_mode": ("none", "none | default | reduce-overhead (CUDA graphs on a GPU) | max-autotune: torch.compile "
                            "the network; compiling takes minutes during the warm-up."),
    "thermal_normalization": ("", "Thermal scaling to [0, 1]: empty = the checkpoint's; 'fixed' (8-bit /255, "
                                  "16-bit /65535; 32FC1 needs a range), 'fixed:LO,HI' (e.g. degrees C), 'minmax' (per "
                                  "frame), 'percentile:LO,HI' (per-frame AGC)."),
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
    "sync.slop_s": (0.05, "Largest |thermal stamp + offset - RGB stamp| of a pair, seconds (changeable at run time)."),
    "sync.queue_size": (10, "Frames kept per input while waiting for a partner."),
    "sync.thermal_offset_s": (0.0, "Added to thermal stamps before pairing (thermal cameras often stamp late: use "
                                   "a negative value then), seconds (changeable at run time)."),
    "sync.max_wait_s": (DEFAULT_MAX_WAIT_S, "Longest wait of a thermal frame for a nearer RGB frame once one within "
                                            "slop is there; 0: pair with the best frame at hand (changeable at "
                                            "run time)."),
    "registration.homography": (list(IDENTITY_HOMOGRAPHY), "Row-major 3x3 homography from thermal pixels to RGB "
                                                           "pixels; thermal is warped into the RGB image before "
                                                           "fusion. Identity: pre-registered cameras."),
    "diagnostics_period_s": (1.0, "Period of /diagnostics messages, seconds."),
    "lifecycle": (False, "true: a managed node that starts unconfigured and is driven through <node>/change_state "
                         "(configure loads the model, activate starts fusing); false: it starts fusing at once."),
}
RUNTIME_PARAMETERS = ("overlay_alpha", "publish_confidence", "sync.slop_s", "sync.thermal_offset_s", "sync.max_wait_s")
# Read when the node is created, in both modes; the other parameters are read by configure (a managed node
# accepts changes to them while unconfigured).
CREATION_PARAMETERS = ("lifecycle", "diagnostics_period_s")
# How long cleanup and shutdown wait for a forward pass in progress before releasing the model anyway (the
# running pass keeps the engine alive until it returns, and its result is dropped).
RELEASE_WAIT_S = 10.0
# An input losing more than this share of its recent frames (estimated from stamp gaps) turns the status WARN.
LOSS_WARN_PERCENT = 3.0
LOSS_MIN_FRAMES = 20  # recent frames needed before a loss percentage counts
TRANSPORT_HINT = "see 'Large images over Fast DDS' in the README (the publisher's transport settings decide)"
# Rejection reasons counted per pair (both frames were accepted and paired); every other reason counts one frame.
PAIR_REJECTIONS = ("size_mismatch", "inference_error")

logger = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """A configuration problem found at start-up (bad parameter, checkpoint, device): the node exits != 0."""


@dataclass
class _Frame:
    """An input message decoded in its subscription callback (a view of the message buffer where possible)."""

    msg: Image
    image: np.ndarray  # visible: (H, W, 3) uint8 RGB; thermal: (H, W) uint8 | uint16 | float32
    callback_ms: float = 0.0  # the frame's subscription callback: decoding and pairing


class _Mailbox:
    """One slot holding the newest pair; `put` over an unread pair counts a drop."""

    def __init__(self) -> None:
        self._pair: Pair | None = None
        self._cond = threading.Condition()
        self._closed = False
        self.drops = 0

    def put(self, pair: Pair) -> None:
        with self._cond:
            if self._pair is not None:
                self.drops += 1
            self._pair = pair
            self._cond.notify()

    def take(self, timeout_s: float) -> Pair | None:
        """The newest pair, or None after `timeout_s` or once closed."""
        with self._cond:
            if self._pair is None and not self._closed:
                self._cond.wait(timeout_s)
            pair, self._pair = self._pair, None
            return None if self._closed else pair

    def clear(self) -> int:
        """Empties the slot; returns the number of pairs removed (0 or 1), which the caller counts."""
        with self._cond:
            removed, self._pair = int(self._pair is not None), None
            return removed

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class _RateCounter:
    """Counts events between diagnostics reports."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total = 0
        self._since_report = 0

    def tick(self) -> None:
        with self._lock:
            self.total += 1
            self._since_report += 1

    def take(self) -> int:
        with self._lock:
            count, self._since_report = self._since_report, 0
            return count


def _percentile(values: "deque[float] | list[float]", q: float) -> float:
    return float(np.percentile(list(values), q)) if values else float("nan")


def _stamp_ns(msg: Any) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


class MafsNode(LifecycleNodeMixin, Node):
    """ROS 2 node around `MafsEngine`. Pass `engine` to use an already-built one (tests); otherwise the
    engine is built from the parameters.

    Parameter `lifecycle` false (the default): the node configures and activates itself here and raises
    StartupError for bad parameters, checkpoint or device. `lifecycle` true: a managed node; it starts unconfigured
    and `<node>/change_state` drives it (on_configure ... on_shutdown below), a given `engine` serving the first
    configure. Either way the same `_configure` / `_activate` steps start it.
    """

    def __init__(self, *, engine: Any = None, **node_kwargs: Any) -> None:
        Node.__init__(self, NODE_NAME, **node_kwargs)
        try:
            for name, (default, description) in PARAMETERS.items():
                self.declare_parameter(name, default, ParameterDescriptor(description=description))
        except ParameterException as exc:
            # rclpy types parameters strictly: `-p sync.slop_s:=1` is an integer where a double is declared.
            raise StartupError(f"bad parameter: {exc} (write 1.0, not 1, for a double; a list of doubles needs "
                               "every element as a double)") from None
        self._lifecycle = bool(self._param("lifecycle"))
        self._given_engine = engine
        self._engine: Any = None  # None while unconfigured
        self._pairer: ApproximateTimePairer | None = None  # kept after cleanup: counters() reports the last run
        self._worker: threading.Thread | None = None
        self._output_publishers: list[Any] = []
        self._input_subscriptions: list[Any] = []
        self._synchronizer = None
        # Fusing happens only while _active; the worker checks it under this lock right before publishing, so
        # deactivate waits for a publish in progress but never for a forward pass.
        self._active = False
        self._publish_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._throttle: dict[str, float] = {}
        self._configure_error = ""  # why the last configure failed (managed node), shown in /diagnostics
        # Done once the managed node has run its shutdown transition: main() then stops spinning and exits.
        self.finished = Future()

        self._inputs_group = MutuallyExclusiveCallbackGroup()
        self._diagnostics_group = MutuallyExclusiveCallbackGroup()
        # Diagnostics run in every state, so that a managed node reports why it is not fusing.
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self.create_timer(
            self._positive("diagnostics_period_s"), self._publish_diagnostics, callback_group=self._diagnostics_group
        )
        self.add_on_set_parameters_callback(self._on_set_parameters)
        if self._lifecycle:
            LifecycleNodeMixin.__init__(self, enable_communication_interface=True)
            self.get_logger().info(
                f"managed node, unconfigured: `ros2 lifecycle set {self.get_fully_qualified_name()} configure`, "
                "then `activate`"
            )
        else:
            self._configure()
            self._activate()

    # ------------------------------------------------------------------------------------------------
    # Lifecycle: the steps (both modes) and the transitions of a managed node

    def _configure(self) -> None:
        """Reads the parameters, builds and warms up the engine, creates the publishers and starts the worker
        threads; raises StartupError. Afterwards the node is configured but not fusing (no subscriptions)."""
        homography = self._read_homography()
        max_wait = self._param("sync.max_wait_s")
        if _runtime_value_problem("sync.max_wait_s", max_wait, ParameterType.PARAMETER_DOUBLE):
            raise StartupError(f"parameter sync.max_wait_s must be a finite number >= 0, got {max_wait!r}")
        pairer = ApproximateTimePairer(
            slop_s=self._positive("sync.slop_s"),
            queue_size=int(self._positive("sync.queue_size")),
            thermal_offset_s=float(self._param("sync.thermal_offset_s")),
            max_wait_s=float(max_wait),
        )
        input_qos, output_qos = self._qos("qos.input"), self._qos("qos.output")
        backend = str(self._param("sync.backend"))
        if backend == "message_filters":
            _import_message_filters()
        elif backend != "builtin":
            raise StartupError(f"parameter sync.backend must be 'builtin' or 'message_filters', got {backend!r}")

        # The model last: the checks above are cheap, loading and warming up a model is not.
        engine, self._given_engine = self._given_engine, None
        self._engine = engine if engine is not None else self._build_engine()
        try:
            self._engine.overlay_alpha = float(self._param("overlay_alpha"))
        except (TypeError, ValueError) as exc:
            raise StartupError(f"parameter overlay_alpha: {exc}") from None
        self._homography = homography
        self._publish_confidence = bool(self._param("publish_confidence"))
        self._pairer, self._backend = pairer, backend
        self._input_qos = input_qos
        self._reset_accounting()
        self._create_publishers(output_qos)
        self._start_workers()
        self.get_logger().info(
            f"configured: {self._engine.config.name} on {self._engine.device} ({self._engine.precision}); "
            f"inputs {self.resolve_topic_name(RGB_TOPIC)} + {self.resolve_topic_name(THERMAL_TOPIC)}, "
            f"slop {self._pairer.slop_s * 1e3:.0f} ms"
        )

    def _activate(self) -> None:
        """Publishes segmentation/info, then subscribes to the inputs: fusing starts."""
        self._publish_info()
        with self._publish_lock:
            self._active = True
        self._create_subscriptions()
        self.get_logger().info("active: fusing")

    def _deactivate(self) -> int:
        """Destroys the input subscriptions and stops publishing. The pairs not yet published (waiting in the
        pairer or the mailbox, or in a forward pass now) are dropped and counted in `dropped_on_deactivate`;
        returns how many were waiting. Frames still waiting for a partner are counted unmatched."""
        for subscription in self._input_subscriptions:
            self.destroy_subscription(subscription)
        self._input_subscriptions, self._synchronizer = [], None
        with self._publish_lock:
            self._active = False
        waiting = len(self._pairer.flush()) + self._mailbox.clear()
        self._count_inactive_drops(waiting)
        return waiting

    def _release(self, wait_s: float) -> bool:
        """Undoes `_configure`: stops the worker threads, destroys the publishers, releases the engine (and the
        GPU memory it held). Returns False when a forward pass was still running after `wait_s`: that pass keeps
        the engine alive until it returns."""
        ended = self._stop_workers(wait_s)
        for publisher in self._output_publishers:
            if self._lifecycle:
                self.destroy_lifecycle_publisher(publisher)
            else:
                self.destroy_publisher(publisher)
        self._output_publishers = []
        engine, self._engine, self._given_engine = self._engine, None, None
        if engine is not None:
            on_cuda = str(engine.device).startswith("cuda")
            compiled = getattr(engine, "compile_mode", "none") != "none"
            del engine
            if compiled:
                import torch

                torch.compiler.reset()  # compiled code and CUDA graph pools would keep the model's memory
            gc.collect()  # the engine may sit in reference cycles; the cache is only returned once it is freed
            if on_cuda:
                import torch

                torch.cuda.empty_cache()
        return ended

    def _run_step(self, transition: str, step: Callable[[], None]) -> tuple[TransitionCallbackReturn, str]:
        """Runs `step` for a transition: StartupError fails it, any other exception is an error; both are logged
        with the reason (rclpy would turn an exception into ERROR without a word). Returns the result and the
        reason ("" on success)."""
        try:
            step()
        except StartupError as exc:
            reason = f"{transition} failed: {exc}"
            result = TransitionCallbackReturn.FAILURE
        except Exception as exc:  # noqa: BLE001 - reported through the transition's result
            reason = f"{transition} failed ({type(exc).__name__}): {exc}"
            result = TransitionCallbackReturn.ERROR
        else:
            return TransitionCallbackReturn.SUCCESS, ""
        self.get_logger().error(reason)
        return result, reason

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        result, self._configure_error = self._run_step("configure", self._configure)
        if result != TransitionCallbackReturn.SUCCESS:
            self._release(RELEASE_WAIT_S)  # whatever the failed configure had built; the node stays unconfigured
            return result
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # enables the managed publishers
        if result == TransitionCallbackReturn.SUCCESS:
            result, _ = self._run_step("activate", self._activate)
        if result != TransitionCallbackReturn.SUCCESS:
            self._deactivate()
            super().on_deactivate(state)
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        waiting = self._deactivate()
        self.get_logger().info(f"inactive: not fusing ({waiting} waiting pair(s) dropped)")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        if not self._release(RELEASE_WAIT_S):
            self.get_logger().warning("a forward pass was still running at cleanup: its model is freed when it "
                                      "returns, and its result is dropped")
        self.get_logger().info("unconfigured: model released")
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._active:
            self._deactivate()
        self._release(RELEASE_WAIT_S)
        self.finished.set_result(True)
        self.get_logger().info("finalized")
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        # A transition raised: back to unconfigured with nothing held, ready for another configure.
        if self._active:
            self._deactivate()
        self._release(RELEASE_WAIT_S)
        return super().on_error(state)

    # ------------------------------------------------------------------------------------------------
    # Start-up

    def _param(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _positive(self, name: str) -> float:
        value = self._param(name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value) or value <= 0:
            raise StartupError(f"parameter {name} must be a positive number, got {value!r}")
        return float(value)

    def _build_engine(self) -> Any:
        # torch is imported here, not at module level, so `mafs_node --help`-style failures stay fast.
        from mafs_ros.checkpoint import CheckpointError
        from mafs_ros.engine import MafsEngine

        checkpoint = self._param("checkpoint") or None
        device = str(self._param("device"))
        if device.strip().lower() == "auto":
            import torch

            if not torch.cuda.is_available():
                self.get_logger().warning("device auto: no CUDA GPU available, running on CPU (slow for 'mafs')")
        try:
            engine = MafsEngine(
                checkpoint,
                device=device,
                precision=str(self._param("precision")),
                thermal_normalization=self._param("thermal_normalization") or None,
                size_policy=str(self._param("size_policy")),
                warmup=int(self._param("warmup")),
                compile_mode=str(self._param("compile_mode")),
            )
        except (CheckpointError, FileNotFoundError, ValueError, RuntimeError) as exc:
            raise StartupError(f"cannot start the model: {exc}") from exc
        expected = str(self._param("model_config"))
        if expected and expected != engine.config.name:
            raise StartupError(
                f"parameter model_config is {expected!r} but checkpoint {engine.checkpoint_path} holds "
                f"{engine.config.name!r}"
            )
        if engine.checkpoint_trained is False:
            self.get_logger().warning(f"checkpoint {engine.checkpoint_path} is UNTRAINED: outputs are meaningless")
        return engine

    def _read_homography(self) -> np.ndarray | None:
        """The thermal->RGB homography, or None for identity (no warp)."""
        try:
            return parse_homography(self._param("registration.homography"), "registration.homography")
        except ValueError as exc:
            raise StartupError(str(exc)) from None

    def _qos(self, prefix: str) -> QoSProfile:
        reliability = str(self._param(f"{prefix}.reliability"))
        if reliability not in RELIABILITIES:
            raise StartupError(
                f"parameter {prefix}.reliability must be one of {sorted(RELIABILITIES)}, got {reliability!r}"
            )
        depth = self._param(f"{prefix}.depth")
        if not isinstance(depth, int) or depth < 1:
            raise StartupError(f"parameter {prefix}.depth must be an integer >= 1, got {depth!r}")
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=RELIABILITIES[reliability])

    def _create_publishers(self, qos: QoSProfile) -> None:
        from mafs_ros.msg import FusedSegmentation, SegmentationInfo

        def publisher(msg_type: type, topic: str, profile: QoSProfile) -> Any:
            # A managed node's outputs are lifecycle publishers: they publish only while the node is active.
            create = self.create_lifecycle_publisher if self._lifecycle else self.create_publisher
            created = create(msg_type, topic, profile)
            self._output_publishers.append(created)
            return created

        self._fused_pub = publisher(Image, FUSED_TOPIC, qos)
        self._labels_pub = publisher(Image, LABELS_TOPIC, qos)
        self._overlay_pub = publisher(Image, OVERLAY_TOPIC, qos)
        self._confidence_pub = publisher(Image, CONFIDENCE_TOPIC, qos)
        self._result_pub = publisher(FusedSegmentation, RESULT_TOPIC, qos)
        self._camera_info_pub = publisher(CameraInfo, FUSED_CAMERA_INFO_TOPIC, qos)
        latched = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=1,
            reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        self._info_pub = publisher(SegmentationInfo, INFO_TOPIC, latched)
        self._result_type = FusedSegmentation
        self._info_type = SegmentationInfo

    def _create_subscriptions(self) -> None:
        qos = self._input_qos
        existing = set(self.subscriptions)
        if self._backend == "builtin":
            for topic, callback in ((RGB_TOPIC, self._on_rgb), (THERMAL_TOPIC, self._on_thermal)):
                events = SubscriptionEventCallbacks(
                    incompatible_qos=lambda info, topic=topic: self._on_incompatible_qos(topic, info)
                )
                self.create_subscription(
                    Image, topic, callback, qos, callback_group=self._inputs_group, event_callbacks=events
                )
        else:
            self._subscribe_message_filters(qos)
        self.create_subscription(
            CameraInfo, CAMERA_INFO_TOPIC, self._on_camera_info, qos, callback_group=self._inputs_group
        )
        # Found in the node rather than kept from the calls: message_filters creates its subscriptions itself.
        self._input_subscriptions = [s for s in self.subscriptions if s not in existing]

    def _subscribe_message_filters(self, qos: QoSProfile) -> None:
        message_filters = _import_message_filters()
        if self._pairer.thermal_offset_s != 0.0:
            self.get_logger().warning("sync.thermal_offset_s is ignored by the message_filters backend")
        subscribers = [
            message_filters.Subscriber(self, Image, topic, qos_profile=qos, callback_group=self._inputs_group)
            for topic in (RGB_TOPIC, THERMAL_TOPIC)
        ]
        self._synchronizer = message_filters.ApproximateTimeSynchronizer(
            subscribers, queue_size=self._pairer.queue_size, slop=self._pairer.slop_s
        )
        self._synchronizer.registerCallback(self._on_synchronized_pair)

    def _reset_accounting(self) -> None:
        """Fresh counters for a new configuration (frame accounting, rates, loss, latency)."""
        self._input_rates = {RGB_TOPIC: _RateCounter(), THERMAL_TOPIC: _RateCounter()}
        self._loss = {RGB_TOPIC: FrameLossEstimator(), THERMAL_TOPIC: FrameLossEstimator()}
        self._incompatible_qos: dict[str, str] = {}  # input topic -> the last incompatibility, while it lasts
        self._incompatible_qos_events = 0
        self._output_rate = _RateCounter()
        self._rejected: Counter[str] = Counter()  # reason -> frames (or pairs: PAIR_REJECTIONS) refused
        self._repaired_non_finite = 0  # 32FC1 thermal frames fused after replacing NaN/inf pixels
        self._dropped_on_deactivate = 0  # pairs never published because the node was deactivated
        self._errors_since_report = 0
        self._last_inference_error = ""
        self._inference_ms: deque[float] = deque(maxlen=300)
        self._latency_ms: deque[float] = deque(maxlen=300)
        self._overhead_ms: deque[float] = deque(maxlen=300)
        self._camera_info: CameraInfo | None = None
        self._last_report = time.monotonic()

    def _start_workers(self) -> None:
        # Each thread gets its own stop event and mailbox: a worker still finishing a forward pass after cleanup
        # must not pick up the pairs of the next configuration.
        self._mailbox = _Mailbox()
        self._stop = threading.Event()
        self._deadline_wakeup = threading.Event()
        self._worker = threading.Thread(
            target=self._inference_loop, args=(self._stop, self._mailbox), name="mafs-inference", daemon=True
        )
        self._worker.start()
        self._deadline_thread = threading.Thread(
            target=self._deadline_loop, args=(self._stop, self._deadline_wakeup), name="mafs-pairing", daemon=True
        )
        self._deadline_thread.start()

    def _stop_workers(self, timeout_s: float) -> bool:
        """Stops the worker threads; waits at most `timeout_s` for a running forward pass, on the first call only.
        Returns whether the inference worker has ended."""
        if self._worker is None:
            return True
        if not self._stop.is_set():
            self._stop.set()
            self._mailbox.close()
            self._deadline_wakeup.set()
            if self._worker is not threading.current_thread():
                self._worker.join(timeout_s)
        return not self._worker.is_alive()

    def _count_inactive_drops(self, pairs: int) -> None:
        if pairs:
            with self._stats_lock:
                self._dropped_on_deactivate += pairs

    def _publish_info(self) -> None:
        info = self._info_type()
        info.header.stamp = self.get_clock().now().to_msg()
        path = getattr(self._engine, "checkpoint_path", None)
        info.model_id = path.name if path is not None else "in-memory model"
        info.model_config = self._engine.config.name
        info.class_names = list(self._engine.class_names)
        info.palette = np.asarray(self._engine.palette, dtype=np.uint8).reshape(-1).tolist()
        info.ignore_id = IGNORE_LABEL
        self._info_pub.publish(info)

    # ------------------------------------------------------------------------------------------------
    # Input callbacks (keep them short: the pairing lock and the executor thread are shared)

    def _accept(self, topic: str, msg: Image) -> _Frame | None:
        """Decode an input message once, here, so a bad one is counted per topic and never paired.

        rgb8/bgr8/mono16/... decode to views of the message buffer, so this stays cheap in the callback.
        """
        self._input_rates[topic].tick()
        self._loss[topic].add(_stamp_ns(msg))
        try:
            image, repaired = (visible_from_image(msg), 0) if topic == RGB_TOPIC else thermal_with_repairs(msg)
        except ImageConversionError as exc:
            self._reject(exc.reason, f"{self.resolve_topic_name(topic)}: {exc}", throttle_key=f"{exc.reason}:{topic}")
            return None
        if repaired:
            with self._stats_lock:
                self._repaired_non_finite += 1
        return _Frame(msg, image)

    def _on_rgb(self, msg: Image) -> None:
        start = time.perf_counter()
        frame = self._accept(RGB_TOPIC, msg)
        if frame is not None:
            self._hand_over(frame, self._pairer.add_rgb(_stamp_ns(msg), frame, time.monotonic_ns()), start)

    def _on_thermal(self, msg: Image) -> None:
        start = time.perf_counter()
        frame = self._accept(THERMAL_TOPIC, msg)
        if frame is not None:
            self._hand_over(frame, self._pairer.add_thermal(_stamp_ns(msg), frame, time.monotonic_ns()), start)
            self._deadline_wakeup.set()  # the frame may wait for a nearer RGB frame until its deadline

    def _hand_over(self, frame: _Frame | None, pairs: list[Pair], start: float) -> None:
        # Set before the pair reaches the worker, which adds it to the pair's overhead.
        if frame is not None:
            frame.callback_ms = (time.perf_counter() - start) * 1e3
        if not self._active:  # a frame or deadline that raced with deactivate
            self._count_inactive_drops(len(pairs))
            return
        for pair in pairs:
            self._mailbox.put(pair)

    def _deadline_loop(self, stop: threading.Event, wakeup: threading.Event) -> None:
        """Decides the pairs whose sync.max_wait_s runs out while no frame arrives (an isolated or a last pair).

        The monotonic clock, not the ROS clock: the wait is real time even under sim time, and the callbacks
        stamp frames with the same clock, so a deadline that passes just before a frame arrives is decided the
        same way here or in that frame's add_* (as replay decides it)."""
        while not stop.is_set():
            wakeup.clear()
            deadline = self._pairer.next_deadline_ns()
            if deadline is None:
                wakeup.wait(0.5)
                continue
            delay_s = (deadline - time.monotonic_ns()) / 1e9
            if delay_s > 0:
                wakeup.wait(delay_s)
                continue
            self._hand_over(None, self._pairer.expire(time.monotonic_ns()), time.perf_counter())

    def _on_synchronized_pair(self, rgb: Image, thermal: Image) -> None:
        start = time.perf_counter()
        rgb_frame, thermal_frame = self._accept(RGB_TOPIC, rgb), self._accept(THERMAL_TOPIC, thermal)
        if rgb_frame is not None and thermal_frame is not None:
            pair = Pair(rgb_frame, thermal_frame, _stamp_ns(rgb), _stamp_ns(thermal))
            self._pairer.count_external_pair(pair)
            self._hand_over(rgb_frame, [pair], start)  # one callback for both frames: counted once, on RGB

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg

    def _on_incompatible_qos(self, topic: str, info: Any) -> None:
        """A publisher on an input topic whose QoS cannot match ours: it will never deliver a frame."""
        # rclpy hands over the C enum (RMW_QOS_POLICY_RELIABILITY); the QoSProfile attribute is "reliability".
        policy = getattr(info.last_policy_kind, "name", str(info.last_policy_kind)).lower()
        problem = self._qos_mismatch(topic, policy.removeprefix("rmw_qos_policy_"))
        with self._stats_lock:
            self._incompatible_qos_events += 1
            self._incompatible_qos[topic] = problem
        self._log_throttled(f"incompatible_qos:{topic}", problem)

    def _qos_mismatch(self, topic: str, policy: str) -> str:
        """Names the topic and both sides of an incompatible policy (the publisher's from the graph)."""
        resolved = self.resolve_topic_name(topic)
        offered = "unknown"
        for publisher in self.get_publishers_info_by_topic(resolved):
            compatibility, _ = qos_check_compatible(publisher.qos_profile, self._input_qos)
            if compatibility == QoSCompatibility.ERROR:
                offered = _policy_text(publisher.qos_profile, policy)
                break
        return (f"incompatible QoS on {resolved}: a publisher offers {policy} {offered}, this node requests "
                f"{policy} {_policy_text(self._input_qos, policy)}; no frame of it will arrive (qos.input.* "
                "parameters)")

    def _incompatible_publishers(self) -> dict[str, str]:
        """The input topics with an incompatible publisher still there, and what is wrong."""
        with self._stats_lock:
            reported = dict(self._incompatible_qos)
        for topic in reported:
            resolved = self.resolve_topic_name(topic)
            if not any(qos_check_compatible(p.qos_profile, self._input_qos)[0] == QoSCompatibility.ERROR
                       for p in self.get_publishers_info_by_topic(resolved)):
                with self._stats_lock:
                    self._incompatible_qos.pop(topic, None)
                del reported[topic]
        return reported

    def _reject(self, reason: str, message: str, throttle_key: str | None = None) -> None:
        with self._stats_lock:
            self._rejected[reason] += 1
        self._log_throttled(throttle_key or reason, message)

    def _log_throttled(self, key: str, message: str, period_s: float = 5.0) -> None:
        # rclpy's throttle_duration_sec throttles a call site, so a bad RGB encoding would silence a bad thermal
        # one; here each key (reason, and topic where there is one) has its own throttle.
        now = time.monotonic()
        if now - self._throttle.get(key, -1e9) >= period_s:
            self._throttle[key] = now
            self.get_logger().error(message)

    # ------------------------------------------------------------------------------------------------
    # Inference worker

    def _inference_loop(self, stop: threading.Event, mailbox: _Mailbox) -> None:
        while not stop.is_set():
            pair = mailbox.take(timeout_s=0.2)
            if pair is None:
                continue
            try:
                self._process(pair)
            except Exception as exc:  # noqa: BLE001 - a failed frame must never stop the node
                if stop.is_set() or not rclpy.ok(context=self.context):
                    return
                message = f"inference failed ({type(exc).__name__}): {exc}"
                with self._stats_lock:
                    self._errors_since_report += 1
                    # Its own slot: the ERROR status must name this failure, not a bad input frame since.
                    self._last_inference_error = message
                self._reject("inference_error", message)

    def _process(self, pair: Pair) -> None:
        start = time.perf_counter()
        rgb_msg: Image = pair.rgb.msg
        rgb, thermal = pair.rgb.image, pair.thermal.image
        height, width = rgb.shape[:2]
        thermal = warp_thermal_to_rgb(thermal, self._homography, (width, height))
        if thermal.shape[:2] != (height, width):
            self._reject(
                "size_mismatch",
                f"thermal {thermal.shape[1]}x{thermal.shape[0]} and RGB {width}x{height} differ; set "
                "registration.homography (thermal -> RGB pixels) to register them",
            )
            return
        registered = time.perf_counter()

        want_overlay = self._overlay_pub.get_subscription_count() > 0
        want_confidence = self._publish_confidence
        result = self._engine.infer(rgb, thermal, want_confidence=want_confidence, want_overlay=want_overlay)
        inferred = time.perf_counter()

        header = rgb_msg.header
        fused = numpy_to_image(result.fused_rgb, "rgb8", header=header)
        labels = numpy_to_image(result.labels, "mono8", header=header)
        with self._publish_lock:
            if not self._active:  # deactivated during the forward pass
                self._count_inactive_drops(1)
                return
            if self._fused_pub.get_subscription_count() > 0:
                self._fused_pub.publish(fused)
            self._labels_pub.publish(labels)
            if want_overlay:
                self._overlay_pub.publish(numpy_to_image(result.overlay, "rgb8", header=header))
            confidence = Image()
            if result.confidence is not None:
                confidence = numpy_to_image(result.confidence.astype(np.float32, copy=False), "32FC1", header=header)
                if self._confidence_pub.get_subscription_count() > 0:
                    self._confidence_pub.publish(confidence)
            self._result_pub.publish(self._result_message(pair, fused, labels, confidence, result.timings))
            if self._camera_info is not None and self._camera_info_pub.get_subscription_count() > 0:
                info = copy.copy(self._camera_info)  # the cached message may be replaced concurrently; never edit it
                info.header = header
                self._camera_info_pub.publish(info)
        done = time.perf_counter()

        self._output_rate.tick()
        latency_ms = (self.get_clock().now().nanoseconds - pair.rgb_stamp_ns) / 1e6
        with self._stats_lock:
            self._inference_ms.append(sum(result.timings.values()))
            self._latency_ms.append(latency_ms)
            callbacks_ms = pair.rgb.callback_ms + pair.thermal.callback_ms
            self._overhead_ms.append(callbacks_ms + ((registered - start) + (done - inferred)) * 1e3)

    def _result_message(self, pair: Pair, fused: Image, labels: Image, confidence: Image, timings: dict) -> Any:
        result = self._result_type()
        result.header = fused.header
        result.fused = fused
        result.labels = labels
        result.confidence = confidence
        result.rgb_stamp = pair.rgb.msg.header.stamp
        result.thermal_stamp = pair.thermal.msg.header.stamp
        result.preprocess_ms = float(timings.get("preprocess_ms", 0.0))
        result.inference_ms = float(timings.get("inference_ms", 0.0))
        result.postprocess_ms = float(timings.get("postprocess_ms", 0.0))
        return result

    # ------------------------------------------------------------------------------------------------
    # Diagnostics and parameters

    def overhead_ms(self) -> list[float]:
        """The node's own milliseconds for each recent published pair, oldest first: both frames' subscription
        callbacks (decoding, pairing), registration, building and publishing the outputs; the model excluded."""
        with self._stats_lock:
            return list(self._overhead_ms)

    def counters(self) -> dict[str, Any]:
        """Frame accounting (also the body of /diagnostics): received, paired, published, dropped, rejected.

        Once the node is idle (no pair waiting in the mailbox or being fused) every frame is accounted for:
            received_rgb + received_thermal == frames rejected (reasons outside PAIR_REJECTIONS)
                + 2 * pairing.matched + pairing.unmatched_rgb + pairing.unmatched_thermal + queued
            pairing.matched == published + dropped + pairs rejected (reasons in PAIR_REJECTIONS)
        dropped includes dropped_on_deactivate, the pairs a deactivation kept from being published.
        A managed node reports its current configuration, or after cleanup its last one.
        repaired_non_finite counts thermal frames that were fused after their NaN/inf pixels were replaced.
        rgb_frames_missed / thermal_frames_missed estimate the frames that never arrived (gaps in the header
        stamps, see ros.frame_loss); they are outside the identities, which count received frames.
        """
        if self._pairer is None:
            raise RuntimeError("the node has not been configured yet")
        stats = self._pairer.stats.as_dict()
        with self._stats_lock:
            rejected = dict(self._rejected)
            repaired = self._repaired_non_finite
            qos_events = self._incompatible_qos_events
            dropped_on_deactivate = self._dropped_on_deactivate
        return {
            "received_rgb": self._input_rates[RGB_TOPIC].total,
            "received_thermal": self._input_rates[THERMAL_TOPIC].total,
            "rgb_frames_missed": self._loss[RGB_TOPIC].missed,
            "thermal_frames_missed": self._loss[THERMAL_TOPIC].missed,
            "incompatible_qos_events": qos_events,
            "published": self._output_rate.total,
            "dropped": self._mailbox.drops + dropped_on_deactivate,
            "dropped_on_deactivate": dropped_on_deactivate,
            "rejected": rejected,
            "repaired_non_finite": repaired,
            "queued": self._pairer.queued,
            "pairing": stats,
        }

    def lifecycle_state(self) -> str:
        """The managed node's state label (unconfigured, inactive, active, finalized, or a transition's);
        "active" for a plain node."""
        # rclpy has no public accessor for it; its own lifecycle services read the same attribute.
        return self._state_machine.current_state[1] if self._lifecycle else "active"

    def _publish_unconfigured_diagnostics(self) -> None:
        state = self.lifecycle_state()
        if self._configure_error:
            level, message = DiagnosticStatus.ERROR, f"{state}: {self._configure_error}"
        else:
            level, message = DiagnosticStatus.OK, f"{state}: no model loaded, not fusing"
        status = DiagnosticStatus(
            level=level, name=f"{self.get_fully_qualified_name()}: fusion and segmentation", message=message,
            values=[KeyValue(key="lifecycle_state", value=state)],
        )
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [status]
        self._diagnostics_pub.publish(array)

    def _publish_diagnostics(self) -> None:
        engine = self._engine  # once: a cleanup on another executor thread may release it meanwhile
        if engine is None:
            self._publish_unconfigured_diagnostics()
            return
        now = time.monotonic()
        elapsed = max(now - self._last_report, 1e-6)
        self._last_report = now
        counters = self.counters()
        with self._stats_lock:
            inference = list(self._inference_ms)
            latency = list(self._latency_ms)
            overhead = list(self._overhead_ms)
            errors, self._errors_since_report = self._errors_since_report, 0
            last_error = self._last_inference_error
        rates = {topic: counter.take() / elapsed for topic, counter in self._input_rates.items()}
        output_rate = self._output_rate.take() / elapsed
        pairing = counters["pairing"]

        incompatible = self._incompatible_publishers() if self._backend == "builtin" else {}
        lossy = {topic: loss.loss_percent() for topic, loss in self._loss.items()
                 if loss.recent_frames() >= LOSS_MIN_FRAMES and loss.loss_percent() > LOSS_WARN_PERCENT}

        level, message = DiagnosticStatus.OK, "fusing"
        if not self._active:
            message = f"{self.lifecycle_state()}: model loaded, not fusing"
        elif errors:
            level, message = DiagnosticStatus.ERROR, f"{errors} inference error(s): {last_error}"
        elif incompatible:
            level, message = DiagnosticStatus.WARN, "; ".join(incompatible.values())
        elif lossy:
            level, message = DiagnosticStatus.WARN, "frames lost before the node: " + ", ".join(
                f"{self.resolve_topic_name(t)} {p:.0f} %" for t, p in lossy.items()
            ) + f" of the recent frames (gaps in the header stamps); {TRANSPORT_HINT}"
        elif min(rates.values()) == 0.0:
            level, message = DiagnosticStatus.WARN, "waiting for input on " + ", ".join(
                self.resolve_topic_name(t) for t, r in rates.items() if r == 0.0
            )
        elif output_rate == 0.0:
            level, message = DiagnosticStatus.WARN, "inputs arrive but no pair is fused (check sync.slop_s, " \
                "sync.thermal_offset_s and the rejected counters)"

        values = {
            "rgb_rate_hz": rates[RGB_TOPIC],
            "thermal_rate_hz": rates[THERMAL_TOPIC],
            "output_rate_hz": output_rate,
            "inference_ms_p50": _percentile(inference, 50),
            "inference_ms_p95": _percentile(inference, 95),
            "latency_ms_p50": _percentile(latency, 50),
            "latency_ms_p95": _percentile(latency, 95),
            "node_overhead_ms_p50": _percentile(overhead, 50),
            "pair_skew_ms_signed_mean": pairing.get("skew_ms_signed_mean", float("nan")),
            "pair_skew_ms_p50": pairing.get("skew_ms_p50", float("nan")),
            "pair_skew_ms_max": pairing.get("skew_ms_max", float("nan")),
            "received_rgb": counters["received_rgb"],
            "received_thermal": counters["received_thermal"],
            "rgb_frames_missed": counters["rgb_frames_missed"],
            "thermal_frames_missed": counters["thermal_frames_missed"],
            "rgb_loss_percent": self._loss[RGB_TOPIC].loss_percent(),
            "thermal_loss_percent": self._loss[THERMAL_TOPIC].loss_percent(),
            "incompatible_qos_events": counters["incompatible_qos_events"],
            "pairs_matched": pairing.get("matched", 0),
            "unmatched_rgb": pairing.get("unmatched_rgb", 0),
            "unmatched_thermal": pairing.get("unmatched_thermal", 0),
            "queued": counters["queued"],
            "published": counters["published"],
            "dropped": counters["dropped"],
            "repaired_non_finite": counters["repaired_non_finite"],
            "rejected_total": sum(counters["rejected"].values()),
            **{f"rejected.{reason}": n for reason, n in sorted(counters["rejected"].items())},
            "device": str(engine.device),
            "precision": str(engine.precision),
            "model": engine.config.name,
        }
        if self._lifecycle:
            values["lifecycle_state"] = self.lifecycle_state()
            values["dropped_on_deactivate"] = counters["dropped_on_deactivate"]
        status = DiagnosticStatus(
            level=level, name=f"{self.get_fully_qualified_name()}: fusion and segmentation", message=message,
            hardware_id=str(engine.device),
            values=[KeyValue(key=key, value=_format(value)) for key, value in values.items()],
        )
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [status]
        self._diagnostics_pub.publish(array)

    def _on_set_parameters(self, params: list) -> SetParametersResult:
        configured = self._engine is not None
        # A managed node reads these at configure: they may change until then, and again after a cleanup.
        when, restart = ("configure", "cleanup the node") if self._lifecycle else ("start-up", "restart the node")
        for param in params:
            if param.name in CREATION_PARAMETERS:
                return SetParametersResult(
                    successful=False, reason=f"{param.name} is read at start-up; restart the node to change it"
                )
            if param.name in PARAMETERS and param.name not in RUNTIME_PARAMETERS and configured:
                return SetParametersResult(
                    successful=False, reason=f"{param.name} is read at {when}; {restart} to change it"
                )
            if param.name.startswith("sync.") and configured and self._backend == "message_filters":
                return SetParametersResult(
                    successful=False, reason=f"{param.name} cannot change under sync.backend message_filters (its "
                                             f"synchronizer is built at {when}); {restart} to change it"
                )
            problem = _runtime_value_problem(param.name, param.value, param.type_)
            if problem:
                return SetParametersResult(successful=False, reason=f"{param.name} {problem}, got {param.value!r}")
        if not configured:
            return SetParametersResult(successful=True)  # the next configure reads them
        for param in params:
            if param.name == "overlay_alpha":
                self._engine.overlay_alpha = float(param.value)
            elif param.name == "publish_confidence":
                self._publish_confidence = bool(param.value)
            elif param.name == "sync.slop_s":
                self._pairer.retune(slop_s=float(param.value))
            elif param.name == "sync.thermal_offset_s":
                self._pairer.retune(thermal_offset_s=float(param.value))
            elif param.name == "sync.max_wait_s":
                self._hand_over(None, self._pairer.retune(max_wait_s=float(param.value)), time.perf_counter())
                self._deadline_wakeup.set()
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------------------------------------
    # Shutdown

    def stop(self, timeout_s: float = 2.0) -> bool:
        """Stop the inference worker: waits at most `timeout_s` for a running forward pass, on the first call only
        (destroy_node calls it again). Returns whether the worker has ended (also one left running by a cleanup or
        shutdown transition)."""
        return self._stop_workers(timeout_s)

    def destroy_node(self) -> None:
        self.stop()
        super().destroy_node()


def _runtime_value_problem(name: str, value: Any, kind: int) -> str | None:
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
    return None


def _import_message_filters() -> Any:
    try:
        import message_filters
    except ImportError:
        raise StartupError(
            "sync.backend 'message_filters' needs the ROS message_filters package, which is not installed "
            "here; use sync.backend 'builtin' (same pairing as `mafs replay`)"
        ) from None
    return message_filters


def _policy_text(qos: QoSProfile, policy: str) -> str:
    value = getattr(qos, policy, None)
    return value.name if hasattr(value, "name") else str(value)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if not np.isfinite(value) else f"{value:.3f}"
    return str(value)


def main(args: list[str] | None = None) -> int:
    """Entry point of `mafs_node` / `ros2 run mafs_ros mafs_node`. Exit codes: 0 clean shutdown, 2 start-up error."""
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] [%(name)s]: %(message)s")
    # Before rclpy.init: Fast DDS reads its profile when the process's first participant is created.
    transport = use_large_image_profile()
    # rclpy's default signal handlers turn SIGINT and SIGTERM into a context shutdown: spin() then returns.
    rclpy.init(args=args)
    node = None
    try:
        node = MafsNode()
        node.get_logger().info(transport)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        # Until SIGINT/SIGTERM, or until a managed node has run its shutdown transition.
        executor.spin_until_future_complete(node.finished)
    except StartupError as exc:
        print(f"[FATAL] [{NODE_NAME}]: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        worker_ended = node.stop() if node is not None else True
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        if not worker_ended:
            # A forward pass cannot be interrupted, and finalising the interpreter under it aborts the process in
            # torch's thread pool ("terminate called without an active exception"). Everything ROS is shut down
            # by now: leave without finalising.
            logging.getLogger(NODE_NAME).warning("inference still running at shutdown; exiting without waiting")
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
