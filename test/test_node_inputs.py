"""The node's inputs as robots deliver them: compressed cameras (image_transport's `compressed` plugin), a type
clash on an input topic, and the node's manners (log lines through ROS, --help without torch)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from mafs_ros.msg import FusedSegmentation, SegmentationInfo
from rcl_interfaces.msg import Log
from rclpy.parameter import Parameter
from ros_harness import DOMAIN_ID, PAIR_SIZE, RosHarness, diagnostics_values, image_msg
from sensor_msgs.msg import CompressedImage, Image
from stand_in_net import KnownNet

from mafs_ros.engine import MafsEngine
from mafs_ros.io.samples import sample_pairs
from mafs_ros.ros.in_process import InProcessRos
from mafs_ros.ros.node import MafsNode
from mafs_ros.ros.transport import large_image_environment
from mafs_ros.stamps import set_stamp
from mafs_ros.stream.compressed import JPEG_FORMAT, encode_jpeg, encode_png

T0 = 1_700_000_000 * 1_000_000_000
RGB_COMPRESSED, THERMAL_COMPRESSED = "rgb/image/compressed", "thermal/image/compressed"


@pytest.fixture
def ros():
    harness = RosHarness()
    harness.subscribe(FusedSegmentation, "mafs/result")
    harness.subscribe(SegmentationInfo, "segmentation/info", latched=True)
    harness.subscribe(CompressedImage, "fused/image/compressed")
    harness.subscribe(CompressedImage, "segmentation/overlay/compressed")
    harness.subscribe(DiagnosticArray, "/diagnostics")
    harness.subscribe(Log, "/rosout")
    yield harness
    harness.close()


def compressed(fmt: str, data: bytes, stamp_ns: int, frame_id: str) -> CompressedImage:
    msg = CompressedImage(format=fmt, data=data)
    set_stamp(msg.header, stamp_ns)
    msg.header.frame_id = frame_id
    return msg


def publish_compressed_pair(ros: RosHarness, stamp_ns: int) -> None:
    """RGB as JPEG, thermal as a 14-bit camera's raw counts in a 16-bit PNG, as robots record them."""
    (rgb, thermal), = sample_pairs(PAIR_SIZE, 1)
    counts = (7400 + thermal.astype(np.uint16) * 3).astype(np.uint16)
    ros.publisher(CompressedImage, THERMAL_COMPRESSED).publish(
        compressed(*encode_png(counts), stamp_ns, "camera_thermal"))
    ros.publisher(CompressedImage, RGB_COMPRESSED).publish(
        compressed(JPEG_FORMAT, encode_jpeg(rgb, 90), stamp_ns, "camera_rgb"))


def start_node(ros: RosHarness, **parameters) -> MafsNode:
    overrides = [Parameter(name, value=value) for name, value in {"diagnostics_period_s": 0.2, **parameters}.items()]
    node = MafsNode(engine=MafsEngine(model=KnownNet(), device="cpu"), context=ros.context,
                    parameter_overrides=overrides)
    ros.add_node(node)
    return node


def subscribed_topics(node: MafsNode) -> set[str]:
    return {subscription.topic_name for subscription in node.subscriptions} - {"/rgb/camera_info"}


def decoded(msg: CompressedImage) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_UNCHANGED)


def test_the_executable_fuses_compressed_inputs_and_publishes_compressed_outputs(ros):
    """The real node over DDS (another process, the packaged model): JPEG RGB + 16-bit PNG thermal in, JPEG fused
    image and overlay out."""
    for topic in (RGB_COMPRESSED, THERMAL_COMPRESSED):  # there before the node: `auto` finds them at activation
        ros.publisher(CompressedImage, topic)
    env = {**os.environ, **large_image_environment(os.environ), "ROS_DOMAIN_ID": str(DOMAIN_ID),
           "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mafs_ros.ros.node", "--ros-args", "-p", "warmup:=0",
                             "-p", "device:=cpu"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert ros.wait_for(lambda: ros.messages("segmentation/info"), 60), "the node did not come up"
        ros.wait_for_subscribers([RGB_COMPRESSED, THERMAL_COMPRESSED], timeout_s=30)
        publish_compressed_pair(ros, T0)
        got = ros.wait_for(lambda: all(ros.messages(t) for t in (
            "mafs/result", "fused/image/compressed", "segmentation/overlay/compressed")), 60)
        if not got:
            proc.terminate()
            pytest.fail(f"no compressed outputs; the node's output:\n{proc.communicate(timeout=10)[0]}")
        for topic in ("fused/image/compressed", "segmentation/overlay/compressed"):
            msg = ros.messages(topic)[0]
            assert msg.format == JPEG_FORMAT and decoded(msg).shape == (*PAIR_SIZE, 3)
            assert msg.header.stamp == ros.messages("mafs/result")[0].header.stamp
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=10)
    assert "compressed" in output and "Traceback" not in output, output


def test_auto_transport_follows_a_compressed_camera_that_starts_after_the_node(ros):
    node = start_node(ros)
    assert subscribed_topics(node) == {"/rgb/image", "/thermal/image"}  # no publisher yet: raw, looking again
    publish_compressed_pair(ros, T0)  # creates the compressed publishers
    assert ros.wait_for(lambda: subscribed_topics(node) == {"/rgb/image/compressed", "/thermal/image/compressed"}, 10)
    ros.wait_for_subscribers([RGB_COMPRESSED, THERMAL_COMPRESSED])
    publish_compressed_pair(ros, T0 + 100_000_000)
    assert ros.wait_for(lambda: ros.messages("mafs/result"), 10)
    assert node.counters()["rejected"] == {}


