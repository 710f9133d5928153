"""The MAFS ROS 2 node: paired thermal + RGB images in, fused image and semantic labels out.

Data flow (one process, a `SingleThreadedExecutor` plus the inference thread):

    rgb/image ─────┐ (subscription callbacks, group "inputs": check the message, pair by stamp)
    thermal/image ─┴─► ApproximateTimePairer ─► one-slot mailbox (a newer pair overwrites it: a drop)
                                                    │
                         inference worker thread ◄──┘ register thermal, MafsEngine.infer, publish
    diagnostics timer (group "diagnostics") ─► /diagnostics about once per second

The callbacks are short, so one executor thread is enough; rclpy's MultiThreadedExecutor would cost far more: in
rclpy 9.1.2 (Kilted) it re-queues tasks it already queued and keeps the GIL busy doing so (rclpy#1452), which on
two cores lost most 30 Hz frames in the soak test. The callback groups keep the callbacks apart when the node is
spun by a multi-threaded one.

This module is the ROS plumbing; the parts live beside it: `parameters` (declaration, checks, runtime changes),
`diagnostics` (frame accounting and status), `outputs` (publishers), `worker` (the threads), `lifecycle` (the
managed node's transitions), `results` (the result messages, shared with replay), `frames` (decoding inputs).

Start-up is two steps, `_configure` (parameters, model, publishers, threads) and `_activate` (subscriptions,
fusing). A plain node (parameter `lifecycle` false) runs both in its constructor; a managed node (`lifecycle` true)
runs them from its lifecycle transitions, and `_deactivate` / `_release` undo them.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time
import traceback
from typing import Any

import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy._rclpy_pybind11 import RCLError
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNodeMixin, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.task import Future

try:
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import SubscriptionEventCallbacks
from sensor_msgs.msg import CameraInfo, Image

from ..constants import CAMERA_INFO_TOPIC, DIAGNOSTICS_TOPIC, NODE_NAME, RGB_TOPIC, THERMAL_TOPIC
from ..errors import MafsError
from ..stamps import stamp_ns
from ..stream.conversions import ImageConversionError
from ..stream.frames import InputFrame, decode_input
from ..stream.pairing import ApproximateTimePairer, Pair
from ..stream.degraded import Alone, SilenceWatch
from ..stream.processing import process_alone, process_pair
from ..stream.registration import SizeMismatchError
from . import diagnostics
from .diagnostics import FrameAccounting
from .inputs import InputSubscriptions
from .lifecycle import ManagedSteps
from .logging_bridge import route_package_logging, unroute
from .outputs import Outputs
from .parameters import (
    StartupError,
    change_refusal,
    declare_parameters,
    engine_from_parameters,
    positive,
    read_settings,
    usage,
)
from .transport import use_large_image_profile
from .worker import Workers


class MafsNode(ManagedSteps, Node):
    """ROS 2 node around `MafsEngine`. Pass `engine` to use an already-built one (tests); otherwise the
    engine is built from the parameters.

    Parameter `lifecycle` false (the default): the node configures and activates itself here and raises
    StartupError for bad parameters, checkpoint or device. `lifecycle` true: a managed node; it starts unconfigured
    and `<node>/change_state` drives it (see `lifecycle`), a given `engine` serving the first configure. Either
    way the same `_configure` / `_activate` steps start it.
    """

    def __init__(self, *, engine: Any = None, **node_kwargs: Any) -> None:
        Node.__init__(self, NODE_NAME, **node_kwargs)
        self._log_handler = route_package_logging(self.get_logger())
        self._lifecycle = declare_parameters(self)
        self._given_engine = engine
        self._engine: Any = None  # None while unconfigured
        self._pairer: ApproximateTimePairer | None = None  # kept after cleanup: counters() reports the last run
        self._accounting = FrameAccounting()
        self._workers: Workers | None = None  # kept after cleanup: stop() reports whether its thread ended
        self._outputs: Outputs | None = None
        self._input_subscriptions: list[Any] = []  # camera info, and the cameras under message_filters
        self._inputs: InputSubscriptions | None = None  # the cameras under the builtin pairing
        self._synchronizer = None
        self._camera_info: CameraInfo | None = None
        self._watch: SilenceWatch | None = None  # while active with sync.degraded_after_s > 0
        # Fusing happens only while _active; the worker checks it under this lock right before publishing, so
        # deactivate waits for a publish in progress but never for a forward pass.
        self._active = False
        self._publish_lock = threading.Lock()
        self._throttle: dict[str, float] = {}
        # Done once the managed node has run its shutdown transition: main() then stops spinning and exits.
        self.finished = Future()

        self._inputs_group = MutuallyExclusiveCallbackGroup()
        # Diagnostics run in every state, so that a managed node reports why it is not fusing.
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self.create_timer(positive("diagnostics_period_s", self._param("diagnostics_period_s")),
                          self._publish_diagnostics, callback_group=MutuallyExclusiveCallbackGroup())
        self.add_on_set_parameters_callback(self._on_set_parameters)
        if self._lifecycle:
            LifecycleNodeMixin.__init__(self, enable_communication_interface=True)
            if self._param("autostart"):
                # The same transitions a manager would request: a failed configure leaves the node unconfigured,
                # its reason in /diagnostics, ready for another configure.
                if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                    self.trigger_activate()
            else:
                self.get_logger().info(
                    f"managed node, unconfigured: `ros2 lifecycle set {self.get_fully_qualified_name()} configure`, "
                    "then `activate` (or a lifecycle manager)"
                )
        else:
            self._configure()
            self._activate()

    # ------------------------------------------------------------------------------------------------
    # The steps of start and stop (lifecycle.ManagedSteps runs them as transitions of a managed node)

    def _configure(self) -> None:
        """Reads the parameters, builds and warms up the engine, creates the publishers and starts the worker
        threads; raises StartupError. Afterwards the node is configured but not fusing (no subscriptions)."""
        settings = self._settings = read_settings(self._param)
        pairer = ApproximateTimePairer(slop_s=settings.slop_s, queue_size=settings.queue_size,
                                       thermal_offset_s=settings.thermal_offset_s, max_wait_s=settings.max_wait_s)
        if settings.backend == "message_filters":
            _import_message_filters()
        # The model last: the checks above are cheap, loading and warming up a model is not.
        engine, self._given_engine = self._given_engine, None
        self._engine = engine if engine is not None else engine_from_parameters(self._param,
                                                                               self.get_logger().warning)
        try:
            self._engine.overlay_alpha = float(settings.overlay_alpha)
        except (TypeError, ValueError) as exc:
            raise StartupError(f"parameter overlay_alpha: {exc}") from None
        self._publish_confidence = settings.publish_confidence
        self._pairer = pairer
        self._accounting = FrameAccounting()
        self._camera_info = None
        self._outputs = Outputs(self, settings.output_qos, managed=self._lifecycle, jpeg_quality=settings.jpeg_quality)
        self._workers = Workers(self._process, self._inference_failed, pairer.next_deadline_ns,
                                lambda: self._hand_over(None, pairer.expire(time.monotonic_ns()), time.perf_counter()))
        self.get_logger().info(
            f"configured: {self._engine.config.name} on {self._engine.device} ({self._engine.precision}); "
            f"inputs {self.resolve_topic_name(RGB_TOPIC)} + {self.resolve_topic_name(THERMAL_TOPIC)}, "
            f"slop {pairer.slop_s * 1e3:.0f} ms"
        )

    def _activate(self) -> None:
        """Publishes segmentation/info, then subscribes to the inputs: fusing starts."""
        self._outputs.publish_info(self._engine, self.get_clock().now().to_msg())
        degraded_after_s = self._settings.degraded_after_s
        degraded = degraded_after_s > 0 and self._settings.backend == "builtin"  # message_filters pairs only
        self._watch = SilenceWatch(degraded_after_s, time.monotonic_ns()) if degraded else None
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
        if self._inputs is not None:
            self._inputs.close()
        self._input_subscriptions, self._synchronizer, self._inputs = [], None, None
        with self._publish_lock:
            self._active = False
        waiting = len(self._pairer.flush()) + self._workers.mailbox.clear()
        self._accounting.dropped_inactive(waiting)
        return waiting

    def _release(self, wait_s: float) -> bool:
        """Undoes `_configure`: stops the worker threads, destroys the publishers, releases the engine (and the
        GPU memory it held). Returns False when a forward pass was still running after `wait_s`: that pass keeps
        the engine alive until it returns."""
        ended = self.stop(wait_s)
        if self._outputs is not None:
            self._outputs.destroy()
            self._outputs = None
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

    def _param(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _create_subscriptions(self) -> None:
        qos = self._settings.input_qos
        if self._settings.backend == "builtin":
            settings = self._settings
            self._inputs = InputSubscriptions(
                {RGB_TOPIC: settings.rgb_transport, THERMAL_TOPIC: settings.thermal_transport},
                {RGB_TOPIC: self._on_rgb, THERMAL_TOPIC: self._on_thermal},
                self._subscribe_camera, self.destroy_subscription, self._publisher_types, self.resolve_topic_name)
            self.get_logger().info("inputs: " + ", ".join(f"{self._inputs.topic(t)} {self._inputs.describe(t)}"
                                                          for t in (RGB_TOPIC, THERMAL_TOPIC)))
        existing = set(self.subscriptions)
        if self._settings.backend != "builtin":
            self._subscribe_message_filters(qos)
        self.create_subscription(
            CameraInfo, CAMERA_INFO_TOPIC, self._on_camera_info, qos, callback_group=self._inputs_group
        )
        # Found in the node rather than kept from the calls: message_filters creates its subscriptions itself.
        self._input_subscriptions = [s for s in self.subscriptions if s not in existing]

    def _subscribe_camera(self, msg_type: type, topic: str, callback: Any) -> Any:
        events = SubscriptionEventCallbacks(incompatible_qos=lambda info: self._on_incompatible_qos(topic, info))
        return self.create_subscription(msg_type, topic, callback, self._settings.input_qos,
                                        callback_group=self._inputs_group, event_callbacks=events)

    def _publisher_types(self, topic: str) -> list[str]:
        return [info.topic_type for info in self.get_publishers_info_by_topic(topic)]

    def _subscribe_message_filters(self, qos: Any) -> None:
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

    # ------------------------------------------------------------------------------------------------
    # Input callbacks (keep them short: the pairing lock and the executor thread are shared)

    def _accept(self, topic: str, msg: Image) -> InputFrame | None:
        """Decode an input message once, here, so a bad one is counted per topic and never paired.

        rgb8/bgr8/mono16/... decode to views of the message buffer, so this stays cheap in the callback.
        """
        self._accounting.frame_received(topic, stamp_ns(msg.header))
        try:
            image, repaired = decode_input(msg, visible=topic == RGB_TOPIC)
        except ImageConversionError as exc:
            self._reject(exc.reason, f"{self.resolve_topic_name(topic)}: {exc}", throttle_key=f"{exc.reason}:{topic}")
            return None
        if repaired:
            self._accounting.repaired()
        return InputFrame(msg, image, time.monotonic_ns())

    def _on_rgb(self, msg: Image) -> None:
        start = time.perf_counter()
        frame = self._accept(RGB_TOPIC, msg)
        if frame is not None and not self._went_alone("rgb", frame, start):
            self._hand_over(frame, self._pairer.add_rgb(stamp_ns(msg.header), frame, frame.receive_ns), start)

    def _on_thermal(self, msg: Image) -> None:
        start = time.perf_counter()
        frame = self._accept(THERMAL_TOPIC, msg)
        if frame is not None and not self._went_alone("thermal", frame, start):
            self._hand_over(frame, self._pairer.add_thermal(stamp_ns(msg.header), frame, frame.receive_ns), start)
            self._workers.wake_deadline()  # the frame may wait for a nearer RGB frame until its deadline

    def _went_alone(self, camera: str, frame: InputFrame, start: float) -> bool:
        """Hands `frame` over to be fused alone if the other camera is silent (sync.degraded_after_s)."""
        watch = self._watch
        if watch is None:
            return False
        alone, change = watch.seen(camera, frame.receive_ns)
        # Two call sites: rclpy refuses another severity from a call site it has seen.
        if change and alone:
            self.get_logger().warning(change)
        elif change:
            self.get_logger().info(change)
        if alone:
            self._accounting.alone(camera)
            self._hand_over(frame, [Alone(frame, camera)], start)
        return alone

    def _on_synchronized_pair(self, rgb: Image, thermal: Image) -> None:
        start = time.perf_counter()
        rgb_frame, thermal_frame = self._accept(RGB_TOPIC, rgb), self._accept(THERMAL_TOPIC, thermal)
        if rgb_frame is not None and thermal_frame is not None:
            pair = Pair(rgb_frame, thermal_frame, stamp_ns(rgb.header), stamp_ns(thermal.header))
            self._pairer.count_external_pair(pair)
            self._hand_over(rgb_frame, [pair], start)  # one callback for both frames: counted once, on RGB

    def _hand_over(self, frame: InputFrame | None, pairs: list[Pair | Alone], start: float) -> None:
        # Set before the pair reaches the worker, which adds it to the pair's overhead.
        if frame is not None:
            frame.callback_ms = (time.perf_counter() - start) * 1e3
        if not self._active:  # a frame or deadline that raced with deactivate
            self._accounting.dropped_inactive(len(pairs))
            return
        for pair in pairs:
            self._workers.mailbox.put(pair)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg

    def _on_incompatible_qos(self, topic: str, info: Any) -> None:
        """A publisher on an input topic whose QoS cannot match ours: it will never deliver a frame."""
        # rclpy hands over the C enum (RMW_QOS_POLICY_RELIABILITY); the QoSProfile attribute is "reliability".
        policy = getattr(info.last_policy_kind, "name", str(info.last_policy_kind)).lower()
        problem = diagnostics.qos_mismatch(self, topic, policy.removeprefix("rmw_qos_policy_"),
                                           self._settings.input_qos)
        self._accounting.qos_incompatible(topic, problem)
        self._log_throttled(f"incompatible_qos:{topic}", problem)

    def _reject(self, reason: str, message: str, throttle_key: str | None = None) -> None:
        self._accounting.rejected(reason)
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

    def _inference_failed(self, exc: Exception) -> bool:
        if not rclpy.ok(context=self.context):
            return False
        message = f"inference failed ({type(exc).__name__}): {exc}"
        self._accounting.inference_failed(message)
        self._reject("inference_error", message)
        if not isinstance(exc, MafsError):  # not a bad input but a bug or a failure inside torch: keep where
            self.get_logger().error("".join(traceback.format_exception(exc)), throttle_duration_sec=10.0)
        return True

    def _process(self, item: Pair | Alone) -> None:
        want_overlay = self._outputs.wants_overlay()
        options = {"want_confidence": self._publish_confidence, "want_overlay": want_overlay}
        if isinstance(item, Alone):
            frames, header = [item.frame], item.frame.msg.header
            processed = process_alone(self._engine, item.frame.image, item.camera, **options)
            zero = Time()
            stamps = {"rgb_stamp": zero if item.camera == "thermal" else None,
                      "thermal_stamp": header.stamp if item.camera == "thermal" else zero}
            camera_info = self._camera_info if item.camera == "rgb" else None
        else:
            frames, header = [item.rgb, item.thermal], item.rgb.msg.header
            try:
                processed = process_pair(self._engine, item.rgb.image, item.thermal.image, self._settings.homography,
                                         **options)
            except SizeMismatchError as exc:
                self._reject(exc.reason, str(exc))
                return
            stamps, camera_info = {"thermal_stamp": item.thermal.msg.header.stamp}, self._camera_info
        inferred, result = time.perf_counter(), processed.result
        missing = item.missing if isinstance(item, Alone) else ""

        images = self._outputs.encode(result, header)
        with self._publish_lock:
            if not self._active:  # deactivated during the forward pass
                self._accounting.dropped_inactive(1)
                return
            self._outputs.publish(result, images, camera_info=camera_info, want_overlay=want_overlay,
                                  missing_input=missing, **stamps)
        done = time.perf_counter()

        latency_ms = (self.get_clock().now().nanoseconds - stamp_ns(header)) / 1e6
        callbacks_ms = sum(frame.callback_ms for frame in frames)
        # A blank thermal image spans nothing: only real thermal frames count towards the span warning.
        span = None if missing == "thermal" else getattr(result, "thermal_span", None)
        self._accounting.published(sum(result.timings.values()), latency_ms,
                                   callbacks_ms + processed.registration_ms + (done - inferred) * 1e3, span)

    # ------------------------------------------------------------------------------------------------
    # Diagnostics and parameters

    def overhead_ms(self) -> list[float]:
        """The node's own milliseconds for each recent published pair, oldest first: both frames' subscription
        callbacks (decoding, pairing), registration, building and publishing the outputs; the model excluded."""
        return self._accounting.overhead_ms()

    def counters(self) -> dict[str, Any]:
        """Frame accounting (also the body of /diagnostics): received, paired, published, dropped, rejected.

        Once the node is idle (no pair waiting in the mailbox or being fused) every frame is accounted for:
            received_rgb + received_thermal == frames rejected (reasons outside diagnostics.PAIR_REJECTIONS)
                + 2 * pairing.matched + pairing.unmatched_rgb + pairing.unmatched_thermal + queued
                + alone_rgb + alone_thermal
            pairing.matched + alone_rgb + alone_thermal == published + dropped
                + pairs rejected (reasons in diagnostics.PAIR_REJECTIONS)
        alone_rgb / alone_thermal count the frames fused alone while the other camera was silent.
        dropped includes dropped_on_deactivate, the pairs a deactivation kept from being published.
        A managed node reports its current configuration, or after cleanup its last one.
        repaired_non_finite counts thermal frames that were fused after their NaN/inf pixels were replaced.
        rgb_frames_missed / thermal_frames_missed estimate the frames that never arrived (gaps in the header
        stamps, see stream.frame_loss); they are outside the identities, which count received frames.
        """
        if self._pairer is None:
            raise RuntimeError("the node has not been configured yet")
        return self._accounting.counters(self._pairer.stats.as_dict(), self._pairer.queued,
                                         self._workers.mailbox.drops)

    def lifecycle_state(self) -> str:
        """The managed node's state label (unconfigured, inactive, active, finalized, or a transition's);
        "active" for a plain node."""
        # rclpy has no public accessor for it; its own lifecycle services read the same attribute.
        return self._state_machine.current_state[1] if self._lifecycle else "active"

    def _publish_diagnostics(self) -> None:
        name = f"{self.get_fully_qualified_name()}: fusion and segmentation"
        stamp = self.get_clock().now().to_msg()
        state = self.lifecycle_state()
        engine = self._engine  # once: a cleanup on another executor thread may release it meanwhile
        if engine is None:
            level, message = DiagnosticStatus.OK, f"{state}: no model loaded, not fusing"
            if self._configure_error:
                level, message = DiagnosticStatus.ERROR, f"{state}: {self._configure_error}"
            self._diagnostics_pub.publish(
                diagnostics.diagnostic_array(stamp, name, level, message, {"lifecycle_state": state}))
            return
        accounting, counters = self._accounting, self.counters()
        report = accounting.take_report()
        incompatible = {}
        inputs = self._inputs  # once: a deactivation on another executor thread may close them meanwhile
        if inputs is not None:
            for change in inputs.refresh():
                self.get_logger().info(f"input transport: {change}")
            incompatible = {**diagnostics.incompatible_publishers(self, accounting, self._settings.input_qos),
                            **inputs.type_clashes()}
        watch = self._watch
        silent = watch.silent(time.monotonic_ns()) if watch is not None and self._active else None
        level, message = diagnostics.fusion_status(
            report, fusing=None if self._active else f"{state}: model loaded, not fusing", incompatible=incompatible,
            lossy=accounting.lossy_inputs(), resolve=self.resolve_topic_name,
            silent=None if silent is None else (silent, self._settings.degraded_after_s),
        )
        values = diagnostics.status_values(report, counters, accounting, engine)
        values["missing_input"] = silent or ""
        if self._lifecycle:
            values["lifecycle_state"] = state
            values["dropped_on_deactivate"] = counters["dropped_on_deactivate"]
        self._diagnostics_pub.publish(
            diagnostics.diagnostic_array(stamp, name, level, message, values, hardware_id=str(engine.device)))

    def _on_set_parameters(self, params: list) -> SetParametersResult:
        configured = self._engine is not None
        backend = self._settings.backend if configured else None
        for param in params:
            refusal = change_refusal(param.name, param.value, param.type_, configured=configured,
                                     lifecycle=self._lifecycle, backend=backend)
            if refusal:
                return SetParametersResult(successful=False, reason=refusal)
        if configured:  # otherwise the next configure reads them
            for param in params:
                self._apply(param.name, param.value)
        return SetParametersResult(successful=True)

    def _apply(self, name: str, value: Any) -> None:
        """A runtime parameter's new value, accepted by `change_refusal`."""
        if name == "overlay_alpha":
            self._engine.overlay_alpha = float(value)
        elif name == "jpeg_quality":
            self._outputs.jpeg_quality = int(value)
        elif name == "publish_confidence":
            self._publish_confidence = bool(value)
        elif name == "sync.slop_s":
            self._pairer.retune(slop_s=float(value))
        elif name == "sync.thermal_offset_s":
            self._pairer.retune(thermal_offset_s=float(value))
        elif name == "thermal_normalization":
            self._engine.thermal_normalization = value or None
            self._accounting.thermal_changed()
        elif name == "sync.max_wait_s":
            self._hand_over(None, self._pairer.retune(max_wait_s=float(value)), time.perf_counter())
            self._workers.wake_deadline()

    # ------------------------------------------------------------------------------------------------
    # Shutdown

    def stop(self, timeout_s: float = 2.0) -> bool:
        """Stop the inference worker: waits at most `timeout_s` for a running forward pass, on the first call only
        (destroy_node calls it again). Returns whether the worker has ended (also one left running by a cleanup or
        shutdown transition)."""
        return True if self._workers is None else self._workers.stop(timeout_s)

    def destroy_node(self) -> None:
        self.stop()
        unroute(self._log_handler)
        super().destroy_node()


def _import_message_filters() -> Any:
    try:
        import message_filters
    except ImportError:
        raise StartupError(
            "sync.backend 'message_filters' needs the ROS message_filters package, which is not installed "
            "here; use sync.backend 'builtin' (same pairing as `mafs replay`)"
        ) from None
    return message_filters


def main(args: list[str] | None = None) -> int:
    """Entry point of `mafs_node` / `ros2 run mafs_ros mafs_node`. Exit codes: 0 clean shutdown, 2 start-up error."""
    own_args = (sys.argv[1:] if args is None else args)
    own_args = own_args[: own_args.index("--ros-args")] if "--ros-args" in own_args else own_args
    if "-h" in own_args or "--help" in own_args:
        print(usage())
        return 0
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
    except RCLError:
        # A SIGTERM/SIGINT can shut the context down while the executor builds its wait set (rclpy raises this
        # then instead of ExternalShutdownException): a clean shutdown all the same; any other keeps its traceback.
        if rclpy.ok():
            raise
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
