"""`mafs demo`: the real node over a bag built from the bundled sample pairs, scored like a recorded drive.

    data/sample (6 real MSRS pairs) ─► input rosbag2 (RGB + thermal at a camera rate, thermal lagging, jittered)
    player (this process, rclpy) ─► DDS ─► mafs_node (a subprocess: the real node and its parameters) ─► DDS
    recorder (this process) ─► recording rosbag2 (inputs + outputs, receive times) ─► replay report + PNGs

The player publishes each message at its recorded rate, with its header stamp moved to "now" by one constant
shift (offsets and jitter between the cameras are kept): the node sees live cameras, and its end-to-end latency
(output receive time - RGB stamp) is meaningful on the wall clock. A CPU cannot fuse 480x640 pairs at a camera
rate, so most pairs are dropped by the node's keep-latest mailbox: the report counts them, as on a robot.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2

from mafs_ros import bags
from mafs_ros.bags import BagReader, BagWriter
from mafs_ros.constants import (
    COMPRESSED_IMAGE_TYPE,
    FUSED_TOPIC,
    IMAGE_TYPE,
    INFO_TOPIC,
    INFO_TYPE,
    LABELS_TOPIC,
    OVERLAY_TOPIC,
    RESULT_TOPIC,
    RESULT_TYPE,
    RGB_TOPIC,
    SAMPLE_DIR,
    THERMAL_TOPIC,
    absolute_topic,
)
from mafs_ros.errors import MafsError
from mafs_ros.ros.transport import large_image_environment
from mafs_ros.stamps import set_stamp, stamp_ns

logger = logging.getLogger(__name__)

# The thermal camera's stamps are this much earlier than the RGB camera's (the node's sync.thermal_offset_s
# is told so; a thermal camera's clock or exposure often differs by tens of ms).
THERMAL_LAG_S = 0.02
JITTER_S = 0.005

# The topics as the bags store them (absolute) and as this process publishes and subscribes to them.
_RGB, _THERMAL = absolute_topic(RGB_TOPIC), absolute_topic(THERMAL_TOPIC)
_RESULT, _INFO = absolute_topic(RESULT_TOPIC), absolute_topic(INFO_TOPIC)
_FUSED, _OVERLAY = absolute_topic(FUSED_TOPIC), absolute_topic(OVERLAY_TOPIC)
OUTPUT_TOPICS = {
    _FUSED: IMAGE_TYPE,
    absolute_topic(LABELS_TOPIC): IMAGE_TYPE,
    _OVERLAY: IMAGE_TYPE,
    _RESULT: RESULT_TYPE,
    _INFO: INFO_TYPE,
}


class DemoError(MafsError, RuntimeError):
    """The demo could not run (node did not start, no output); the message says what to look at."""


def run_demo(
    out_dir: str | Path = "demo_out",
    *,
    sample_dir: str | Path = SAMPLE_DIR,
    checkpoint: str | None = None,
    device: str = "auto",
    backend: str = "auto",
    rate_hz: float = 5.0,
    repeat: int = 5,
    max_pairs: int | None = None,
    startup_timeout_s: float = 120.0,
    compressed: bool = False,
) -> dict[str, Any]:
    """Run the demo; returns the replay report of the recording (also in out_dir/report.json).

    device, backend: the node's parameters of those names. rate_hz: camera rate of the built bag (RGB and
    thermal). repeat: passes over the sample pairs. max_pairs: stop the bag after this many RGB frames (tests).
    compressed: the cameras as robots record them, image_transport's compressed topics (RGB JPEG, thermal PNG),
    which the node finds by itself (`rgb_transport` / `thermal_transport: auto`).
    Raises DemoError with the node's log on failure.
    """
    from mafs_ros import replay

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("input_bag", "recording", "fused", "overlay"):
        shutil.rmtree(out_dir / stale, ignore_errors=True)
    input_bag = out_dir / "input_bag"
    written = bags.write_pairs_bag(
        input_bag, sample_dir, rate_hz=rate_hz, thermal_offset_s=THERMAL_LAG_S, jitter_s=JITTER_S, repeat=repeat,
        rgb_compression="jpeg" if compressed else "raw", thermal_compression="png" if compressed else "raw",
    )
    with BagReader(input_bag) as reader:
        inputs = {topic: info.msgtype for topic, info in reader.topics.items()}
    frames = len(written.rgb_stamps_ns) if max_pairs is None else min(max_pairs, len(written.rgb_stamps_ns))
    print(f"input bag: {input_bag} ({frames} RGB + {frames} thermal frames at {rate_hz:g} Hz)", flush=True)

    # Fast DDS's default shared-memory segment is smaller than one 640x480 image, so images fall back to fragmented
    # best-effort UDP, where a lost fragment loses the frame. The player (the camera side: its settings decide) and
    # the node use config/fastdds_large_images.xml unless the user chose a profile or transports already.
    transport = large_image_environment(os.environ)
    node_log = out_dir / "node.log"
    node = _start_node(checkpoint, device, backend, node_log, transport)
    try:
        with _environment(transport):  # read when the player's DDS participant is created
            session = _DemoSession(out_dir / "recording", inputs)
        with session:
            session.wait_for_node(node, node_log, startup_timeout_s)
            played = session.play(input_bag, frames)
            session.wait_until_idle(node)
            summary = session.summary()
    finally:
        _stop_node(node)
    if summary["results"] == 0:
        received = {topic: summary.get(topic, 0) for topic in session.cameras}
        raise DemoError(
            f"the node published no result for {played} frames (the recorder beside the player received "
            f"{received}; {transport}); "
            f"the end of {node_log}:\n{_tail(node_log)}"
        )

    report = replay.report_from_recording(out_dir / "recording", out_dir, thermal_offset_s=THERMAL_LAG_S)
    _write_pngs(out_dir / "recording", out_dir)
    _print_summary(report, out_dir)
    return report


# ---------------------------------------------------------------------------------------------------------
# The node subprocess


@contextlib.contextmanager
def _environment(variables: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _start_node(checkpoint: str | None, device: str, backend: str, log_path: Path,
                transport: dict[str, str]) -> subprocess.Popen:
    args = ["-p", f"device:={device}", "-p", f"backend:={backend}", "-p", f"sync.thermal_offset_s:={THERMAL_LAG_S}"]
    if checkpoint:
        args += ["-p", f"checkpoint:={Path(checkpoint).resolve()}"]
    command = [sys.executable, "-m", "mafs_ros.ros.node", "--ros-args", *args]
    logger.info("starting the node: %s", " ".join(command))
    log = open(log_path, "w")  # noqa: SIM115 - the subprocess owns it until _stop_node
    env = {**os.environ, **transport, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else "(no log)"


def _stop_node(node: subprocess.Popen) -> None:
    if node.poll() is None:
        node.terminate()  # SIGTERM: the node's clean shutdown path
        try:
            node.wait(timeout=10)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()


# ---------------------------------------------------------------------------------------------------------
# Player + recorder (rclpy, this process)


class _DemoSession:
    """An rclpy node that publishes the input bag's topics (`inputs`: topic -> message type) and records inputs and
    outputs into a rosbag2."""

    def __init__(self, recording: Path, inputs: dict[str, str]) -> None:
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image

        from mafs_ros.ros.in_process import InProcessRos

        # The environment's ROS_DOMAIN_ID: the node subprocess joins the same domain.
        self._ros = InProcessRos("mafs_demo_player")
        self._node = self._ros.node
        self._writer = BagWriter(recording)
        self._lock = threading.Lock()
        self._results = 0
        self._last_result = time.monotonic()

        from mafs_ros.msg import FusedSegmentation, SegmentationInfo

        types = {IMAGE_TYPE: Image, COMPRESSED_IMAGE_TYPE: CompressedImage, RESULT_TYPE: FusedSegmentation,
                 INFO_TYPE: SegmentationInfo}
        self._input_types = {topic: types[msgtype] for topic, msgtype in inputs.items()}
        # The camera topics (raw or `<topic>/compressed`): the node's two subscriptions the session waits for.
        self.cameras = [t for t in inputs if t.startswith((_RGB, _THERMAL))]
        camera_qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
        self._publishers = {topic: self._node.create_publisher(msg_type, topic, camera_qos)
                            for topic, msg_type in self._input_types.items()}
        # raw=True: the recorder stores the CDR bytes it receives, exactly what `ros2 bag record` would store.
        recorder_qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.BEST_EFFORT)
        for topic, msgtype in inputs.items():
            self._record(types[msgtype], topic, msgtype, recorder_qos)
        for topic, msgtype in OUTPUT_TOPICS.items():
            latched = topic == _INFO
            qos = QoSProfile(
                depth=50, reliability=ReliabilityPolicy.RELIABLE,
                durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
            )
            self._writer.add_topic(topic, msgtype, [bags.qos_profile(transient_local=latched)])
            self._record(types[msgtype], topic, msgtype, qos)

    def _record(self, msg_type: type, topic: str, msgtype: str, qos: Any) -> None:
        def store(raw: bytes, topic: str = topic, msgtype: str = msgtype) -> None:
            now = time.time_ns()
            with self._lock:
                if self._writer is None:
                    return
                self._writer.write_raw(topic, msgtype, now, raw)
                if topic == _RESULT:
                    self._results += 1
                    self._last_result = time.monotonic()

        self._node.create_subscription(msg_type, topic, store, qos, raw=True)

    def __enter__(self) -> _DemoSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._ros.close()
        with self._lock:
            self._writer.close()
            self._writer = None

    def wait_for_node(self, node: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
        """Until the node subscribes to both camera topics and its latched info message has arrived."""
        deadline = time.monotonic() + timeout_s
        cameras = [self._publishers[topic] for topic in self.cameras]
        while time.monotonic() < deadline:
            if node.poll() is not None:
                raise DemoError(f"the node exited with code {node.returncode} at start-up:\n{log_path.read_text()}")
            with self._lock:
                info = self._writer.counts.get(_INFO, 0)
            if info and all(camera.get_subscription_count() for camera in cameras):
                time.sleep(0.5)  # its output publishers are matched about now; a margin costs nothing
                return
            time.sleep(0.1)
        raise DemoError(f"the node did not come up within {timeout_s:.0f} s; see {log_path}")

    def play(self, input_bag: Path, frames: int) -> int:
        """Publish the bag's camera topics at their recorded rate, stamps shifted to now. Returns messages sent."""
        from rclpy.serialization import deserialize_message

        sent = rgb_frames = 0
        with BagReader(input_bag) as reader:
            messages = list(reader.messages(list(self._input_types)))
        if not messages:
            raise DemoError(f"{input_bag} holds no camera messages")
        start_wall, start_bag = time.monotonic_ns(), messages[0].receive_ns
        shift_ns = time.time_ns() - start_bag
        for message in messages:
            if message.topic.startswith(_RGB):
                rgb_frames += 1
                if rgb_frames > frames:
                    break
            delay_ns = (message.receive_ns - start_bag) - (time.monotonic_ns() - start_wall)
            if delay_ns > 0:
                time.sleep(delay_ns / 1e9)
            msg = deserialize_message(bytes(message.raw), self._input_types[message.topic])
            set_stamp(msg.header, stamp_ns(msg.header) + shift_ns)
            self._publishers[message.topic].publish(msg)
            sent += 1
        return sent

    def wait_until_idle(self, node: subprocess.Popen, quiet_s: float = 5.0, timeout_s: float = 120.0) -> None:
        """Until the node has published nothing for `quiet_s` after its first result (it fuses the last pair it
        took, then idles). A slow first inference is waited for up to `timeout_s`."""
        start = time.monotonic()
        deadline = start + timeout_s
        while time.monotonic() < deadline and node.poll() is None:
            with self._lock:
                idle = time.monotonic() - self._last_result if self._results else 0.0
            if idle > quiet_s:
                return
            time.sleep(0.1)

    def summary(self) -> dict[str, int]:
        with self._lock:
            return {"results": self._results, **self._writer.counts}


