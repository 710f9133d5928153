#!/usr/bin/env python3
"""Where onnxruntime spends a forward pass of a checkpoint's graph: the share of each operator type and the
slowest nodes, from onnxruntime's own profiler (docs/PERFORMANCE.md).

    .venv/bin/python scripts/profile_onnxruntime.py [--checkpoint CKPT] [--size 480x640] [--runs 10]

The graph is the one the default CPU engine runs (exported and checked as by `backend: onnxruntime`, into a
temporary cache), with the engine's session options. It also times the graph under onnxruntime's three graph
optimisation levels, taking turns run by run (the default, ORT_ENABLE_ALL, is the one with the NCHWc layout).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="default: the packaged mafs-lite")
    parser.add_argument("--size", default="480x640", help="network input HxW (default 480x640)")
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as folder:
        os.environ["MAFS_ROS_CACHE"] = folder
        import onnxruntime as ort
        import torch

        from mafs_ros.engine import MafsEngine

        engine = MafsEngine(args.checkpoint, device="cpu", backend="onnxruntime", warmup=0)
        engine.infer(np.zeros((height, width, 3), np.uint8), np.zeros((height, width), np.uint8))
        (graph,) = Path(folder).rglob("*.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "profile")
        session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        feeds = {i.name: np.random.rand(1, *i.shape[1:]).astype(np.float32) for i in session.get_inputs()}
        for _ in range(args.runs):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
        levels = {}
        for level in ("ORT_ENABLE_ALL", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_BASIC"):
            options.enable_profiling = False
            options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
            levels[level] = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
            levels[level].run(None, feeds)
        times: dict[str, list[float]] = {level: [] for level in levels}
        for _ in range(args.runs):
            for level, timed in levels.items():
                start = time.perf_counter()
                timed.run(None, feeds)
                times[level].append(time.perf_counter() - start)
    by_op, by_node = Counter(), Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"]
            by_node[event["name"].removesuffix("_kernel_time")] += event["dur"]
    total = sum(by_op.values())
    print(f"{graph.name}: {total / args.runs / 1e3:.1f} ms of kernels per run, {torch.get_num_threads()} threads")
    for op, us in by_op.most_common(10):
        print(f"  {op:24s} {us / total:6.1%}")
    print("slowest nodes:")
    for node, us in by_node.most_common(10):
        print(f"  {node[:80]:80s} {us / total:6.1%}")
    fastest = np.median(times["ORT_ENABLE_ALL"])
    print("graph optimisation level, median ms (vs the default, same run):")
    for level, measured in times.items():
        print(f"  {level:20s} {np.median(measured) * 1e3:7.1f}  {np.median(measured) / fastest:.2f}x")


if __name__ == "__main__":
    main()
