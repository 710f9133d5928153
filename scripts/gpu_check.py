#!/usr/bin/env python3
"""The CUDA path proven in one run (scripts/gpu_check.sh calls this): writes OUT/gpu_report.md and
OUT/gpu_check.json (plus the benchmark's bench.json / bench.md and the tests' JUnit XML).

    python scripts/gpu_check.py OUT [--minutes 7]

With a CUDA GPU:
  1. the tests marked `cuda` (test/test_cuda.py; the node's in test/test_lifecycle.py where rclpy is installed);
  2. `mafs bench` records of mafs and mafs-lite at 480x640, batch 1 and 8, fp32 / fp16 / bf16: median and p95,
     peak memory, TFLOP/s and the compute floor; then the same with CUDA graphs (torch.compile
     "reduce-overhead"), fp16 first, for as long as the time budget allows (the report names what it skipped);
  3. the engine over the bundled sample pairs on CUDA against the CPU: lowest fused PSNR and label agreement.
Without one it says so and runs the same steps on the CPU at a small size (a dry run CI executes), exit 0.
The exit code is 1 only when a step fails (a test, an exception), never for missing hardware.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from mafs_ros.bench import BenchPlan, check_precision, cpu_isa, markdown_table, run_bench, write_outputs
from mafs_ros.engine import MafsEngine
from mafs_ros.io.samples import sample_count, sample_pairs

REPO = Path(__file__).resolve().parent.parent


def environment(cuda: bool) -> dict[str, Any]:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda_available": cuda,
            "cpu": cpu_isa(), "threads": torch.get_num_threads()}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                 "cuda_runtime": torch.version.cuda, "bf16": torch.cuda.is_bf16_supported()}
    return info


def run_tests(out: Path) -> dict[str, Any]:
    """The `cuda` tests in a subprocess; test_lifecycle.py only where rclpy can be imported (it needs ROS)."""
    files = ["test/test_cuda.py"] + (["test/test_lifecycle.py"] if importlib.util.find_spec("rclpy") else [])
    command = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "-rs",
               f"--junitxml={out / 'cuda_tests.xml'}", *files]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    return {"command": " ".join(command[1:]), "files": files, "exit_code": done.returncode,
            "summary": lines[-1] if lines else done.stderr[-2000:], "output_tail": "\n".join(lines[-40:])}


def run_benchmarks(cuda: bool, out: Path, deadline: float) -> dict[str, Any]:
    """Eager-engine records for every precision, then CUDA-graph records while time is left."""
    if cuda:
        base = dict(configs=("mafs", "mafs-lite"), sizes=((480, 640),), batches=(1, 8), devices=("cuda",),
                    runs=30, max_seconds=10.0, node=False)
        graph_order = [(config, precision) for precision in ("fp16", "fp32", "bf16")
                       for config in ("mafs-lite", "mafs")]
    else:
        base = dict(configs=("mafs-lite",), sizes=((96, 128),), batches=(1,), devices=("cpu",), runs=3,
                    max_seconds=5.0, node=False)
        graph_order = []  # CUDA graphs need CUDA; the dry run times the eager path only
    records = run_bench(BenchPlan(**base))
    skipped = []
    for config, precision in graph_order:
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            continue
        if time.monotonic() > deadline:
            skipped.append(f"{config} {precision}")
            continue
        plan = BenchPlan(**{**base, "configs": (config,)}, precisions=(precision,), compile_mode="reduce-overhead",
                         eager=False)
        records += [dataclasses.replace(r, what=f"{r.what}+cuda_graphs") for r in run_bench(plan)]
    write_outputs(records, out)
    return {"records": [dataclasses.asdict(r) for r in records], "cuda_graphs_skipped_for_time": skipped}


def end_to_end(cuda: bool) -> dict[str, Any]:
    """The sample pairs through the engine on CUDA (fp32, PyTorch) against the CPU's PyTorch engine; in the dry
    run the CPU's default engine (onnxruntime) against the same."""
    pairs = sample_pairs((480, 640), sample_count())
    reference = MafsEngine(None, device="cpu", backend="torch")
    candidate = MafsEngine(None, device="cuda") if cuda else MafsEngine(None, device="cpu")
    row = check_precision(reference, candidate, pairs)
    return {"pairs": len(pairs), "size": list(pairs[0][1].shape), "candidate": f"{candidate.device} "
            f"{candidate.backend}", "reference": "cpu torch", **row}


