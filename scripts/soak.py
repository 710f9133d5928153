"""Soak the MAFS node: 30 Hz RGB + 9 Hz thermal (or other rates) with jitter through real DDS for a while, then
check that memory and latency did not grow and that every input frame was fused or counted.

    .venv/bin/python scripts/soak.py [--duration-s 600] [--infer-ms 40] [--height 96 --width 128]
                                     [--rgb-hz 30 --thermal-hz 9] [--thermal-lag-ms 0]

At equal rates with the thermal frame a little after its RGB partner (e.g. --rgb-hz 10 --thermal-hz 10
--thermal-lag-ms 10), a pairer that waits for the next RGB frame before pairing adds a whole frame period to
the latency.

test_reliability.py runs the same soak for 60 s in CI (`run_soak`), and takes the node's frame accounting
(`accounting`, `balanced`) and `rss_mib` from here. The node runs with a stand-in engine that sleeps --infer-ms
per pair. Prints RSS and end-to-end latency after the warm-up and at the end, and the frame identity; exits 1 on
any of `SoakResult.problems()` (RSS grew by more than 10 %, latency grew, a frame unaccounted for).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from mafs_ros.constants import RESULT_TOPIC, RGB_TOPIC, THERMAL_TOPIC
from mafs_ros.msg import FusedSegmentation
from mafs_ros.ros.bench_node import StandInEngine
from mafs_ros.ros.diagnostics import PAIR_REJECTIONS
from mafs_ros.ros.in_process import InProcessRos
from mafs_ros.ros.node import MafsNode
from mafs_ros.stamps import set_stamp
from mafs_ros.stream.conversions import numpy_to_image

# Median latency may wander by scheduling noise (a 2-core CI machine runs other jobs); more than this is growth.
LATENCY_SLACK_MS = 25.0


def accounting(counters: dict[str, Any]) -> dict[str, int]:
    """Both sides of MafsNode's frame identities (see MafsNode.counters), equal once the node is idle:
    received == counted (every input frame) and pairs_matched == pairs_counted (every pair)."""
    pairing = counters["pairing"]
    rejected = counters["rejected"]
    alone = counters["alone_rgb"] + counters["alone_thermal"]  # frames fused alone, a camera silent
    pairs_counted = (counters["published"] + counters["dropped"] + sum(rejected.get(r, 0) for r in PAIR_REJECTIONS)
                     - alone)
    rejected_frames = sum(n for reason, n in rejected.items() if reason not in PAIR_REJECTIONS)
    unmatched = pairing["unmatched_rgb"] + pairing["unmatched_thermal"]
    return {
        "received": counters["received_rgb"] + counters["received_thermal"],
        "counted": rejected_frames + unmatched + counters["queued"] + 2 * pairs_counted + alone,
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


class _SoakLoop(InProcessRos):
    """The node under test and a camera node beside it in a DDS domain of their own, spun by a thread."""

    def __init__(self, engine: Any) -> None:
        # Away from the default domain 0, so that a robot's running nodes do not mix in.
        super().__init__("mafs_soak_camera", int(os.environ.get("MAFS_SOAK_DOMAIN_ID", 200 + os.getpid() % 30)))
        self.camera = self.node
        self.node = MafsNode(engine=engine, context=self.context)
        self.add_node(self.node)


def run_soak(duration_s: float, *, infer_s: float = 0.04, size: tuple[int, int] = (96, 128), warmup_s: float = 10.0,
             window_s: float = 10.0, seed: int = 0, rgb_hz: float = 30.0, thermal_hz: float = 9.0,
             thermal_lag_s: float = 0.0) -> SoakResult:
    """A node with a StandInEngine (`infer_s` per pair) fed `rgb_hz` RGB and `thermal_hz` thermal (best effort,
    like cameras) for `duration_s`; the thermal stream starts `thermal_lag_s` after the RGB one, so equal rates
    give pairs whose thermal frame comes that much after its RGB frame.

    Publish times jitter by +-3 ms around each frame's slot (camera clocks do not drift, so the streams keep
    their phase) and each stamp lies 0-5 ms before its publish (capture to publish), on the wall clock, so the
    node's end-to-end latency is real. After the run the node is given time to go idle, then its counters are
    read.
    """
    if duration_s < warmup_s + window_s:
        raise ValueError(f"duration_s must be at least warmup_s + window_s = {warmup_s + window_s}")
    height, width = size
    loop = _SoakLoop(StandInEngine(height, width, delay_s=infer_s))
    try:
        latencies: list[tuple[float, float]] = []  # (monotonic receive time, end-to-end ms): small, bounded by time

        def on_result(msg: Any) -> None:
            stamp = msg.rgb_stamp.sec * 1_000_000_000 + msg.rgb_stamp.nanosec
            latencies.append((time.monotonic(), (time.time_ns() - stamp) / 1e6))

        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
        loop.camera.create_subscription(FusedSegmentation, RESULT_TOPIC, on_result, reliable)
        best_effort = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
        publishers = {topic: loop.camera.create_publisher(Image, topic, best_effort)
                      for topic in (RGB_TOPIC, THERMAL_TOPIC)}
        subscribed = loop.wait_for(lambda: all(p.get_subscription_count() for p in publishers.values()), 10.0)
        assert subscribed, f"the node did not subscribe to {list(publishers)} within 10 s"
        loop.wait_for(lambda: loop.camera.count_publishers(RESULT_TOPIC) > 0, 10.0)
        time.sleep(0.3)  # the result subscription is matched a moment after discovery

        rng = np.random.default_rng(seed)
        images = {RGB_TOPIC: numpy_to_image(rng.integers(0, 256, (height, width, 3), np.uint8), "rgb8"),
                  THERMAL_TOPIC: numpy_to_image(rng.integers(0, 256, (height, width), np.uint8), "mono8")}
        images[RGB_TOPIC].header.frame_id, images[THERMAL_TOPIC].header.frame_id = "rgb", "thermal"
        periods = {RGB_TOPIC: 1 / rgb_hz, THERMAL_TOPIC: 1 / thermal_hz}
        offsets = {RGB_TOPIC: 0.0, THERMAL_TOPIC: thermal_lag_s}
        due = dict(offsets)
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
            set_stamp(msg.header, time.time_ns() - int(rng.uniform(0, 5e6)))
            publishers[topic].publish(msg)  # serialised here: the message may be reused
            sent[topic] += 1
            due[topic] = offsets[topic] + sent[topic] * periods[topic] + rng.uniform(-0.003, 0.003)
        rss_end = rss_mib()
        loop.wait_for(lambda: balanced(loop.node.counters()), timeout_s=10.0)
        time.sleep(0.5)  # results still on their way to the camera node
        counters = loop.node.counters()

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
        loop.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--infer-ms", type=float, default=40.0, help="time the stand-in engine takes per pair")
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--rgb-hz", type=float, default=30.0)
    parser.add_argument("--thermal-hz", type=float, default=9.0)
    parser.add_argument("--thermal-lag-ms", type=float, default=0.0, help="thermal stream's start after the RGB one")
    args = parser.parse_args()
    result = run_soak(args.duration_s, infer_s=args.infer_ms / 1e3, size=(args.height, args.width),
                      rgb_hz=args.rgb_hz, thermal_hz=args.thermal_hz, thermal_lag_s=args.thermal_lag_ms / 1e3)
    print(result.summary())
    problems = result.problems()
    for problem in problems:
        print(f"FAIL: {problem}")
    print("soak passed" if not problems else "soak FAILED")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
