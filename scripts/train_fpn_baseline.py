#!/usr/bin/env python3
"""The segmentation baseline mafs-lite is compared with: ImageNet EfficientNet-Lite0 + a small FPN head.

One 4-channel trunk (RGB + thermal; the thermal stem filter starts as the mean of the RGB ones) at half the
input size, trained with plain cross-entropy on the labelled pairs of a training recipe for a fixed wall-clock
time, then scored on the recipe's labelled validation pairs with one confusion matrix (mIoU over the 9 classes
including 0, per class, day and night). Same data, split, thermal augmentation and size as mafs-lite.

    .venv/bin/python scripts/train_fpn_baseline.py config/train/mafs_lite.yaml --minutes 60 --out runs/fpn_baseline
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from mafs_ros.class_sets import IGNORE_LABEL, get_class_set
from mafs_ros.metrics import ConfusionMatrix, day_night
from mafs_ros.model.efficientnet_lite import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EfficientNetLite0,
    imagenet_normalize,
    load_imagenet_weights,
)
from mafs_ros.io.images import load_pair
from mafs_ros.model.fpn import FpnDecoder
from mafs_ros.train.config import load_train_config, parse_overrides
from mafs_ros.train.data import FusionSegDataset, split_pairs
from mafs_ros.train.trainer import init_worker

GREY_MEAN, GREY_STD = sum(IMAGENET_MEAN) / 3, sum(IMAGENET_STD) / 3


class FpnBaseline(nn.Module):
    """EfficientNet-Lite0 on RGB + thermal stacked (ImageNet weights; model/efficientnet_lite.py), the FPN of
    model/fpn.py without its stride-2 refinement, 1x1 classifier.

    forward(vi (B,3,H,W), ir (B,1,H,W) in [0,1]) -> logits (B, classes, H, W); the trunk sees H/2 x W/2.
    """

    def __init__(self, num_classes: int, width: int = 64) -> None:
        super().__init__()
        self.trunk = EfficientNetLite0(in_channels=4)
        load_imagenet_weights(self.trunk)
        self.fpn = FpnDecoder(self.trunk.out_channels, width)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, vi: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        size = vi.shape[-2:]
        x = torch.cat([imagenet_normalize(vi, IMAGENET_MEAN, IMAGENET_STD), (ir - GREY_MEAN) / GREY_STD], dim=1)
        pyramid, _ = self.fpn(self.trunk(F.avg_pool2d(x, 2)))
        return F.interpolate(self.classifier(pyramid), size=size, mode="bilinear", align_corners=False)


def evaluate(model: nn.Module, pairs: list, class_set, thermal_normalization) -> dict:
    model.eval()
    groups = {"all": ConfusionMatrix(len(class_set.class_names)), "day": None, "night": None}
    groups["day"] = ConfusionMatrix(len(class_set.class_names))
    groups["night"] = ConfusionMatrix(len(class_set.class_names))
    with torch.inference_mode():
        for pair in pairs:
            rgb, thermal, label = load_pair(pair, len(class_set.class_names))
            vi = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
            ir = thermal_normalization.apply(thermal)[None, None]
            pred = model(vi, ir).argmax(1)[0].numpy().astype(np.uint8)
            groups["all"].update(pred, label)
            tag = day_night(pair.stem)
            if tag in groups:
                groups[tag].update(pred, label)
    names = class_set.class_names
    return {
        group: {
            "mIoU": cm.miou(),
            "per_class_iou": dict(zip(names, [None if np.isnan(v) else float(v) for v in cm.per_class_iou()])),
        }
        for group, cm in groups.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="training recipe whose labelled train/val pairs are used")
    parser.add_argument("--minutes", type=float, required=True, help="wall-clock training time")
    parser.add_argument("--out", type=Path, required=True, help="folder for report.json")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value as `mafs train` does, e.g. --set data.protocol=interleaved")
    args = parser.parse_args()

    cfg = load_train_config(args.config, parse_overrides(args.overrides))
    torch.manual_seed(cfg.seed)
    class_set = get_class_set(cfg.data.class_set)
    train_pairs, val_pairs = split_pairs(cfg.data)
    train_pairs = [p for p in train_pairs if p.label is not None]
    val_pairs = [p for p in val_pairs if p.label is not None]
    dataset = FusionSegDataset(
        train_pairs, crop_size=cfg.data.crop_size, augment=cfg.data.augment, thermal_augment=cfg.data.thermal_augment,
        class_set=class_set, seed=cfg.seed, thermal_normalization=cfg.data.thermal_normalization,
    )
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=1,
                        worker_init_fn=init_worker, persistent_workers=True)
    model = FpnBaseline(len(class_set.class_names))
    encoder = list(model.trunk.parameters())
    head = [p for n, p in model.named_parameters() if not n.startswith("trunk.")]
    lr, encoder_scale = cfg.optim.lr, cfg.optim.encoder_lr_scale
    optimizer = torch.optim.AdamW(
        [{"params": head, "scale": 1.0}, {"params": encoder, "scale": encoder_scale}], lr=lr,
        weight_decay=cfg.optim.weight_decay,
    )
    budget = args.minutes * 60
    started = time.perf_counter()
    steps, epoch = 0, 0
    while time.perf_counter() - started < budget:
        dataset.set_epoch(epoch)
        model.train()
        for batch in loader:
            elapsed = time.perf_counter() - started
            if elapsed >= budget:
                break
            for group in optimizer.param_groups:  # linear decay over the time budget
                group["lr"] = lr * group["scale"] * (1 - elapsed / budget)
            logits = model(batch["vi"], batch["ir"])
            loss = F.cross_entropy(logits, batch["label"], ignore_index=IGNORE_LABEL)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            if steps % 20 == 0:
                print(f"step {steps} epoch {epoch} {elapsed / 60:.1f} min loss {loss.item():.3f}", flush=True)
        epoch += 1
    report = {
        "model": "EfficientNet-Lite0 (RGB+thermal stem, ImageNet) + FPN",
        "minutes": args.minutes,
        "steps": steps,
        "batch_size": args.batch_size,
        "train_pairs": len(train_pairs),
        "val_pairs": len(val_pairs),
        "val": evaluate(model, val_pairs, class_set, dataset.thermal_normalization),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report["val"]["all"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
