"""`mafs bench`: how fast the engine and the node are, measured, never assumed.

Records (one per measured combination, all in `bench.json` and a Markdown table `bench.md`):

    engine            MafsEngine.infer_batch on real sample pairs: wall time per call (preprocess + network +
                      postprocess), and the engine's own per-stage split; its backend is the one `auto` picks
                      (`backends.default_backend`: onnxruntime for fp32 on a CPU) unless the plan names one
    eager_reference   the same network and weights as the official code runs it: plain fp32 eager forward,
                      NCHW, BatchNorm unfolded, every head computed (deep-supervision maps included), under
                      torch.no_grad; network-size tensors in, so it times the network alone
    node_overhead     the ROS node's own cost per pair (decode, pairing, message building, publishing) with a
                      stand-in engine that answers instantly
    node_end_to_end   publish a pair -> receive `mafs/result` over DDS, with the real engine

`speedup_vs_eager` = eager median / engine median, both measured in the same run on the same pairs, taking
turns call by call (the first precision's engine with the eager forward, so drifting machine speed cannot favour
either side): the engine's time includes its pre- and postprocessing, the eager one does not.

`compute_floor_ms` = 2 * MACs * batch / the device's measured dense matmul throughput (fp32 on a CPU, in the
same run): no implementation of the network can be faster than that, so engine / floor says how far from the
hardware it runs. `cpu_isa` names the widest vector instructions the CPU has and oneDNN may use
(ONEDNN_MAX_CPU_ISA caps them).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import DEFAULT_CHECKPOINT
from .constants import BENCH_CONFIGS
from .backends import default_backend
from .engine import MafsEngine, resolve_device
from .io.samples import sample_count, sample_pairs
from .model import build_model, get_config
from .model.complexity import count_macs
from .stats import percentile

logger = logging.getLogger(__name__)

SIZES = ((480, 640), (600, 800))
BATCHES = (1, 8)
WHATS = ("engine", "eager_reference", "node_overhead", "node_end_to_end")
# What reduced precision must keep of fp32's fused image (PSNR) and labels (agreement): `check_precision`'s bounds.
MIN_PSNR_DB = 40.0
MIN_LABEL_AGREEMENT = 0.995


@dataclass
class BenchRecord:
    """One measured combination. Times are per call (one batch of `batch` pairs), in milliseconds."""

    config: str
    device: str
    precision: str
    batch: int
    height: int
    width: int
    what: str
    median_ms: float
    p95_ms: float
    pairs_per_s: float
    runs: int
    speedup_vs_eager: float | None = None
    stages_ms: dict[str, float] = field(default_factory=dict)  # engine: median per stage, per call
    peak_gpu_mib: float | None = None
    achieved_tflops: float | None = None  # 2 * MACs * batch / median time
    compute_floor_ms: float | None = None  # 2 * MACs * batch / measured peak matmul throughput
    backend: str = ""  # engine: what ran the network (torch or onnxruntime)
    device_name: str = ""
    threads: int = 0
    torch_version: str = torch.__version__


def interleaved_runs(
    fns: Sequence[Callable[[], Any]], device: torch.device, runs: int, warmup: int, max_seconds: float
) -> list[list[float]]:
    """Call each of `fns` `warmup` times, then all of them in turn, round after round, up to `runs` rounds
    (stopping early after `max_seconds`, at least 3 rounds); returns milliseconds per call, one list per fn.

    Taking turns makes a comparison of the fns fair on a machine whose speed drifts (other tenants, clocks):
    measured one after the other, a minute-long slow phase lands on one side only. On CUDA each call is timed
    with CUDA events, so queued work is counted."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    deadline = time.monotonic() + max_seconds
    while len(times[-1]) < runs and (len(times[-1]) < 3 or time.monotonic() < deadline):
        for fn, fn_times in zip(fns, times):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                fn_times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                fn_times.append((time.perf_counter() - t0) * 1e3)
    return times


def timed_runs(
    fn: Callable[[], Any], device: torch.device, runs: int, warmup: int, max_seconds: float
) -> list[float]:
    """`interleaved_runs` of one fn: milliseconds per call."""
    return interleaved_runs([fn], device, runs, warmup, max_seconds)[0]


