"""Real rclpy + DDS plumbing for node tests: an isolated context, an executor thread, a publisher/recorder node;
frame accounting and the soak run shared by test_reliability.py and scripts/soak.py."""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import rclpy
from mafs_ros.msg import FusedSegmentation
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from mafs_ros.ros.bench_node import StandInEngine
from mafs_ros.ros.conversions import numpy_to_image
from mafs_ros.ros.node import PAIR_REJECTIONS, RESULT_TOPIC, RGB_TOPIC, THERMAL_TOPIC, MafsNode

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"
# One DDS domain per test process, away from the default 0, so parallel runs and other ROS users do not mix.
DOMAIN_ID = 100 + os.getpid() % 100


def sample_pairs(size: tuple[int, int] = (128, 160), count: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    """Real MSRS pairs from data/sample, resized to (H, W): (RGB uint8 (H, W, 3), thermal uint8 (H, W))."""
    pairs = []
    for path in sorted((SAMPLE / "vi").glob("*.png"))[:count]:
        rgb = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        ir = cv2.imread(str(SAMPLE / "ir" / path.name), cv2.IMREAD_GRAYSCALE)
        size_wh = (size[1], size[0])
        pairs.append((cv2.resize(rgb, size_wh, interpolation=cv2.INTER_AREA), cv2.resize(ir, size_wh)))
    return pairs


def image_msg(array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> Image:
    msg = numpy_to_image(array, encoding)
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    msg.header.frame_id = frame_id
    return msg


class RosHarness:
    """Owns a Context, an executor spinning in a thread, and a test node that publishes inputs and records
    every message it subscribes to (`received[topic]`)."""

    def __init__(self) -> None:
        self.context = Context()
        rclpy.init(context=self.context, domain_id=DOMAIN_ID)
        self.executor = SingleThreadedExecutor(context=self.context)  # as mafs_node spins (see node.py)
        self.node = Node("mafs_test_harness", context=self.context)
        self.executor.add_node(self.node)
        self.received: dict[str, list[Any]] = defaultdict(list)
        self._lock = threading.Lock()
        self._publishers: dict[str, Any] = {}
        self._subscribed: list[str] = []
        self._nodes: list[Node] = []
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001 - the context is shut down at teardown
            pass

    def add_node(self, node: Node) -> None:
        self.executor.add_node(node)
        self._nodes.append(node)

    def publisher(self, msg_type: type, topic: str, reliable: bool = False) -> Any:
        if topic not in self._publishers:
            qos = QoSProfile(
                history=HistoryPolicy.KEEP_LAST, depth=10,
                reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
            )
            self._publishers[topic] = self.node.create_publisher(msg_type, topic, qos)
        return self._publishers[topic]

    def subscribe(self, msg_type: type, topic: str, latched: bool = False) -> None:
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
        )

        def record(msg: Any, topic: str = topic) -> None:
            with self._lock:
                self.received[topic].append(msg)

        self.node.create_subscription(msg_type, topic, record, qos)
        self._subscribed.append(topic)

    def messages(self, topic: str) -> list[Any]:
        with self._lock:
            return list(self.received[topic])

    def wait_for(self, condition: Callable[[], bool], timeout_s: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.02)
        return condition()

    def wait_for_subscribers(self, topics: list[str], timeout_s: float = 10.0) -> None:
        ok = self.wait_for(
            lambda: all(self.publisher(Image, t).get_subscription_count() > 0 for t in topics), timeout_s
        )
        assert ok, f"no subscriber appeared on {topics} within {timeout_s} s"
        # The node's output publishers are discovered about as late as its subscriptions; a volatile reader
        # that is not matched yet would miss the first results.
        outputs = [t for t in self._subscribed if t != "/diagnostics"]
        self.wait_for(lambda: all(self.node.count_publishers(t) > 0 for t in outputs), timeout_s)
        time.sleep(0.3)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        # Destroyed explicitly: a participant left to the garbage collector can linger in discovery and be
        # "matched" by the next test's publishers.
        for node in self._nodes + [self.node]:
            node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(5.0)


# ---------------------------------------------------------------------------------------------------------
# Frame accounting, memory, and the soak run


def diagnostics_values(ros: RosHarness) -> tuple[int | None, str, dict[str, str]]:
    """Level, message and values of the newest /diagnostics status (None, "", {} before the first one)."""
    if not ros.messages("/diagnostics"):
        return None, "", {}
    status = ros.messages("/diagnostics")[-1].status[0]
    return status.level, status.message, {kv.key: kv.value for kv in status.values}


def accounting(counters: dict[str, Any]) -> dict[str, int]:
    """Both sides of MafsNode's frame identities (see MafsNode.counters), equal once the node is idle:
    received == counted (every input frame) and pairs_matched == pairs_counted (every pair)."""
    pairing = counters["pairing"]
    rejected = counters["rejected"]
    pairs_counted = counters["published"] + counters["dropped"] + sum(rejected.get(r, 0) for r in PAIR_REJECTIONS)
    rejected_frames = sum(n for reason, n in rejected.items() if reason not in PAIR_REJECTIONS)
    unmatched = pairing["unmatched_rgb"] + pairing["unmatched_thermal"]
    return {
        "received": counters["received_rgb"] + counters["received_thermal"],
        "counted": rejected_frames + unmatched + counters["queued"] + 2 * pairs_counted,
        "pairs_matched": pairing["matched"],
        "pairs_counted": pairs_counted,
        "rejected_frames": rejected_frames,
        "unmatched": unmatched,
        "queued": counters["queued"],
    }


def balanced(counters: dict[str, Any]) -> bool:
    books = accounting(counters)
    return books["received"] == books["counted"] and books["pairs_matched"] == books["pairs_counted"]


def rss_mib() -> float:
    """Resident memory of this process (VmRSS), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS line in /proc/self/status")


# Median latency may wander by scheduling noise (a 2-core CI machine runs other jobs); more than this is growth.
LATENCY_SLACK_MS = 25.0


@dataclass
class SoakResult:
    """What `run_soak` measured. RSS and latency "start" are taken after the warm-up, "end" over the last window;
    latency is end to end (mafs/result received - RGB stamp), the median of a window."""

    duration_s: float
    sent: dict[str, int]
    counters: dict[str, Any]
    books: dict[str, int]
    results_received: int
    rss_start_mib: float
    rss_end_mib: float
    latency_start_ms: float
    latency_end_ms: float
    latency_p50_ms: float = float("nan")  # the median over the whole run after the warm-up

    def problems(self) -> list[str]:
        """What went wrong (empty: nothing): a frame unaccounted for, RSS growth beyond 10 %, latency growth beyond
        scheduling noise (LATENCY_SLACK_MS), nothing published, or rejected frames (all inputs are valid)."""
        found = []
        books = self.books
        if books["received"] != books["counted"] or books["pairs_matched"] != books["pairs_counted"]:
            found.append(f"frames unaccounted for: {books}")
        if self.rss_end_mib > 1.10 * self.rss_start_mib:
            found.append(f"RSS grew from {self.rss_start_mib:.1f} to {self.rss_end_mib:.1f} MiB")
        if not self.latency_end_ms <= self.latency_start_ms + LATENCY_SLACK_MS:  # also true for NaN
            found.append(f"latency grew from {self.latency_start_ms:.1f} to {self.latency_end_ms:.1f} ms")
        if self.counters["published"] == 0 or self.counters["rejected"]:
            found.append(f"nothing published or frames rejected: {self.counters}")
        return found

    def summary(self) -> str:
        b, c = self.books, self.counters
        return "\n".join([
            f"soak {self.duration_s:.0f} s: sent rgb {self.sent['rgb']} thermal {self.sent['thermal']}; node "
            f"received rgb {c['received_rgb']} thermal {c['received_thermal']}; results received "
            f"{self.results_received}",
            f"RSS start {self.rss_start_mib:.1f} MiB, end {self.rss_end_mib:.1f} MiB "
            f"({(self.rss_end_mib / self.rss_start_mib - 1) * 100:+.1f} %)",
            f"latency p50 start {self.latency_start_ms:.1f} ms, end {self.latency_end_ms:.1f} ms, whole run after "
            f"the warm-up {self.latency_p50_ms:.1f} ms",
            f"frames: received {b['received']} == rejected {b['rejected_frames']} + unmatched {b['unmatched']} + "
            f"queued {b['queued']} + 2 x pairs {b['pairs_counted']} = {b['counted']}",
            f"pairs: matched {b['pairs_matched']} == published {c['published']} + dropped {c['dropped']} + rejected "
            f"{b['pairs_counted'] - c['published'] - c['dropped']} = {b['pairs_counted']}",
        ])


def run_soak(duration_s: float, *, infer_s: float = 0.04, size: tuple[int, int] = (96, 128), warmup_s: float = 10.0,
             window_s: float = 10.0, seed: int = 0) -> SoakResult:
    """A node with a StandInEngine (`infer_s` per pair) fed 30 Hz RGB and 9 Hz thermal (best effort, like
    cameras) for `duration_s`.

    Publish times jitter by +-3 ms around the frame period and each stamp lies 0-5 ms before its publish
    (capture to publish), on the wall clock, so the node's end-to-end latency is real. After the run the node
    is given time to go idle, then its counters are read.
    """
    if duration_s < warmup_s + window_s:
        raise ValueError(f"duration_s must be at least warmup_s + window_s = {warmup_s + window_s}")
    ros = RosHarness()
    try:
        latencies: list[tuple[float, float]] = []  # (monotonic receive time, end-to-end ms): small, bounded by time

        def on_result(msg: Any) -> None:
            stamp = msg.rgb_stamp.sec * 1_000_000_000 + msg.rgb_stamp.nanosec
            latencies.append((time.monotonic(), (time.time_ns() - stamp) / 1e6))

        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
        ros.node.create_subscription(FusedSegmentation, RESULT_TOPIC, on_result, reliable)
        height, width = size
        node = MafsNode(engine=StandInEngine(height, width, delay_s=infer_s), context=ros.context)
        ros.add_node(node)
        ros.wait_for_subscribers([RGB_TOPIC, THERMAL_TOPIC])

        rng = np.random.default_rng(seed)
        images = {RGB_TOPIC: image_msg(rng.integers(0, 256, (height, width, 3), np.uint8), "rgb8", 0, "rgb"),
                  THERMAL_TOPIC: image_msg(rng.integers(0, 256, (height, width), np.uint8), "mono8", 0, "thermal")}
        periods = {RGB_TOPIC: 1 / 30, THERMAL_TOPIC: 1 / 9}
        due = {RGB_TOPIC: 0.0, THERMAL_TOPIC: 0.0}
        sent = {RGB_TOPIC: 0, THERMAL_TOPIC: 0}
        start = time.monotonic()
        rss_start = None
        while (now := time.monotonic() - start) < duration_s:
            topic = min(due, key=due.get)
            if due[topic] > now:
                time.sleep(due[topic] - now)
                continue
            if rss_start is None and now >= warmup_s:
                rss_start = rss_mib()
            msg = images[topic]
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(
                time.time_ns() - int(rng.uniform(0, 5e6)), 1_000_000_000)
            ros.publisher(Image, topic).publish(msg)  # serialised here: the message may be reused
            sent[topic] += 1
            due[topic] += periods[topic] + rng.uniform(-0.003, 0.003)
        rss_end = rss_mib()
        ros.wait_for(lambda: balanced(node.counters()), timeout_s=10.0)
        time.sleep(0.5)  # results still on their way to the recorder
        counters = node.counters()

        def median_latency(t0: float, t1: float) -> float:
            values = [ms for t, ms in latencies if start + t0 <= t < start + t1]
            return float(np.median(values)) if values else float("nan")

        return SoakResult(
            duration_s=duration_s, sent={"rgb": sent[RGB_TOPIC], "thermal": sent[THERMAL_TOPIC]},
            counters=counters, books=accounting(counters), results_received=len(latencies),
            rss_start_mib=rss_start, rss_end_mib=rss_end,
            latency_start_ms=median_latency(warmup_s, warmup_s + window_s),
            latency_end_ms=median_latency(duration_s - window_s, duration_s),
            latency_p50_ms=median_latency(warmup_s, duration_s),
        )
    finally:
        ros.close()
