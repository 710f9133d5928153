"""A training run's history on disk: log.json, log.csv (one row per epoch) and curves.png."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


def write_run_logs(history: list[dict[str, Any]], out_dir: Path) -> None:
    """Write the rows of `history` (dicts of epoch values) as log.json, log.csv and curves.png in out_dir."""
    (out_dir / "log.json").write_text(json.dumps(history, indent=1))
    columns = sorted({k for row in history for k in row}, key=lambda k: (k not in ("stage", "epoch"), k))
    with open(out_dir / "log.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
    plot_history(history, out_dir / "curves.png")


def plot_history(history: list[dict[str, Any]], path: Path) -> None:
    """losses, task weights and validation metrics over the epochs of both stages, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = list(range(1, len(history) + 1))

    def is_segmentation(key: str) -> bool:
        return key.startswith(("val_mIoU", "val_IoU_"))

    # Segmentation scores (0..1) apart from the fusion metrics (EN about 7, SD about 40), or they flatten out.
    groups = [
        ("training losses (epoch mean)", lambda k: k.startswith("loss_"), "loss_"),
        ("task weights", lambda k: k.startswith("weight_"), "weight_"),
        ("validation: fusion metrics", lambda k: k.startswith("val_") and not is_segmentation(k), "val_"),
        ("validation: segmentation IoU", is_segmentation, "val_"),
    ]
    fig, axes = plt.subplots(1, len(groups), figsize=(20, 4))
    for ax, (title, wanted, prefix) in zip(axes, groups):
        keys = sorted({k for row in history for k in row if wanted(k)})
        for key in keys:
            points = [(i, row[key]) for i, row in zip(x, history) if key in row]
            if points:
                ax.plot(*zip(*points), marker=".", label=key[len(prefix):])
        ax.set_title(title)
        ax.set_xlabel("epoch (Stage I then Stage II)")
        if keys:
            ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
