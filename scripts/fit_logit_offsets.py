#!/usr/bin/env python3
"""Per-class logit offsets fitted on a split run's training frames and scored on its held-out frames, for a
checkpoint trained without them (`class_offsets: false`): what `mafs train` does at the end of a run with
`class_offsets: true` (mafs_ros/train/class_offsets.py), measured from outside. A diagnostic for
docs/TRAINING.md. Needs the project's data folder (../shared/data).

    .venv/bin/python scripts/fit_logit_offsets.py runs/ef_interleaved/model.safetensors interleaved
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mafs_ros.checkpoint import build_model_from_checkpoint, load_checkpoint
from mafs_ros.io.layouts import discover_pairs
from mafs_ros.io.splits import holdout
from mafs_ros.train.class_offsets import class_log_probs, fit_class_offsets, confusion_with

MFNET = (Path("../shared/data/mfnet_sample"), Path("../shared/data/mfnet_extra"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="model.safetensors of a run trained with data.protocol")
    parser.add_argument("protocol", choices=("block", "interleaved"))
    args = parser.parse_args()
    ckpt = load_checkpoint(args.checkpoint)
    net = build_model_from_checkpoint(ckpt).eval()
    classes = net.config.num_classes
    pairs = [p for root in MFNET for p in discover_pairs(root, layout="pairs") if p.label is not None]
    split = holdout([p.stem for p in pairs], args.protocol)
    train = class_log_probs(net, [p for p in pairs if split.trains(p.stem)][::2], ckpt.thermal_normalization, classes)
    held_out = class_log_probs(net, [p for p in pairs if p.stem in split.held_out], ckpt.thermal_normalization, classes)
    offsets = fit_class_offsets(*train)
    print("offsets:", " ".join(f"{v:.2f}" for v in offsets))
    for name, values in (("without", np.zeros_like(offsets)), ("with", offsets)):
        matrix = confusion_with(*held_out, values)
        print(f"{name} offsets: held-out mIoU {matrix.miou():.3f}, per class",
              " ".join(f"{v:.3f}" for v in matrix.per_class_iou()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