def report_markdown(result: dict[str, Any]) -> str:
    env, cuda = result["environment"], result["environment"]["cuda_available"]
    title = f"GPU check on {env['gpu']}" if cuda else "GPU check: no CUDA device, dry run on the CPU"
    lines = [f"# {title}", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in env.items()]
    lines += ["", f"Steps: {', '.join(f'{k} {v:.0f} s' for k, v in result['seconds'].items())}.", ""]
    tests = result.get("tests", {})
    if tests:
        lines += ["## Tests marked cuda", "", f"`{tests['command']}`: {tests['summary']}", ""]
    bench = result.get("bench", {})
    if bench:
        from mafs_ros.bench import BenchRecord

        records = [BenchRecord(**r) for r in bench["records"]]
        lines += ["## mafs bench", "", markdown_table(records), ""]
        rows = [r for r in records if r.achieved_tflops]
        if rows:
            lines += ["| record | config | precision | batch | peak GPU MiB | TFLOP/s | floor ms |", "|---|---|---|---|---|---|---|"]
            lines += [f"| {r.what} | {r.config} | {r.precision} | {r.batch} | "
                      f"{f'{r.peak_gpu_mib:.0f}' if r.peak_gpu_mib else ''} | {r.achieved_tflops:.2f} | "
                      f"{r.compute_floor_ms:.2f} |" for r in rows]
            lines.append("")
        if bench["cuda_graphs_skipped_for_time"]:
            lines += [f"CUDA graphs not timed (time budget): {', '.join(bench['cuda_graphs_skipped_for_time'])}.", ""]
    e2e = result.get("end_to_end")
    if e2e:
        lines += ["## End to end", "", f"{e2e['pairs']} sample pairs at {e2e['size'][0]}x{e2e['size'][1]}, "
                  f"{e2e['candidate']} against {e2e['reference']}: lowest fused PSNR {e2e['min_psnr_db']:.1f} dB, "
                  f"labels agree on {e2e['label_agreement'] * 100:.3f} % ({'ok' if e2e['ok'] else 'NOT ok'})", ""]
    for name, error in result.get("errors", {}).items():
        lines += [f"## {name} FAILED", "", "```", error, "```", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--minutes", type=float, default=7.0, help="time budget; CUDA-graph records stop at it")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    cuda = torch.cuda.is_available()
    print("CUDA device found: " + torch.cuda.get_device_name(0) if cuda else
          "no CUDA device: dry run on the CPU (the same steps at a small size, CUDA tests skipped)", flush=True)
    result: dict[str, Any] = {"environment": environment(cuda), "seconds": {}, "errors": {}}
    steps = (("tests", lambda: run_tests(args.out)),
             ("bench", lambda: run_benchmarks(cuda, args.out, start + 60 * args.minutes - 120)),
             ("end_to_end", lambda: end_to_end(cuda)))
    for name, step in steps:
        began = time.monotonic()
        try:
            result[name] = step()
        except Exception:  # a failed step is reported and the others still run: one lease, every answer
            result["errors"][name] = traceback.format_exc()
        result["seconds"][name] = time.monotonic() - began
        print(f"{name}: done in {result['seconds'][name]:.0f} s", flush=True)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str))
    (args.out / "gpu_report.md").write_text(report_markdown(result))
    print(report_markdown(result))
    failed = result["errors"] or result.get("tests", {}).get("exit_code", 0) not in (0, 5) or not result.get(
        "end_to_end", {}).get("ok", False)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
