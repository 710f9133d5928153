"""The node's part of `mafs bench`: MafsNode in this process, a player/recorder node beside it, real DDS.

    node_overhead     a stand-in engine answers at once, so the node's own work is what is timed: the node
                      measures it itself (`MafsNode.overhead_ms`: both inputs' callbacks, i.e. decoding and
                      pairing, then building and publishing fused image, labels, overlay and result, each of
                      which the player subscribes to, as rviz2 would)
    node_end_to_end   the real engine: publish a pair, wait for `mafs/result`, next pair (wall clock)
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from mafs_ros.constants import FUSED_TOPIC, LABELS_TOPIC, OVERLAY_TOPIC, RESULT_TOPIC, RGB_TOPIC, THERMAL_TOPIC
from mafs_ros.engine import FusionResult
from mafs_ros.msg import FusedSegmentation
from mafs_ros.ros.in_process import InProcessRos
from mafs_ros.ros.node import MafsNode
from mafs_ros.stamps import set_stamp
from mafs_ros.stream.conversions import numpy_to_image

WARMUP_PAIRS = 5


class StandInEngine:
    """Looks like MafsEngine to the node; `infer` takes `delay_s` (a model's time; 0: answers at once) and returns
    a fixed result of the input's size, so that what is timed is the node, not a network. A test double that
    lives in the package because the product uses it: `mafs bench` (node overhead) and scripts/soak.py."""

    device, precision, overlay_alpha, checkpoint_path = "cpu", "fp32", 0.5, None
    class_names = tuple(f"class{i}" for i in range(9))
    palette = np.zeros((9, 3), np.uint8)

    class config:  # noqa: N801 - mimics MafsConfig's attribute access
        name = "stand-in"

    def __init__(self, height: int, width: int, delay_s: float = 0.0) -> None:
        self._delay_s = delay_s
        self._result = FusionResult(
            fused_rgb=np.zeros((height, width, 3), np.uint8), fused_y=np.zeros((height, width), np.uint8),
            labels=np.zeros((height, width), np.uint8), confidence=None, overlay=np.zeros((height, width, 3), np.uint8),
            timings={"preprocess_ms": 0.0, "inference_ms": delay_s * 1e3, "postprocess_ms": 0.0},
        )

    def infer(self, rgb: np.ndarray, thermal: np.ndarray, *, want_confidence: bool = True,
              want_overlay: bool = False) -> FusionResult:
        if self._delay_s:
            time.sleep(self._delay_s)
        return self._result


class _Loop(InProcessRos):
    """A private DDS domain with the node under test and a player that publishes pairs and counts results."""

    def __init__(self, engine: Any) -> None:
        # A domain of its own: a bench must not feed, or be fed by, a robot's running nodes.
        super().__init__("mafs_bench_player", int(os.environ.get("MAFS_BENCH_DOMAIN_ID", 150 + os.getpid() % 80)))
        self.player = self.node
        self.node = MafsNode(engine=engine, context=self.context)
        self.add_node(self.node)
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=2, reliability=ReliabilityPolicy.RELIABLE)
        self.rgb = self.player.create_publisher(Image, RGB_TOPIC, qos)
        self.thermal = self.player.create_publisher(Image, THERMAL_TOPIC, qos)
        self.results = 0
        self._lock = threading.Lock()
        self.player.create_subscription(FusedSegmentation, RESULT_TOPIC, self._on_result, 10)
        # Subscribed so that the node builds and publishes them: without a subscriber it skips that work.
        for topic in (FUSED_TOPIC, LABELS_TOPIC, OVERLAY_TOPIC):
            self.player.create_subscription(Image, topic, lambda _: None, 10)
        self._wait(lambda: self.rgb.get_subscription_count() > 0 and self.thermal.get_subscription_count() > 0
                   and all(self.player.count_publishers(t) > 0 for t in (RESULT_TOPIC, FUSED_TOPIC, OVERLAY_TOPIC)),
                   10.0, "the node's subscriptions")
        time.sleep(0.3)  # the node's side of the match completes about now

    def _on_result(self, _: FusedSegmentation) -> None:
        with self._lock:
            self.results += 1

    def _wait(self, condition: Any, timeout_s: float, what: str) -> None:
        # A tight poll: a coarse one would be measured as latency.
        if not self.wait_for(condition, timeout_s, poll_s=0.0002):
            raise RuntimeError(f"bench: timed out waiting for {what} (node counters {self.node.counters()})")

    def round_trip_ms(self, rgb: np.ndarray, thermal: np.ndarray, index: int, timeout_s: float) -> float:
        """Publish one pair (equal stamps, so it pairs at once) and wait for its result."""
        stamp = 1_700_000_000_000_000_000 + index * 100_000_000
        messages = []
        for array, encoding, frame in ((thermal, "mono8", "thermal"), (rgb, "rgb8", "camera")):
            msg = numpy_to_image(array, encoding)
            set_stamp(msg.header, stamp)
            msg.header.frame_id = frame
            messages.append(msg)
        with self._lock:
            expected = self.results + 1
        start = time.perf_counter()
        self.thermal.publish(messages[0])
        self.rgb.publish(messages[1])
        self._wait(lambda: self.results >= expected, timeout_s, f"the result of pair {index}")
        return (time.perf_counter() - start) * 1e3


def bench_node_overhead(height: int, width: int, runs: int) -> list[float]:
    """The node's own milliseconds per pair (as the node measures them) over `runs` pairs, stand-in engine."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    thermal = rng.integers(0, 255, (height, width), dtype=np.uint8)
    loop = _Loop(StandInEngine(height, width))
    try:
        for index in range(runs + WARMUP_PAIRS):
            loop.round_trip_ms(rgb, thermal, index, timeout_s=10.0)
        return loop.node.overhead_ms()[-runs:]
    finally:
        loop.close()


def bench_node_end_to_end(
    engine: Any, pair: tuple[np.ndarray, np.ndarray], runs: int, max_seconds: float
) -> list[float]:
    """Wall milliseconds from publishing a pair to receiving its result, real engine; at least 3 runs, then up to
    `runs` within `max_seconds`."""
    rgb, thermal = pair
    loop = _Loop(engine)
    try:
        loop.round_trip_ms(rgb, thermal, 0, timeout_s=600.0)  # warm-up
        times: list[float] = []
        deadline = time.monotonic() + max_seconds
        while len(times) < runs and (len(times) < 3 or time.monotonic() < deadline):
            times.append(loop.round_trip_ms(rgb, thermal, len(times) + 1, timeout_s=600.0))
        return times
    finally:
        loop.close()