def summarize(times: Sequence[float]) -> tuple[float, float]:
    """(median, p95) in the units of `times`."""
    return percentile(times, 50), percentile(times, 95)


def reference_network(config: str, num_classes: int = 9) -> torch.nn.Module:
    """The eval-mode network a benchmark runs: `mafs-lite` with the shipped weights, `mafs` (no checkpoint
    ships; speed does not depend on the weights' values) seeded random weights."""
    if config == "mafs-lite":
        from .checkpoint import build_model_from_checkpoint, load_checkpoint

        return build_model_from_checkpoint(load_checkpoint(DEFAULT_CHECKPOINT)).eval()
    torch.manual_seed(0)
    return build_model(get_config(config, num_classes=num_classes)).eval()


def cpu_isa() -> str:
    """The widest x86 vector extension of this CPU (avx512 / avx2 / sse4.2 / other), with oneDNN's cap
    (ONEDNN_MAX_CPU_ISA) when one is set: kernels, speed and float rounding depend on it."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        flags = []
    isa = next((name for flag, name in (("avx512f", "avx512"), ("avx2", "avx2"), ("sse4_2", "sse4.2"))
                if flag in flags), "other")
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return f"{isa} (oneDNN capped at {cap})" if cap else isa


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {cpu_isa()}, {torch.get_num_threads()} threads"


def measured_peak_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """Dense matmul throughput this device reaches in `dtype` (best of 10; 8192^3 on a GPU, 2048^3 on a CPU):
    the compute floor's denominator."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = min(timed_runs(lambda: a @ b, device, runs=10, warmup=3, max_seconds=30.0))
    return 2 * n**3 / (best / 1e3) / 1e12


def engine_call(
    engine: MafsEngine, pairs: list[tuple[np.ndarray, np.ndarray]]
) -> tuple[Callable[[], None], dict[str, list[float]]]:
    """A call of `infer_batch` over `pairs` (one batch), and the per-call stage times it appends to."""
    stages: dict[str, list[float]] = {"preprocess_ms": [], "inference_ms": [], "postprocess_ms": []}

    def call() -> None:
        results = engine.infer_batch(pairs, want_confidence=False)
        for name in stages:
            stages[name].append(results[0].timings[name] * len(pairs))

    return call, stages


def eager_call(
    network: torch.nn.Module, engine: MafsEngine, pairs: list[tuple[np.ndarray, np.ndarray]]
) -> Callable[[], None]:
    """A plain eager fp32 forward (see the module docstring) on the engine's network-size inputs."""
    vi, ir = engine.network_inputs(pairs)
    vi, ir = vi.contiguous(), ir.contiguous()

    def call() -> None:
        with torch.no_grad():
            network(vi, ir, with_aux=True)

    return call


def stage_medians(stages: dict[str, list[float]], runs: int) -> dict[str, float]:
    """Median per stage over the last `runs` calls (the timed ones, not the warm-up)."""
    return {name: float(statistics.median(values[-runs:])) for name, values in stages.items()}


def check_precision(
    reference: MafsEngine, candidate: MafsEngine, pairs: list[tuple[np.ndarray, np.ndarray]]
) -> dict[str, float | bool]:
    """Accuracy of `candidate` (e.g. fp16) against `reference` (fp32) on `pairs`: the lowest fused-RGB PSNR
    (dB; inf when identical) and the label agreement over all pixels; `ok` when both meet the bounds."""
    psnrs, agree, total = [], 0, 0
    for rgb, thermal in pairs:
        a = reference.infer(rgb, thermal, want_confidence=False)
        b = candidate.infer(rgb, thermal, want_confidence=False)
        mse = float(np.mean((a.fused_rgb.astype(np.float64) - b.fused_rgb.astype(np.float64)) ** 2))
        psnrs.append(float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse))
        agree += int(np.count_nonzero(a.labels == b.labels))
        total += a.labels.size
    min_psnr, agreement = min(psnrs), agree / total
    return {
        "min_psnr_db": min_psnr,
        "label_agreement": agreement,
        "ok": bool(min_psnr >= MIN_PSNR_DB and agreement >= MIN_LABEL_AGREEMENT),
    }


