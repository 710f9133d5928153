"""The node's own cost per pair, excluding the model: conversion + pairing + publishing, median of N pairs.

    .venv/bin/python scripts/bench_node_overhead.py [--pairs 100] [--height 480 --width 640]

The engine is replaced by one that returns a precomputed result instantly, so everything timed is the node:
    internal: decode + register (before the model) and message building + publishing (after), inside the worker;
    round trip: publish the pair -> receive mafs/result, over real DDS, minus nothing (the model takes ~0 ms).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "test"))

from mafs_ros.msg import FusedSegmentation  # noqa: E402
from ros_harness import RosHarness, image_msg  # noqa: E402

from mafs_ros.engine import FusionResult  # noqa: E402
from mafs_ros.ros.node import MafsNode  # noqa: E402


class InstantEngine:
    """Looks like MafsEngine to the node; infer() returns a fixed result of the right size at once."""

    device, precision, overlay_alpha, checkpoint_path = torch.device("cpu"), "fp32", 0.5, None
    class_names = tuple(f"class{i}" for i in range(9))
    palette = np.zeros((9, 3), np.uint8)

    class config:  # noqa: N801 - mimics MafsConfig's attribute access
        name = "instant"

    def __init__(self, height: int, width: int) -> None:
        self._result = FusionResult(
            fused_rgb=np.zeros((height, width, 3), np.uint8), fused_y=np.zeros((height, width), np.uint8),
            labels=np.zeros((height, width), np.uint8), confidence=None, overlay=None,
            timings={"preprocess_ms": 0.0, "inference_ms": 0.0, "postprocess_ms": 0.0},
        )

    def infer(self, rgb, thermal, *, want_confidence=True, want_overlay=False) -> FusionResult:
        return self._result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    args = parser.parse_args()

    ros = RosHarness()
    ros.subscribe(FusedSegmentation, "mafs/result")
    node = MafsNode(engine=InstantEngine(args.height, args.width), context=ros.context)
    ros.add_node(node)
    ros.wait_for_subscribers(["rgb/image", "thermal/image"])
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (args.height, args.width, 3), dtype=np.uint8)
    thermal = rng.integers(0, 255, (args.height, args.width), dtype=np.uint8)
    round_trip = []
    for i in range(args.pairs + 5):  # 5 warm-up pairs
        stamp = 1_700_000_000_000_000_000 + i * 100_000_000
        thermal_msg, rgb_msg = image_msg(thermal, "mono8", stamp, "t"), image_msg(rgb, "rgb8", stamp, "c")
        start = time.perf_counter()
        ros.publisher(type(thermal_msg), "thermal/image").publish(thermal_msg)
        ros.publisher(type(rgb_msg), "rgb/image").publish(rgb_msg)
        deadline = start + 10.0
        while len(ros.received["mafs/result"]) < i + 1:  # tight poll: the harness's 20 ms poll would dominate
            if time.perf_counter() > deadline:
                raise SystemExit(f"no result for pair {i}; counters {node.counters()}")
            time.sleep(0.0002)
        if i >= 5:
            round_trip.append((time.perf_counter() - start) * 1e3)
    internal = list(node._overhead_ms)[-args.pairs:]
    print(f"node overhead per {args.height}x{args.width} pair, CPU, torch threads {torch.get_num_threads()}, "
          f"{args.pairs} pairs:")
    print(f"  inside the node (decode + publish): median {statistics.median(internal):.2f} ms, "
          f"p95 {np.percentile(internal, 95):.2f} ms")
    print(f"  round trip over DDS (publish pair -> receive result, incl. pairing): median "
          f"{statistics.median(round_trip):.2f} ms, p95 {np.percentile(round_trip, 95):.2f} ms")
    node.destroy_node()
    ros.close()


if __name__ == "__main__":
    main()
