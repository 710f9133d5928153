"""The MAFS node over real rclpy + DDS: in-process with a stand-in network, and as a subprocess (mafs_node)."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from mafs_ros.msg import FusedSegmentation, SegmentationInfo
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from ros_harness import DOMAIN_ID, PAIR_SIZE, RosHarness, diagnostics_values, image_msg
from sensor_msgs.msg import CameraInfo, Image
from stand_in_net import NUM_CLASSES, KnownNet

from mafs_ros.engine import MafsEngine
from mafs_ros.io.samples import sample_pairs
from mafs_ros.stream.conversions import image_to_numpy
from mafs_ros.stream.processing import process_pair
from mafs_ros.stream.registration import parse_homography
from mafs_ros.ros.node import MafsNode
from mafs_ros.ros.parameters import PARAMETERS, StartupError

REPO = Path(__file__).resolve().parent.parent
MS = 1_000_000
T0 = 1_700_000_000 * 1_000_000_000


class SlowEngine:
    """Wraps an engine and sleeps in infer, so that inputs arrive faster than inference."""

    def __init__(self, engine: MafsEngine, delay_s: float) -> None:
        self._engine, self._delay_s = engine, delay_s

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def __setattr__(self, name: str, value) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._engine, name, value)

    def infer(self, *args, **kwargs):
        time.sleep(self._delay_s)
        return self._engine.infer(*args, **kwargs)


def stand_in_engine(**kwargs) -> MafsEngine:
    return MafsEngine(model=KnownNet(), device="cpu", **kwargs)


@pytest.fixture
def ros():
    harness = RosHarness()
    for topic, msg_type, latched in [
        ("fused/image", Image, False), ("segmentation/labels", Image, False), ("segmentation/overlay", Image, False),
        ("segmentation/confidence", Image, False), ("mafs/result", FusedSegmentation, False),
        ("segmentation/info", SegmentationInfo, True), ("fused/camera_info", CameraInfo, False),
        ("/diagnostics", DiagnosticArray, False),
    ]:
        harness.subscribe(msg_type, topic, latched=latched)
    yield harness
    harness.close()


def start_node(ros: RosHarness, engine=None, **parameters) -> MafsNode:
    overrides = [Parameter(name, value=value) for name, value in parameters.items()]
    node = MafsNode(engine=engine or stand_in_engine(), context=ros.context, parameter_overrides=overrides)
    ros.add_node(node)
    ros.wait_for_subscribers(["rgb/image", "thermal/image"])
    return node


def publish_pair(ros: RosHarness, rgb, thermal, rgb_ns: int, thermal_ns: int, *, thermal_encoding="mono8",
                 rgb_encoding="rgb8", frame_id="camera_rgb") -> None:
    ros.publisher(Image, "thermal/image").publish(image_msg(thermal, thermal_encoding, thermal_ns, "camera_thermal"))
    ros.publisher(Image, "rgb/image").publish(image_msg(rgb, rgb_encoding, rgb_ns, frame_id))


def results(ros: RosHarness) -> list[FusedSegmentation]:
    return ros.messages("mafs/result")


def stamp_ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def test_real_pairs_with_jittered_stamps_give_every_output(ros):
    node = start_node(ros, publish_confidence=True)
    camera_info = CameraInfo(width=160, height=128, distortion_model="plumb_bob")
    ros.publisher(CameraInfo, "rgb/camera_info").publish(camera_info)
    pairs = sample_pairs(PAIR_SIZE, 3)
    rng = np.random.default_rng(0)
    sent = []
    for i, (rgb, thermal) in enumerate(pairs):
        rgb_ns = T0 + i * 100 * MS
        thermal_ns = rgb_ns - int(rng.integers(0, 20)) * MS  # later thermal: see the next test
        sent.append((rgb_ns, thermal_ns))
        publish_pair(ros, rgb, thermal, rgb_ns, thermal_ns)
        # one pair at a time: this test is about outputs, not about drops
        assert ros.wait_for(lambda n=i + 1: len(results(ros)) >= n), f"no result for pair {i}"
    assert ros.wait_for(lambda: len(ros.messages("fused/image")) >= len(pairs) and
                        len(ros.messages("segmentation/overlay")) >= len(pairs))

    fused_msgs, label_msgs = ros.messages("fused/image"), ros.messages("segmentation/labels")
    overlays, confidences = ros.messages("segmentation/overlay"), ros.messages("segmentation/confidence")
    for i, ((rgb, thermal), (rgb_ns, thermal_ns)) in enumerate(zip(pairs, sent)):
        result = results(ros)[i]
        for msg in (fused_msgs[i], label_msgs[i], overlays[i], confidences[i], result):
            assert stamp_ns(msg.header.stamp) == rgb_ns and msg.header.frame_id == "camera_rgb"
        assert (fused_msgs[i].encoding, label_msgs[i].encoding, overlays[i].encoding, confidences[i].encoding) == (
            "rgb8", "mono8", "rgb8", "32FC1")
        for msg in (fused_msgs[i], label_msgs[i], overlays[i], confidences[i]):
            assert (msg.height, msg.width) == rgb.shape[:2]
        labels = image_to_numpy(label_msgs[i])
        assert labels.max() < NUM_CLASSES
        # the stand-in network labels pixels by thermal intensity: the labels prove which thermal frame was used
        np.testing.assert_array_equal(labels, np.minimum(thermal.astype(np.int64) * NUM_CLASSES // 255, 8))
        confidence = image_to_numpy(confidences[i])
        assert np.all((confidence > 0) & (confidence <= 1))
        assert stamp_ns(result.rgb_stamp) == rgb_ns and stamp_ns(result.thermal_stamp) == thermal_ns
        assert bytes(result.fused.data) == bytes(fused_msgs[i].data)
        assert bytes(result.labels.data) == bytes(label_msgs[i].data)
        assert result.inference_ms > 0
    info = ros.messages("segmentation/info")
    assert len(info) == 1 and len(info[0].class_names) == NUM_CLASSES and len(info[0].palette) == 3 * NUM_CLASSES
    assert ros.wait_for(lambda: len(ros.messages("fused/camera_info")) >= 1)
    assert ros.messages("fused/camera_info")[-1].header.frame_id == "camera_rgb"
    counters = node.counters()
    assert counters["published"] == len(pairs) and counters["dropped"] == 0 and counters["rejected"] == {}


def test_pairs_outside_slop_are_never_fused(ros):
    node = start_node(ros, **{"sync.slop_s": 0.03})
    (rgb, thermal), = sample_pairs(PAIR_SIZE, 1)
    for i in range(4):  # thermal 40 ms after RGB: outside a 30 ms slop
        publish_pair(ros, rgb, thermal, T0 + i * 200 * MS, T0 + i * 200 * MS + 40 * MS)
        time.sleep(0.05)
    publish_pair(ros, rgb, thermal, T0 + 1000 * MS, T0 + 990 * MS)  # inside
    assert ros.wait_for(lambda: len(results(ros)) >= 1)
    time.sleep(0.3)
    assert [stamp_ns(r.rgb_stamp) for r in results(ros)] == [T0 + 1000 * MS]
    assert all(abs(stamp_ns(r.thermal_stamp) - stamp_ns(r.rgb_stamp)) < 30 * MS for r in results(ros))
    pairing = node.counters()["pairing"]
    assert pairing["unmatched_rgb"] >= 3 and pairing["unmatched_thermal"] >= 3


def test_thermal_offset_parameter_pairs_lagging_thermal(ros):
    start_node(ros, **{"sync.slop_s": 0.02, "sync.thermal_offset_s": -0.1})
    (rgb, thermal), = sample_pairs(PAIR_SIZE, 1)
    publish_pair(ros, rgb, thermal, T0, T0 + 95 * MS)  # thermal stamps 100 ms late
    assert ros.wait_for(lambda: len(results(ros)) == 1)
    assert stamp_ns(results(ros)[0].thermal_stamp) == T0 + 95 * MS


def test_thermal_stamped_after_rgb_waits_at_most_max_wait_for_a_nearer_rgb_frame(ros):
    # A later RGB frame could be nearer to this thermal frame: with a long sync.max_wait_s it is waited for.
    start_node(ros, **{"sync.max_wait_s": 30.0})
    (rgb, thermal), = sample_pairs(PAIR_SIZE, 1)
    publish_pair(ros, rgb, thermal, T0, T0 + 20 * MS)
    time.sleep(0.5)
    assert results(ros) == []
    ros.publisher(Image, "rgb/image").publish(image_msg(rgb, "rgb8", T0 + 33 * MS, "camera_rgb"))
    assert ros.wait_for(lambda: len(results(ros)) == 1)
    assert stamp_ns(results(ros)[0].rgb_stamp) == T0 + 33 * MS


# Delivery and scheduling on a loaded 2-core CI machine, on top of sync.max_wait_s and the inference time.
TRANSPORT_SLACK_S = 0.15


@pytest.mark.parametrize("skew_ms", [0, 4])
def test_an_isolated_pair_comes_back_within_max_wait_plus_inference(ros, skew_ms):
    """One pair and nothing after it on either topic (a triggered camera): equal stamps pair at once, a
    thermal frame 4 ms after the RGB one at sync.max_wait_s."""
    max_wait_s = 0.05
    node = start_node(ros, **{"sync.max_wait_s": max_wait_s})
    (rgb, thermal), = sample_pairs(PAIR_SIZE, 1)
    ros.publisher(Image, "rgb/image").publish(image_msg(rgb, "rgb8", T0, "camera_rgb"))
    time.sleep(0.2)
    sent = time.monotonic()
    ros.publisher(Image, "thermal/image").publish(image_msg(thermal, "mono8", T0 + skew_ms * MS, "camera_thermal"))
    assert ros.wait_for(lambda: len(results(ros)) == 1, 5.0)
    elapsed_s = time.monotonic() - sent
    result = results(ros)[0]
    inference_s = (result.preprocess_ms + result.inference_ms + result.postprocess_ms) / 1e3
    print(f"\nisolated pair, skew {skew_ms} ms: result after {elapsed_s * 1e3:.1f} ms (inference "
          f"{inference_s * 1e3:.1f} ms, max_wait {max_wait_s * 1e3:.0f} ms)")
    assert stamp_ns(result.thermal_stamp) == T0 + skew_ms * MS
    assert elapsed_s <= (max_wait_s if skew_ms else 0.0) + inference_s + TRANSPORT_SLACK_S
    assert node.counters()["queued"] == 0


def test_max_wait_changes_at_run_time_and_refuses_bad_values(ros):
    node = start_node(ros, **{"sync.max_wait_s": 30.0})
    (rgb, thermal), = sample_pairs(PAIR_SIZE, 1)
    publish_pair(ros, rgb, thermal, T0, T0 + 4 * MS)
    time.sleep(0.3)
    assert results(ros) == []
    assert node.set_parameters([Parameter("sync.max_wait_s", value=0.0)])[0].successful
    assert ros.wait_for(lambda: len(results(ros)) == 1)  # the waiting pair is decided by the new value
    for bad in (-0.1, float("nan")):
        refused = node.set_parameters([Parameter("sync.max_wait_s", value=bad)])[0]
        assert not refused.successful and "sync.max_wait_s" in refused.reason


def test_frames_missing_from_a_stream_are_counted_and_warned(ros):
    """A 10 Hz thermal camera whose every third frame never arrives: the gaps in its stamps give the count."""
    node = start_node(ros, diagnostics_period_s=0.2, **{"qos.input.depth": 10})
    reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
    rgb_pub = ros.node.create_publisher(Image, "rgb/image", reliable)  # no real loss: only the skipped stamps
    thermal_pub = ros.node.create_publisher(Image, "thermal/image", reliable)
    assert ros.wait_for(lambda: thermal_pub.get_subscription_count() > 0 and rgb_pub.get_subscription_count() > 0)
    (rgb, thermal), = sample_pairs(PAIR_SIZE, 1)
    missing = 0
    for i in range(90):
        stamp = T0 + i * 100 * MS
        rgb_pub.publish(image_msg(rgb, "rgb8", stamp, "camera_rgb"))
        if i % 3 == 2:
            missing += 1
        else:
            thermal_pub.publish(image_msg(thermal, "mono8", stamp, "camera_thermal"))
        time.sleep(0.01)  # the stamps say 10 Hz; only their gaps matter, not when they are sent
    assert ros.wait_for(lambda: node.counters()["received_rgb"] == 90 and node.counters()["received_thermal"] == 60)
    counters = node.counters()
    # a diagnostics message published after the last frame was counted (one sent mid-stream shows fewer gaps)
    assert ros.wait_for(lambda: diagnostics_values(ros)[0] == DiagnosticStatus.WARN
                        and diagnostics_values(ros)[2].get("thermal_frames_missed")
                        == str(counters["thermal_frames_missed"]))
    estimated = counters["thermal_frames_missed"]
    print(f"\nthermal frames missed: estimated {estimated}, truth {missing - 1} (the last one is not followed by a "
          "frame, so no gap shows it)")
    truth = missing - 1
    assert abs(estimated - truth) <= 0.2 * truth
    assert counters["rgb_frames_missed"] == 0
    level, message, values = diagnostics_values(ros)
    assert "/thermal/image" in message and "README" in message and "/rgb/image" not in message
    assert float(values["thermal_loss_percent"]) == pytest.approx(100 * estimated / (60 + estimated), abs=0.5)


def test_an_incompatible_qos_publisher_is_a_warning_naming_the_topic(ros):
    overrides = [Parameter("diagnostics_period_s", value=0.2), Parameter("qos.input.reliability", value="reliable")]
    node = MafsNode(engine=stand_in_engine(), context=ros.context, parameter_overrides=overrides)
    ros.add_node(node)
    ros.publisher(Image, "thermal/image")  # the harness's best-effort publisher: it cannot serve a reliable reader
    assert ros.wait_for(lambda: node.counters()["incompatible_qos_events"] > 0, 10)

    def warned() -> bool:
        level, message, _ = diagnostics_values(ros)
        return level == DiagnosticStatus.WARN and "incompatible QoS on /thermal/image" in message

    assert ros.wait_for(warned, 10)
    _, message, values = diagnostics_values(ros)
    assert "BEST_EFFORT" in message and "RELIABLE" in message, message
    assert int(values["incompatible_qos_events"]) > 0


def test_drops_are_counted_when_inputs_outpace_inference(ros):
    node = start_node(ros, engine=SlowEngine(stand_in_engine(), 0.25))
    (rgb, thermal), = sample_pairs(PAIR_SIZE, 1)
    for i in range(12):
        publish_pair(ros, rgb, thermal, T0 + i * 33 * MS, T0 + i * 33 * MS - 2 * MS)
        time.sleep(0.03)
    assert ros.wait_for(lambda: node.counters()["published"] + node.counters()["dropped"]
                        == node.counters()["pairing"]["matched"] and node._workers.mailbox._pair is None, 10)
    counters = node.counters()
    assert counters["dropped"] > 0
    assert counters["published"] + counters["dropped"] == counters["pairing"]["matched"]
    # keep-latest: the last pair is always fused, the stale ones are the drops
    assert ros.wait_for(lambda: stamp_ns(results(ros)[-1].rgb_stamp) == T0 + 11 * 33 * MS)


@pytest.mark.parametrize("encoding", ["mono16", "16UC1", "32FC1"])
def test_wide_thermal_encodings(ros, encoding):
    start_node(ros, engine=stand_in_engine(thermal_normalization="minmax"))
    (rgb, thermal), = sample_pairs(PAIR_SIZE, 1)
    wide = thermal.astype(np.uint16) * 64 + 1000 if encoding != "32FC1" else thermal.astype(np.float32) / 10 + 20
    publish_pair(ros, rgb, wide, T0, T0, thermal_encoding=encoding)
    assert ros.wait_for(lambda: len(results(ros)) == 1)
    labels = image_to_numpy(results(ros)[0].labels)
    # min-max normalisation of an affine copy of the 8-bit image gives the 8-bit labels back (up to rounding)
    expected = np.minimum((thermal - thermal.min()) / (thermal.max() - thermal.min()) * NUM_CLASSES, 8).astype(int)
    assert np.mean(labels == expected) > 0.9  # float32 vs float64 at class boundaries; unnormalised: ~0.2


def test_padded_step_and_bgr_are_decoded(ros):
    start_node(ros)
    (rgb, thermal), = sample_pairs(PAIR_SIZE, 1)
    msg = image_msg(np.ascontiguousarray(rgb[..., ::-1]), "bgr8", T0, "camera_rgb")
    padded = np.zeros((msg.height, msg.step + 8), np.uint8)
    padded[:, : msg.step] = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)
    msg.step += 8
    msg.data = padded.tobytes()
    ros.publisher(Image, "thermal/image").publish(image_msg(thermal, "mono8", T0, "camera_thermal"))
    ros.publisher(Image, "rgb/image").publish(msg)
    assert ros.wait_for(lambda: len(results(ros)) == 1)
    fused = image_to_numpy(results(ros)[0].fused)
    # KnownNet fuses to the visible luminance: a channel-order or stride error changes it
    luma = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    assert np.abs(fused[..., 0].astype(float) - luma).mean() < 25


def test_bad_inputs_are_counted_and_the_node_keeps_fusing(ros):
    node = start_node(ros)
    (rgb, thermal), = sample_pairs(PAIR_SIZE, 1)
    yuv = image_msg(rgb, "rgb8", T0, "camera_rgb")
    yuv.encoding = "yuv422"
    ros.publisher(Image, "thermal/image").publish(image_msg(thermal, "mono8", T0, "camera_thermal"))
    ros.publisher(Image, "rgb/image").publish(yuv)
    time.sleep(0.1)  # inputs are best-effort, depth 2: a burst could lose frames before they are counted
    small_thermal = thermal[:60, :80].copy()
    publish_pair(ros, rgb, small_thermal, T0 + 100 * MS, T0 + 100 * MS)  # mismatched sizes
    time.sleep(0.1)
    publish_pair(ros, rgb, thermal, T0 + 200 * MS, T0 + 200 * MS)
    assert ros.wait_for(lambda: len(results(ros)) == 1)
    assert stamp_ns(results(ros)[0].rgb_stamp) == T0 + 200 * MS
    rejected = node.counters()["rejected"]
    assert rejected.get("unsupported_encoding") == 1 and rejected.get("size_mismatch") == 1


def test_inference_errors_are_reported_and_the_node_continues(ros):
    class FailingOnce(SlowEngine):
        calls = 0

        def infer(self, *args, **kwargs):
            FailingOnce.calls += 1
            if FailingOnce.calls == 1:
                raise RuntimeError("CUDA out of memory (simulated)")
            return self._engine.infer(*args, **kwargs)

    node = start_node(ros, engine=FailingOnce(stand_in_engine(), 0.0), diagnostics_period_s=0.2)
    (rgb, thermal), = sample_pairs(PAIR_SIZE, 1)
    publish_pair(ros, rgb, thermal, T0, T0)
    assert ros.wait_for(lambda: node.counters()["rejected"].get("inference_error") == 1)
    assert ros.wait_for(lambda: any(s.level == DiagnosticStatus.ERROR and "out of memory" in s.message
                                    for a in ros.messages("/diagnostics") for s in a.status))
    publish_pair(ros, rgb, thermal, T0 + 100 * MS, T0 + 100 * MS)
    assert ros.wait_for(lambda: len(results(ros)) == 1)


def test_homography_warps_thermal_into_rgb(ros):
    # thermal pixel (x, y) -> RGB pixel (x + 10, y): the labels (from thermal) move 10 px right
    homography = [1.0, 0.0, 10.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    start_node(ros, **{"registration.homography": homography})
    (rgb, thermal), = sample_pairs(PAIR_SIZE, 1)
    publish_pair(ros, rgb, thermal, T0, T0)
    assert ros.wait_for(lambda: len(results(ros)) == 1)
    labels = image_to_numpy(results(ros)[0].labels)
    # The per-pair step that mafs replay and the recording report share (test_replay.py checks them against it).
    expected_pair = process_pair(stand_in_engine(), rgb, thermal, parse_homography(homography))
    assert np.array_equal(image_to_numpy(results(ros)[0].fused), expected_pair.result.fused_rgb)
    expected = np.minimum(thermal.astype(np.int64) * NUM_CLASSES // 255, 8)
    np.testing.assert_array_equal(labels[:, 10:], expected[:, :-10])
    assert np.all(labels[:, :10] == 0)  # outside the warped thermal image: zero thermal


def test_diagnostics_report_rates_latency_and_device(ros):
    start_node(ros, diagnostics_period_s=0.2)
    (rgb, thermal), = sample_pairs(PAIR_SIZE, 1)
    for i in range(3):
        publish_pair(ros, rgb, thermal, T0 + i * 100 * MS, T0 + i * 100 * MS)
        ros.wait_for(lambda n=i + 1: len(results(ros)) >= n)
    assert ros.wait_for(lambda: any(
        kv.key == "published" and int(kv.value) >= 3
        for a in ros.messages("/diagnostics") for s in a.status for kv in s.values))
    status = ros.messages("/diagnostics")[-1].status[0]
    values = {kv.key: kv.value for kv in status.values}
    for key in ("rgb_rate_hz", "thermal_rate_hz", "output_rate_hz", "inference_ms_p50", "inference_ms_p95",
                "latency_ms_p50", "pair_skew_ms_p50", "dropped", "pairs_matched", "device", "precision"):
        assert key in values, key
    assert values["device"] == "cpu" and values["precision"] == "fp32"
    assert float(values["inference_ms_p50"]) > 0


def test_runtime_parameters_and_read_only_ones(ros):
    node = start_node(ros)
    assert node.set_parameters([Parameter("overlay_alpha", value=0.8)])[0].successful
    assert node._engine.overlay_alpha == 0.8
    assert not node.set_parameters([Parameter("overlay_alpha", value=1.5)])[0].successful
    refused = node.set_parameters([Parameter("device", value="cuda")])[0]
    assert not refused.successful and "read-only" in refused.reason
    device, alpha, quality = node.describe_parameters(["device", "overlay_alpha", "jpeg_quality"])
    assert device.read_only and not alpha.read_only
    assert (alpha.floating_point_range[0].from_value, alpha.floating_point_range[0].to_value) == (0.0, 1.0)
    assert (quality.integer_range[0].from_value, quality.integer_range[0].to_value) == (1, 100)
    assert not node.set_parameters([Parameter("jpeg_quality", value=0)])[0].successful
    assert node.set_parameters([Parameter("jpeg_quality", value=70)])[0].successful
    assert node._outputs.jpeg_quality == 70


def test_yaml_documents_every_parameter_with_its_default():
    with open(REPO / "config" / "mafs.yaml") as f:
        tree = yaml.safe_load(f)["/**"]["ros__parameters"]

    def flatten(d, prefix=""):
        for key, value in d.items():
            if isinstance(value, dict):
                yield from flatten(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    documented = dict(flatten(tree))
    assert list(documented) == list(PARAMETERS)
    assert documented == {name: default for name, (default, _) in PARAMETERS.items()}


def test_parameters_from_yaml_file(ros, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("/**:\n  ros__parameters:\n    sync:\n      slop_s: 0.02\n    overlay_alpha: 0.25\n")
    node = MafsNode(engine=stand_in_engine(), context=ros.context,
                    cli_args=["--ros-args", "--params-file", str(params)])
    try:
        assert node.get_parameter("sync.slop_s").value == 0.02
        assert node._engine.overlay_alpha == 0.25
    finally:
        node.destroy_node()


@pytest.mark.parametrize("params, message", [
    ({"sync.backend": "message_filters"}, "message_filters"),
    ({"registration.homography": [1.0, 0.0]}, "homography"),
    ({"sync.slop_s": -1.0}, "sync.slop_s"),
    ({"qos.input.reliability": "sometimes"}, "qos.input.reliability"),
    ({"sync.slop_s": 1}, "sync.slop_s"),  # an integer where a double is declared: rclpy refuses the type
    ({"registration.homography": [1, 0, 0, 0, 1, 0, 0, 0, 1]}, "registration.homography"),
])
def test_bad_parameters_are_startup_errors(ros, params, message):
    if "message_filters" in params.values() and importlib.util.find_spec("message_filters") is not None:
        pytest.skip("message_filters is installed here")
    with pytest.raises(StartupError, match=message.replace(".", r"\.")):
        MafsNode(engine=stand_in_engine(), context=ros.context,
                 parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])


def test_parameter_services_and_diagnostics_answer_while_the_model_runs(ros):
    from rcl_interfaces.srv import GetParameters, SetParameters

    node = start_node(ros, engine=SlowEngine(stand_in_engine(), 2.0), diagnostics_period_s=0.2)
    get_client = ros.node.create_client(GetParameters, "/mafs/get_parameters")
    set_client = ros.node.create_client(SetParameters, "/mafs/set_parameters")
    assert get_client.wait_for_service(timeout_sec=10) and set_client.wait_for_service(timeout_sec=10)
    (rgb, thermal), = sample_pairs(PAIR_SIZE, 1)
    publish_pair(ros, rgb, thermal, T0, T0)
    assert ros.wait_for(lambda: node.counters()["pairing"]["matched"] == 1)
    time.sleep(0.1)  # the worker is now inside the 2 s forward pass
    diagnostics_before = len(ros.messages("/diagnostics"))
    start = time.monotonic()
    got = get_client.call_async(GetParameters.Request(names=["sync.slop_s"]))
    alpha = Parameter("overlay_alpha", value=0.3).to_parameter_msg()
    set_done = set_client.call_async(SetParameters.Request(parameters=[alpha]))
    assert ros.wait_for(lambda: got.done() and set_done.done(), 1.0)
    assert time.monotonic() - start < 1.0
    assert got.result().values[0].double_value == 0.05 and set_done.result().results[0].successful
    assert ros.wait_for(lambda: len(ros.messages("/diagnostics")) >= diagnostics_before + 3, 1.0)
    assert node.counters()["published"] == 0  # all of it happened during the forward pass
    assert ros.wait_for(lambda: len(results(ros)) == 1, 5)


def test_overlay_and_fused_are_skipped_without_subscribers():
    class Recording(SlowEngine):
        overlay_requests: list = []

        def infer(self, *args, **kwargs):
            Recording.overlay_requests.append(kwargs["want_overlay"])
            return self._engine.infer(*args, **kwargs)

    harness = RosHarness()  # subscribes to the result only
    try:
        harness.subscribe(FusedSegmentation, "mafs/result")
        node = start_node(harness, engine=Recording(stand_in_engine(), 0.0))
        (rgb, thermal), = sample_pairs(PAIR_SIZE, 1)
        publish_pair(harness, rgb, thermal, T0, T0)
        assert harness.wait_for(lambda: len(harness.messages("mafs/result")) == 1)
        assert Recording.overlay_requests == [False]
        assert node._outputs.fused.get_subscription_count() == 0
        assert harness.messages("mafs/result")[0].fused.width == rgb.shape[1]  # still in the result message
    finally:
        harness.close()


def test_throttled_errors_are_kept_apart_per_topic(ros):
    node = start_node(ros)
    logged = []

    class Logger:
        def error(self, message):
            logged.append(message)

    node.get_logger = lambda: Logger()
    (rgb, thermal), = sample_pairs(PAIR_SIZE, 1)
    for _ in range(3):
        for topic, array in (("rgb/image", rgb), ("thermal/image", thermal)):
            msg = image_msg(array, "rgb8" if array.ndim == 3 else "mono8", T0, "camera")
            msg.encoding = "yuv422"
            node._accept(topic, msg)
    assert node.counters()["rejected"]["unsupported_encoding"] == 6
    assert len(logged) == 2  # one per topic within the throttle period
    assert any("/rgb/image" in m and "yuv422" in m for m in logged)
    assert any("/thermal/image" in m and "yuv422" in m for m in logged)


def test_message_filters_backend_pairs_and_counts(ros, monkeypatch):
    # message_filters is not on PyPI: a minimal stand-in with its API (Subscriber, ApproximateTimeSynchronizer)
    # checks the node's side of the wiring.
    import types

    fake = types.ModuleType("message_filters")

    class Subscriber:
        def __init__(self, node, msg_type, topic, qos_profile=None, **kwargs):
            self.callbacks = []
            node.create_subscription(msg_type, topic, lambda m: [c(m) for c in self.callbacks], qos_profile, **kwargs)

    class ApproximateTimeSynchronizer:
        def __init__(self, subscribers, queue_size, slop):
            self.latest, self.callbacks, self.slop = [None, None], [], slop
            for index, subscriber in enumerate(subscribers):
                subscriber.callbacks.append(lambda m, i=index: self._add(i, m))

        def registerCallback(self, callback):  # noqa: N802 - message_filters' name
            self.callbacks.append(callback)

        def _add(self, index, msg):
            self.latest[index] = msg
            if None not in self.latest and abs(stamp_ns(self.latest[0].header.stamp)
                                               - stamp_ns(self.latest[1].header.stamp)) <= self.slop * 1e9:
                pair, self.latest = self.latest, [None, None]
                for callback in self.callbacks:
                    callback(*pair)

    fake.Subscriber, fake.ApproximateTimeSynchronizer = Subscriber, ApproximateTimeSynchronizer
    monkeypatch.setitem(sys.modules, "message_filters", fake)
    node = start_node(ros, **{"sync.backend": "message_filters"})
    (rgb, thermal), = sample_pairs(PAIR_SIZE, 1)
    for i in range(2):
        publish_pair(ros, rgb, thermal, T0 + i * 200 * MS, T0 + i * 200 * MS + 3 * MS)
        assert ros.wait_for(lambda n=i + 1: len(results(ros)) == n)
    counters = node.counters()
    assert counters["pairing"]["matched"] == 2 and counters["published"] == 2
    assert counters["pairing"]["skew_ms_signed_mean"] == pytest.approx(3.0)
    refused = node.set_parameters([Parameter("sync.slop_s", value=0.1)])[0]
    assert not refused.successful and "message_filters" in refused.reason


# ---------------------------------------------------------------------------------------------------------
# The real executable


def node_env() -> dict[str, str]:
    return {**os.environ, "ROS_DOMAIN_ID": str(DOMAIN_ID), "PYTHONUNBUFFERED": "1"}


def run_node(*ros_args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mafs_ros.ros.node", "--ros-args", *ros_args],
        env=node_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_executable_fuses_a_pair_and_exits_cleanly_on_signal(ros, signum):
    proc = run_node("-p", "warmup:=0", "-p", "device:=cpu")
    try:
        # the latched info message proves the node is up and discovered before the first pair is sent
        assert ros.wait_for(lambda: len(ros.messages("segmentation/info")) == 1, 60)
        ros.wait_for_subscribers(["rgb/image", "thermal/image"], timeout_s=60)
        (rgb, thermal), = sample_pairs(PAIR_SIZE, 1)
        publish_pair(ros, rgb, thermal, T0, T0)
        if not ros.wait_for(lambda: len(results(ros)) == 1, 60):
            proc.terminate()
            pytest.fail(f"the node published no result; its output:\n{proc.communicate(timeout=10)[0]}")
        start = time.monotonic()
        proc.send_signal(signum)
        output, _ = proc.communicate(timeout=10)
        assert time.monotonic() - start < 5.0
        assert proc.returncode == 0, output
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("ros_args, expected", [
    (("-p", "checkpoint:=/nonexistent/model.safetensors"), "/nonexistent/model.safetensors"),
    (("-p", "device:=cuda"), "CUDA is not available"),
    (("-p", "sync.slop_s:=1"), "sync.slop_s"),
])
def test_executable_refuses_bad_checkpoint_and_device(ros_args, expected):
    if "cuda" in " ".join(ros_args):
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    proc = run_node(*ros_args)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, output
    assert expected in output and "Traceback" not in output


def test_help_prints_every_parameter_and_starts_nothing(capsys):
    from mafs_ros.ros.node import main
    from mafs_ros.ros.parameters import PARAMETERS

    assert main(["--help"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("usage: mafs_node") and all(f"  {name} = " in printed for name in PARAMETERS)
    assert "backend = 'auto'" in printed


def test_raw_16_bit_thermal_warns_under_fixed_and_auto_fixes_it_while_running(ros):
    node = start_node(ros, engine=stand_in_engine(thermal_normalization="fixed"), diagnostics_period_s=0.2)
    (rgb, thermal), = sample_pairs(PAIR_SIZE, 1)
    raw = (7400 + thermal.astype(np.uint16) * 3).astype(np.uint16)  # a 14-bit camera's counts
    publish_pair(ros, rgb, raw, T0, T0, thermal_encoding="mono16")
    assert ros.wait_for(lambda: len(results(ros)) == 1)
    assert ros.wait_for(lambda: "thermal_normalization" in diagnostics_values(ros)[1], 5)
    level, message, values = diagnostics_values(ros)
    assert level == DiagnosticStatus.WARN and float(values["thermal_span_p50"]) < 0.05
    assert node.set_parameters([Parameter("thermal_normalization", value="auto")])[0].successful
    publish_pair(ros, rgb, raw, T0 + 100 * MS, T0 + 100 * MS, thermal_encoding="mono16")
    assert ros.wait_for(lambda: len(results(ros)) == 2)
    assert ros.wait_for(lambda: float(diagnostics_values(ros)[2].get("thermal_span_p50", "nan")) > 0.5, 5)
    assert "thermal_normalization" not in diagnostics_values(ros)[1]
    refused = node.set_parameters([Parameter("thermal_normalization", value="loud")])[0]
    assert not refused.successful and "not a thermal normalisation" in refused.reason
