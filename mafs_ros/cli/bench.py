"""`mafs bench`: time the engine (per stage, against plain eager) and the node, on CPU and CUDA."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..constants import BACKEND_NAMES, BENCH_CONFIGS, COMPILE_MODES, PRECISION_NAMES

logger = logging.getLogger(__package__)


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="write OUT/bench.json and OUT/bench.md")
    parser.add_argument("--quick", action="store_true",
                        help="CPU only, both configs, 480x640, batch 1, at most 25 s per record")
    parser.add_argument("--configs", nargs="+", choices=list(BENCH_CONFIGS), default=None, help="(default: all)")
    parser.add_argument("--sizes", nargs="+", default=None, metavar="HxW", help="(default: 480x640 600x800)")
    parser.add_argument("--batches", nargs="+", type=int, default=None, help="(default: 1 8)")
    parser.add_argument("--devices", nargs="+", choices=["cpu", "cuda"], default=None,
                        help="(default: cpu and, where present, cuda)")
    parser.add_argument("--precisions", nargs="+", choices=list(PRECISION_NAMES), default=None,
                        help="(default: fp32 on CPU; fp32, fp16 and bf16 where supported on CUDA; fp16 is CUDA only)")
    parser.add_argument("--compile", default="none", choices=list(COMPILE_MODES),
                        help="time the engine compiled with torch.compile in this mode (default: none)")
    parser.add_argument("--backend", default="auto", choices=list(BACKEND_NAMES),
                        help="the engine's backend (default auto: onnxruntime for fp32 on a CPU, else PyTorch)")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per record (default: 50)")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="stop a record's runs after this long, at least 3 runs (default: 120)")
    parser.add_argument("--no-node", action="store_true", help="skip the node records (no rclpy needed)")
    parser.add_argument("--no-eager", action="store_true", help="skip the eager reference")
    parser.add_argument("--check-precision", action="store_true",
                        help="also compare bf16 (CPU) / fp16, bf16 (CUDA) outputs with fp32 on the sample pairs")


def run_bench(args: argparse.Namespace) -> int:
    import torch

    from ..bench import BenchPlan, cpu_isa, markdown_table, precision_report, run_bench, write_outputs

    plan = BenchPlan.quick() if args.quick else BenchPlan()
    try:
        sizes = tuple(tuple(int(v) for v in text.lower().split("x")) for text in args.sizes) if args.sizes else None
    except ValueError:
        logger.error("--sizes takes HxW values such as 480x640, got %s", args.sizes)
        return 2
    if sizes is not None and any(len(size) != 2 or min(size) < 32 for size in sizes):
        logger.error("--sizes takes HxW values of at least 32x32, got %s", args.sizes)
        return 2
    overrides = {"configs": args.configs, "sizes": sizes, "batches": args.batches, "devices": args.devices,
                 "precisions": args.precisions, "runs": args.runs, "max_seconds": args.max_seconds}
    for name, value in overrides.items():
        if value is not None:
            setattr(plan, name, tuple(value) if isinstance(value, list) else value)
    plan.node, plan.eager, plan.compile_mode, plan.backend = not args.no_node, not args.no_eager, args.compile, \
        args.backend

    def progress(record) -> None:
        extra = f", {record.speedup_vs_eager:.2f}x eager" if record.speedup_vs_eager else ""
        if record.compute_floor_ms:
            extra += f", compute floor {record.compute_floor_ms:.1f} ms"
        backend = f" [{record.backend}]" if record.backend else ""
        print(f"{record.what:16s} {record.config:16s}{backend} {record.device}/{record.precision} b{record.batch} "
              f"{record.height}x{record.width}: median {record.median_ms:.1f} ms, p95 {record.p95_ms:.1f} ms, "
              f"{record.pairs_per_s:.2f} pairs/s ({record.runs} runs{extra})", flush=True)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU {cpu_isa()}, "
          f"CUDA {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'not available'}", flush=True)
    records = run_bench(plan, progress)
    extra = {}
    if args.check_precision:
        extra["precision check (reduced vs fp32, sample pairs 480x640)"] = rows = precision_report(
            plan.devices, plan.configs, plan.compile_mode)
        for row in rows:
            print(f"check {row['config']} {row['device']}/{row['precision']} compile {row['compile']}: min PSNR "
                  f"{row['min_psnr_db']:.1f} dB, label agreement {row['label_agreement'] * 100:.2f} % "
                  f"({'ok' if row['ok'] else 'BELOW the bounds'})")
    print(markdown_table(records))
    if args.out:
        write_outputs(records, Path(args.out), extra)
        print(f"wrote {args.out}/bench.json and bench.md")
    return 0