def test_a_type_clash_on_an_input_is_named_in_diagnostics(ros):
    """A compressed camera remapped onto the raw input: the node names the topic and both types."""
    start_node(ros, rgb_transport="raw", thermal_transport="raw")
    camera = InProcessRos("compressed_camera", DOMAIN_ID)  # a context of its own: one type per topic in a context
    clash: list[tuple[int, str]] = []  # kept as it arrives: once the camera is closed the next status drops it

    def clash_reported() -> bool:
        level, message, _ = diagnostics_values(ros)
        if "type clash" in message:
            clash.append((level, message))
        return bool(clash)

    try:
        camera.node.create_publisher(CompressedImage, "rgb/image", 10)
        assert ros.wait_for(clash_reported, 10)
    finally:
        camera.close()
    level, message = clash[0]
    assert level == DiagnosticStatus.WARN
    assert "/rgb/image" in message and "sensor_msgs/msg/CompressedImage" in message
    assert "sensor_msgs/msg/Image" in message and "rgb_transport" in message


def test_engine_log_lines_go_through_the_node_logger(ros):
    start_node(ros)
    logging.getLogger("mafs_ros.engine").warning("probe from the engine")
    assert ros.wait_for(lambda: any(log.name == "mafs" and log.level == Log.WARN
                                    and "[mafs_ros.engine] probe from the engine" in log.msg
                                    for log in ros.messages("/rosout")), 5)


def test_help_prints_ranges_without_importing_torch():
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-c", "import sys; from mafs_ros.ros.node import main; main(['--help']); "
                          "print('torch imported:', 'torch' in sys.modules)"],
                         capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert run.returncode == 0, run.stderr
    assert "torch imported: False" in run.stdout
    assert "jpeg_quality = 90  (range 1..100, runtime)" in run.stdout
    assert "device = 'auto'  (read-only)" in run.stdout
    print(f"mafs_node --help: {elapsed:.2f} s")


def test_silence_watch_goes_alone_after_the_delay_and_back_on_the_first_frame():
    from mafs_ros.stream.degraded import SilenceWatch

    s = 1_000_000_000
    watch = SilenceWatch(1.0, start_ns=0)
    assert watch.seen("rgb", s // 2) == (False, None) and watch.silent(s // 2) is None
    alone, change = watch.seen("rgb", s)  # thermal never delivered since the start, 1 s ago
    assert alone and "thermal camera silent" in change and watch.silent(s) == "thermal"
    assert watch.seen("rgb", s + s // 10) == (True, None)  # said once
    alone, change = watch.seen("thermal", 2 * s)
    assert not alone and "thermal camera delivers again" in change
    assert watch.seen("rgb", 2 * s + 1) == (False, None) and watch.silent(2 * s + 1) is None


@pytest.mark.parametrize("silent", ["rgb", "thermal"])
def test_one_camera_down_the_other_goes_on_alone_and_pairs_resume(ros, silent):
    """A camera stops for 3 s in a live run at 10 Hz: results go on from the other camera alone within 2 s,
    /diagnostics warns naming the silent camera, each result names it, and pairs resume when it returns."""
    start_node(ros, **{"sync.degraded_after_s": 1.0})
    ros.wait_for_subscribers(["rgb/image", "thermal/image"])
    (rgb, thermal), = sample_pairs(PAIR_SIZE, 1)
    publishers = {"rgb": ros.publisher(Image, "rgb/image"), "thermal": ros.publisher(Image, "thermal/image")}
    images = {"rgb": (rgb, "rgb8"), "thermal": (thermal, "mono8")}

    def send(cameras, frames, first):
        for i in range(first, first + frames):
            for camera in cameras:
                image, encoding = images[camera]
                publishers[camera].publish(image_msg(image, encoding, T0 + i * 100_000_000, f"camera_{camera}"))
            time.sleep(0.1)
        return first + frames

    def results_since(count):
        return ros.messages("mafs/result")[count:]

    i = send(("rgb", "thermal"), 10, 0)
    assert ros.wait_for(lambda: ros.messages("mafs/result"), 5)
    assert all(r.missing_input == "" for r in ros.messages("mafs/result"))
    other = "thermal" if silent == "rgb" else "rgb"
    before, stopped = len(ros.messages("mafs/result")), time.monotonic()
    warned = []
    while time.monotonic() - stopped < 3.0:  # the silent camera's 3 s
        i = send((other,), 1, i)
        level, message, values = diagnostics_values(ros)
        if level == DiagnosticStatus.WARN and f"{silent} camera down" in message:
            warned.append(values["missing_input"])
        if any(r.missing_input == silent for r in results_since(before)) and "first" not in locals():
            first = time.monotonic() - stopped
    assert "first" in locals() and first < 2.0, "no result from one camera within 2 s"
    print(f"{silent} stopped: first result from {other} alone after {first:.2f} s")
    assert warned and set(warned) == {silent}
    alone = [r for r in results_since(before) if r.missing_input == silent]
    kept = alone[-1].rgb_stamp if other == "rgb" else alone[-1].thermal_stamp
    assert (kept.sec, kept.nanosec) != (0, 0)
    assert alone[-1].fused.height == PAIR_SIZE[0] and alone[-1].labels.width == PAIR_SIZE[1]

    resumed_from = len(ros.messages("mafs/result"))
    send(("rgb", "thermal"), 10, i)
    assert ros.wait_for(lambda: any(r.missing_input == "" for r in results_since(resumed_from)), 5)
    assert ros.wait_for(lambda: "camera down" not in diagnostics_values(ros)[1], 5)
