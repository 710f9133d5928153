#!/usr/bin/env python3
"""The numbers of the shipped checkpoint (docs/TRAINING.md), from one command. Needs the project's data folder
next to the repository (../shared/data, ../shared/reference/peers).

    .venv/bin/python scripts/evaluate_shipped.py --out eval_shipped \
        [--checkpoint CKPT] [--split-run block=RUN_DIR] [--split-run interleaved=RUN_DIR] \
        [--baseline block=DIR] [--baseline interleaved=DIR]

1. Fusion of CKPT (default: the shipped mafs-lite) on msrs_sample (24 MSRS test pairs) against SeAFusion's
   images, max(ir, Y) and (ir + Y) / 2, and on the 20 RoadScene pairs held out of training.
2. Segmentation per validation protocol (mafs_ros/io/splits.py): a run trained with that protocol (`mafs train
   ... --set data.protocol=P`, its RUN_DIR/model.safetensors) on the frames it held out, with both cameras, with
   RGB blanked and with thermal blanked; next to the FPN baseline trained for the same time on the same frames
   (scripts/train_fpn_baseline.py, its DIR/report.json).

Prints the tables and writes OUT/summary.json, which scripts/ship_checkpoint.py puts in the metadata.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from mafs_ros.engine import MafsEngine
from mafs_ros.evaluate import evaluate, fusion_report, metrics_report
from mafs_ros.imaging import thermal_u8
from mafs_ros.io.images import load_pair
from mafs_ros.io.layouts import discover_pairs, select_stems
from mafs_ros.io.splits import PROTOCOLS, holdout
from mafs_ros.metrics import fusion_metrics, luma_u8
from mafs_ros.reports import format_table, fusion_table, write_json

DATA = Path("../shared/data")
PEERS = Path("../shared/reference/peers")
MFNET = (DATA / "mfnet_sample", DATA / "mfnet_extra")
ROADSCENE_HELD_OUT = ("FLIR_09*", "FLIR_video_04215")
BLANKS = (None, "rgb", "thermal")


def fusion_tables(engine: MafsEngine, out: Path) -> dict:
    """Fusion metrics {dataset: {method: fusion layout}} of the engine, SeAFusion (msrs_sample) and the pixel
    rules."""
    tables = {}
    for name, root, include in (("msrs_sample", DATA / "msrs_sample", ()),
                                ("roadscene_held_out", DATA / "roadscene", ROADSCENE_HELD_OUT)):
        pairs = select_stems(discover_pairs(root, layout="pairs"), include)
        report = evaluate(engine, pairs, out / name, contact_sheet_count=4)
        methods = {"mafs-lite": report["fusion"]}
        if name == "msrs_sample":
            methods["SeAFusion"] = metrics_report(root / "ir", root / "vi", PEERS / "seafusion_msrs_sample")
        for method, rule in (("max(ir, Y)", np.maximum), ("(ir + Y) / 2", None)):
            items = []
            for pair in pairs:
                rgb, thermal, _ = load_pair(pair, len(engine.class_names))
                ir, y = thermal_u8(engine, thermal), luma_u8(rgb)
                # the average rounded half up: rounding half to even would leave every other grey level empty
                fused = rule(ir, y) if rule else ((ir.astype(np.uint16) + y + 1) // 2).astype(np.uint8)
                items.append((pair.stem, fusion_metrics(ir, y, fused)))
            methods[method] = fusion_report(items)
        tables[name] = methods
    return tables


def segmentation_of_run(run_dir: Path, protocol: str, out: Path) -> dict:
    """The held-out frames of `protocol` scored with a run's checkpoint, with both cameras and each blanked."""
    engine = MafsEngine(checkpoint=run_dir / "model.safetensors", device="cpu")
    pairs = [p for root in MFNET for p in discover_pairs(root, layout="pairs")]
    held_out = holdout([p.stem for p in pairs if p.label is not None], protocol).held_out
    pairs = [p for p in pairs if p.stem in held_out]
    results = {}
    for blank in BLANKS:
        name = f"blank_{blank}" if blank else "both"
        report = evaluate(engine, pairs, out / f"segmentation_{protocol}_{name}", contact_sheet_count=6, blank=blank)
        seg = report["segmentation"]
        results[name] = {key: seg[key] for key in ("mIoU", "per_class_iou", "mIoU_by_time", "num_images")}
    config = json.loads((run_dir / "run_config.json").read_text())
    minutes = sum(row.get("seconds", 0.0) for row in json.loads((run_dir / "log.json").read_text())) / 60
    return {"run": str(run_dir), "training_minutes": round(minutes, 1), "run_config": config, **results}


def _pairs_arg(values: list[str], what: str) -> dict[str, Path]:
    parsed = {}
    for value in values:
        protocol, sep, path = value.partition("=")
        if not sep or protocol not in PROTOCOLS:
            raise SystemExit(f"{what} takes PROTOCOL=PATH with PROTOCOL in {PROTOCOLS}, got {value!r}")
        parsed[protocol] = Path(path)
    return parsed


def _print_segmentation(validation: dict) -> None:
    for protocol, entry in validation.items():
        rows = [[name, f"{seg['mIoU']:.3f}", *(f"{v:.3f}" if v is not None else "-" for v in seg["per_class_iou"].values())]
                for name, seg in entry.items() if isinstance(seg, dict) and "mIoU" in seg]
        baseline = entry.get("fpn_baseline")
        if baseline:
            values = baseline["val"]["all"]
            rows.append(["FPN baseline", f"{values['mIoU']:.3f}",
                         *(f"{v:.3f}" if v is not None else "-" for v in values["per_class_iou"].values())])
        classes = next(seg for seg in entry.values() if isinstance(seg, dict) and "per_class_iou" in seg)
        print(f"## Segmentation, {protocol} protocol ({entry['both']['num_images']} held-out frames, "
              f"{entry['training_minutes']} min of training)")
        print(format_table(["model", "mIoU", *classes["per_class_iou"]], rows, markdown=False))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped mafs-lite")
    parser.add_argument("--split-run", action="append", default=[], metavar="PROTOCOL=RUN_DIR")
    parser.add_argument("--baseline", action="append", default=[], metavar="PROTOCOL=DIR")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    runs, baselines = _pairs_arg(args.split_run, "--split-run"), _pairs_arg(args.baseline, "--baseline")

    engine = MafsEngine(checkpoint=args.checkpoint, device="cpu")
    fusion = fusion_tables(engine, args.out)
    for dataset, methods in fusion.items():
        for method, layout in methods.items():
            print(f"## Fusion, {dataset}: {method}")
            print(fusion_table(layout))
    summary = {
        "checkpoint": str(args.checkpoint or "packaged mafs-lite"),
        "fusion": {dataset: {method: {k: v for k, v in layout.items() if k in ("mean", "day", "night")}
                             for method, layout in methods.items()} for dataset, methods in fusion.items()},
    }
    summary["validation"] = {}
    for protocol, run_dir in runs.items():
        entry = segmentation_of_run(run_dir, protocol, args.out)
        if protocol in baselines:
            entry["fpn_baseline"] = json.loads((baselines[protocol] / "report.json").read_text())
        summary["validation"][protocol] = entry
    _print_segmentation(summary["validation"])
    write_json(args.out / "summary.json", summary)
    print(f"summary: {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