@dataclass
class BenchPlan:
    """What to measure. `quick`: CPU, both configs, 480x640, batch 1 only."""

    configs: tuple[str, ...] = BENCH_CONFIGS
    sizes: tuple[tuple[int, int], ...] = SIZES
    batches: tuple[int, ...] = BATCHES
    devices: tuple[str, ...] = ("cpu", "cuda")
    compile_mode: str = "none"  # engine records with torch.compile (see MafsEngine)
    backend: str = "auto"  # the engine's backend (auto: what MafsEngine's default picks per device and precision)
    precisions: tuple[str, ...] = ()  # empty: fp32 on a CPU, fp32 + fp16 (+ bf16 where supported) on CUDA
    runs: int = 50
    max_seconds: float = 120.0  # per record; slow combinations (mafs on a CPU) stop early and say how many runs
    node: bool = True
    eager: bool = True

    @classmethod
    def quick(cls) -> BenchPlan:
        return cls(sizes=((480, 640),), batches=(1,), devices=("cpu",), max_seconds=25.0)


def precisions_for(device: torch.device) -> tuple[str, ...]:
    if device.type == "cuda":
        return ("fp32", "fp16", "bf16") if torch.cuda.is_bf16_supported() else ("fp32", "fp16")
    return ("fp32",)


def available_devices(requested: Sequence[str]) -> list[torch.device]:
    devices = []
    for name in requested:
        if name == "cuda" and not torch.cuda.is_available():
            logger.info("no CUDA device: CUDA records skipped")
            continue
        devices.append(resolve_device(name))
    return devices


def run_bench(plan: BenchPlan, progress: Callable[[BenchRecord], None] | None = None) -> list[BenchRecord]:
    """Measure every combination of `plan`; `progress` sees each record as it is made."""
    records: list[BenchRecord] = []

    def add(record: BenchRecord) -> None:
        records.append(record)
        if progress is not None:
            progress(record)

    for device in available_devices(plan.devices):
        peaks: dict[torch.dtype, float] = {}  # measured once per device and dtype, in this run
        for config in plan.configs:
            network = reference_network(config)
            on_device = copy.deepcopy(network).to(device)  # the eager reference, and what the MACs are counted on
            eager = on_device if plan.eager else None
            macs = {size: count_macs(on_device, *size) for size in plan.sizes}
            eager_times: dict[tuple[int, int, int], list[float]] = {}  # (H, W, batch): one eager run for all precisions
            for precision in plan.precisions or precisions_for(device):
                if precision == "fp16" and device.type != "cuda":
                    continue
                backend = plan.backend if plan.backend != "auto" else default_backend(
                    device, precision, plan.compile_mode)
                engine = MafsEngine(model=network, device=str(device), precision=precision, optimize=True,
                                    compile_mode=plan.compile_mode, backend=backend)
                dtype = torch.float32 if precision == "fp32" else torch.float16
                peak = peaks[dtype] if dtype in peaks else peaks.setdefault(dtype, measured_peak_tflops(device, dtype))
                for height, width in plan.sizes:
                    for batch in plan.batches:
                        pairs = sample_pairs((height, width), batch)
                        common = dict(config=config, device=device.type, precision=precision, batch=batch,
                                      height=height, width=width, device_name=device_name(device),
                                      threads=torch.get_num_threads())
                        if device.type == "cuda":
                            torch.cuda.reset_peak_memory_stats(device)
                        call, stages = engine_call(engine, pairs)
                        key = (height, width, batch)
                        if eager is not None and key not in eager_times:
                            # Side by side, taking turns: the speed-up is claimed from these two lists.
                            times, eager_times[key] = interleaved_runs(
                                [call, eager_call(eager, engine, pairs)], engine.device, plan.runs, warmup=2,
                                max_seconds=2 * plan.max_seconds)
                            eager_median, eager_p95 = summarize(eager_times[key])
                            add(BenchRecord(what="eager_reference", **{**common, "precision": "fp32"},
                                            median_ms=eager_median, p95_ms=eager_p95,
                                            pairs_per_s=batch / eager_median * 1e3, runs=len(eager_times[key])))
                        else:
                            times = timed_runs(call, engine.device, plan.runs, warmup=2, max_seconds=plan.max_seconds)
                        median, p95 = summarize(times)
                        record = BenchRecord(what="engine", median_ms=median, p95_ms=p95,
                                             pairs_per_s=batch / median * 1e3, runs=len(times),
                                             stages_ms=stage_medians(stages, len(times)), backend=engine.backend,
                                             achieved_tflops=2 * macs[height, width] * batch / (median / 1e3) / 1e12,
                                             compute_floor_ms=2 * macs[height, width] * batch / (peak * 1e12) * 1e3,
                                             **common)
                        if device.type == "cuda":
                            record.peak_gpu_mib = torch.cuda.max_memory_allocated(device) / 2**20
                        if eager is not None:
                            record.speedup_vs_eager = summarize(eager_times[key])[0] / median
                        add(record)
                        if plan.node and batch == 1:
                            from .ros.bench_node import bench_node_end_to_end

                            e2e = bench_node_end_to_end(engine, pairs[0], plan.runs, plan.max_seconds)
                            e2e_median, e2e_p95 = summarize(e2e)
                            add(BenchRecord(what="node_end_to_end", median_ms=e2e_median, p95_ms=e2e_p95,
                                            pairs_per_s=1e3 / e2e_median, runs=len(e2e), **common))
                del engine
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    if plan.node:
        from .ros.bench_node import bench_node_overhead

        for height, width in plan.sizes:
            overhead = bench_node_overhead(height, width, max(plan.runs, 100))
            median, p95 = summarize(overhead)
            add(BenchRecord(config="stand-in", device="cpu", precision="-", batch=1, height=height,
                            width=width, what="node_overhead", median_ms=median, p95_ms=p95,
                            pairs_per_s=1e3 / median, runs=len(overhead), device_name=device_name(torch.device("cpu")),
                            threads=torch.get_num_threads()))
    return records


