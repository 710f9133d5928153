#!/usr/bin/env python3
"""Would int8 pay? onnxruntime static quantization of a checkpoint's graph, calibrated on the bundled sample
pairs, timed against the fp32 graph and scored on other pairs (docs/PERFORMANCE.md records the answer).

    .venv/bin/python scripts/quantize_int8.py [--checkpoint CKPT] [--pairs DIR] [--runs 20]

Prints the median forward time of both graphs, measured taking turns in one run, the lowest fused PSNR and the
label agreement of int8 against fp32 on the scoring pairs (default: ../shared/data/msrs_sample when present,
else the bundled ones). The package adopts int8 only at 1.3x or more with PSNR >= 35 dB and >= 98 % of labels.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from mafs_ros.backends.onnx_export import export_onnx
from mafs_ros.bench import cpu_isa
from mafs_ros.engine import MafsEngine
from mafs_ros.io.images import load_pair
from mafs_ros.io.layouts import discover_pairs
from mafs_ros.io.samples import sample_pairs

SIZE = (480, 640)
SCORING = Path("../shared/data/msrs_sample")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


class Calibration(CalibrationDataReader):
    def __init__(self, inputs: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self._feeds = iter([{"visible": vi, "thermal": ir} for vi, ir in inputs])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def network_inputs(engine: MafsEngine, pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, ...]]:
    return [tuple(t.contiguous().numpy() for t in engine.network_inputs([pair])) for pair in pairs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="default: the packaged mafs-lite")
    parser.add_argument("--pairs", type=Path, default=SCORING if SCORING.is_dir() else None)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()

    engine = MafsEngine(args.checkpoint, device="cpu", backend="torch")
    calibration = network_inputs(engine, sample_pairs(SIZE, 6))
    if args.pairs:
        scoring = [load_pair(p, engine.config.num_classes)[:2] for p in discover_pairs(args.pairs)]
    else:
        scoring = sample_pairs(SIZE, 6)
    scored = network_inputs(engine, scoring)

    folder = Path(tempfile.mkdtemp(prefix="mafs_int8_"))
    fp32 = export_onnx(args.checkpoint, folder / "fp32.onnx", height=SIZE[0], width=SIZE[1], dynamic_batch=False)
    quant_pre_process(str(fp32), str(folder / "prep.onnx"))
    int8 = folder / "int8.onnx"
    quantize_static(str(folder / "prep.onnx"), str(int8), Calibration(calibration), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    sessions = {name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                for name, path in (("fp32", fp32), ("int8", int8))}
    feeds = {"visible": scored[0][0], "thermal": scored[0][1]}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(2):
        for session in sessions.values():
            session.run(None, feeds)
    for _ in range(args.runs):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feeds)
            times[name].append((time.perf_counter() - start) * 1e3)

    psnrs, agree, total = [], 0, 0
    for vi, ir in scored:
        (fused_a, logits_a), (fused_b, logits_b) = (s.run(["fused", "semantic"], {"visible": vi, "thermal": ir})
                                                    for s in sessions.values())
        psnrs.append(psnr((fused_a[0, 0] * 255).round(), (fused_b[0, 0] * 255).round()))
        labels_a, labels_b = logits_a.argmax(1), logits_b.argmax(1)
        agree += int((labels_a == labels_b).sum())
        total += labels_a.size
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"CPU {cpu_isa()}, {torch.get_num_threads()} threads, onnxruntime {ort.__version__}, {SIZE[0]}x{SIZE[1]}, "
          f"{args.runs} runs each, taking turns")
    print(f"fp32 {median['fp32']:.1f} ms, int8 {median['int8']:.1f} ms: int8 is {median['fp32'] / median['int8']:.2f}x")
    print(f"int8 against fp32 on {len(scored)} pairs: lowest fused PSNR {min(psnrs):.1f} dB, "
          f"labels agree on {agree / total * 100:.2f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