# ---------------------------------------------------------------------------------------------------------
# Output


def _write_pngs(recording: Path, out_dir: Path) -> None:
    """Every recorded fused image and overlay as PNG, named by the RGB stamp (fused/, overlay/)."""
    from mafs_ros.stream.conversions import image_to_numpy

    folders = {_FUSED: out_dir / "fused", _OVERLAY: out_dir / "overlay"}
    for folder in folders.values():
        folder.mkdir(exist_ok=True)
    with BagReader(recording) as reader:
        for message in reader.messages(list(folders)):
            msg = bags.deserialize(message)
            name = f"{msg.header.stamp.sec}_{msg.header.stamp.nanosec:09d}.png"
            cv2.imwrite(str(folders[message.topic] / name), cv2.cvtColor(image_to_numpy(msg), cv2.COLOR_RGB2BGR))


def _print_summary(report: dict[str, Any], out_dir: Path) -> None:
    """The demo's closing lines: what was written, pairs fused, mean fusion metrics, latency."""
    means = report.get("fusion", {}).get("mean") or {}  # None when no pair could be scored
    latency = report.get("latency_ms", {})
    end_to_end = report.get("end_to_end_ms", {})
    read = report.get("frames_read", {})
    files = report.get("files", [])
    metrics = "  ".join(f"{k} {v:.3f}" for k, v in means.items() if isinstance(v, (int, float)))
    written = ["report.md", "report.json"]
    if "metrics_over_time.png" in files:
        written.append("plots")
    if "contact_sheet.png" in files:
        written.append("contact sheet")
    print(f"\nwrote {out_dir}/{', '.join(written)}, fused/ and overlay/ PNGs, recording/ (rosbag2: inputs + "
          f"node outputs), node.log")
    print(f"pairs fused: {report.get('pairs_fused', 0)} of {read.get(_RGB, 0)} RGB frames "
          f"(dropped while the model was busy or unmatched: {sum(report.get('unmatched', {}).values())} frames)")
    print(f"mean fusion metrics: {metrics or 'n/a (no pair scored)'}")
    print(f"latency: processing (preprocess + inference + postprocess) p50 {_ms(latency.get('p50'))}, "
          f"p95 {_ms(latency.get('p95'))}; end to end p50 {_ms(end_to_end.get('p50'))}")


def _ms(value: Any) -> str:
    return f"{value:.0f} ms" if isinstance(value, (int, float)) else "n/a"