def precision_report(
    devices: Sequence[str], configs: Sequence[str], compile_mode: str = "none", size: tuple[int, int] = (480, 640)
) -> list[dict]:
    """`check_precision` against the plain fp32 engine, on all sample pairs at `size`, of every reduced
    precision available (bf16 on CPU, fp16/bf16 on CUDA) and, with `compile_mode`, of the compiled fp32 engine."""
    pairs = sample_pairs(size, sample_count())
    rows = []
    for device in available_devices(devices):
        reduced = [p for p in precisions_for(device) if p != "fp32"] if device.type == "cuda" else ["bf16"]
        for config in configs:
            network = reference_network(config)
            reference = MafsEngine(model=network, device=str(device), optimize=True)
            candidates = [(precision, "none") for precision in reduced]
            if compile_mode != "none":
                candidates.append(("fp32", compile_mode))
            for precision, mode in candidates:
                candidate = MafsEngine(model=network, device=str(device), precision=precision, optimize=True,
                                       compile_mode=mode)
                rows.append({"config": config, "device": device.type, "precision": precision, "compile": mode,
                             **check_precision(reference, candidate, pairs)})
    return rows


def markdown_table(records: Sequence[BenchRecord]) -> str:
    header = ("| what | config | backend | device | precision | batch | size | median ms | p95 ms | pairs/s "
              "| vs eager | floor ms | runs |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = [
        f"| {r.what} | {r.config} | {r.backend} | {r.device} | {r.precision} | {r.batch} | {r.height}x{r.width} "
        f"| {r.median_ms:.2f} | {r.p95_ms:.2f} | {r.pairs_per_s:.2f} "
        f"| {f'{r.speedup_vs_eager:.2f}x' if r.speedup_vs_eager else ''} "
        f"| {f'{r.compute_floor_ms:.1f}' if r.compute_floor_ms else ''} | {r.runs} |"
        for r in records
    ]
    return "\n".join([header, *rows])


def write_outputs(records: Sequence[BenchRecord], out_dir: Path, extra: dict[str, Any] | None = None) -> None:
    """`bench.json` (a list of records) and `bench.md` (environment line, table, extra sections)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps([asdict(r) for r in records], indent=2))
    lines = [f"# mafs bench\n\ntorch {torch.__version__}, {torch.get_num_threads()} CPU threads ({cpu_isa()}), "
             f"CUDA: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}\n",
             markdown_table(records)]
    for title, content in (extra or {}).items():
        lines.append(f"\n## {title}\n\n```\n{json.dumps(content, indent=2)}\n```")
    (out_dir / "bench.md").write_text("\n".join(lines) + "\n")
