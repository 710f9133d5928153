#!/usr/bin/env python3
"""Per-class logit offsets (logit adjustment) fitted on a split run's training frames, scored on its held-out
frames: does a class the model learns but never ranks first (curbs) come out with an offset? A diagnostic for
docs/TRAINING.md, not part of the engine. Needs the project's data folder (../shared/data).

    .venv/bin/python scripts/fit_logit_offsets.py runs/ef_interleaved/model.safetensors interleaved

The offsets (0 to 3 in steps of 0.25, two greedy passes over the classes) maximise mIoU on every second
training frame; both sides are scored on every second pixel of each axis.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from mafs_ros.checkpoint import build_model_from_checkpoint, load_checkpoint
from mafs_ros.io.images import load_pair
from mafs_ros.io.layouts import PairFiles, discover_pairs
from mafs_ros.io.splits import holdout
from mafs_ros.metrics import ConfusionMatrix

MFNET = (Path("../shared/data/mfnet_sample"), Path("../shared/data/mfnet_extra"))
OFFSETS = np.arange(0.0, 3.01, 0.25)


def log_probs(net: torch.nn.Module, pairs: list[PairFiles], classes: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for pair in pairs:
        rgb, thermal, label = load_pair(pair, classes)
        vi = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
        ir = torch.from_numpy(thermal)[None, None].float() / 255
        with torch.inference_mode():
            logits = net(vi, ir).semantic[0]
        out.append((torch.log_softmax(logits, 0)[:, ::2, ::2].numpy(), label[::2, ::2]))
    return out


def score(data: list[tuple[np.ndarray, np.ndarray]], offsets: np.ndarray) -> ConfusionMatrix:
    matrix = ConfusionMatrix(len(offsets))
    for logp, label in data:
        matrix.update((logp + offsets[:, None, None]).argmax(0).astype(np.uint8), label)
    return matrix


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="model.safetensors of a run trained with data.protocol")
    parser.add_argument("protocol", choices=("block", "interleaved"))
    args = parser.parse_args()
    net = build_model_from_checkpoint(load_checkpoint(args.checkpoint)).eval()
    classes = net.config.num_classes
    pairs = [p for root in MFNET for p in discover_pairs(root, layout="pairs") if p.label is not None]
    split = holdout([p.stem for p in pairs], args.protocol)
    train = log_probs(net, [p for p in pairs if split.trains(p.stem)][::2], classes)
    held_out = log_probs(net, [p for p in pairs if p.stem in split.held_out], classes)
    offsets = np.zeros(classes, dtype=np.float32)
    for _ in range(2):
        for c in range(1, classes):
            trial = offsets.copy()

            def train_miou(value: float) -> float:
                trial[c] = value
                return score(train, trial).miou()

            offsets[c] = max(OFFSETS, key=train_miou)
    print("offsets:", " ".join(f"{v:.2f}" for v in offsets))
    for name, values in (("without", np.zeros_like(offsets)), ("with", offsets)):
        matrix = score(held_out, values)
        print(f"{name} offsets: held-out mIoU {matrix.miou():.3f}, per class",
              " ".join(f"{v:.3f}" for v in matrix.per_class_iou()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
