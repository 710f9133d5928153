"""Contact sheets: one row of image panels per sample pair, as one PNG."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class SheetRow:
    """The panels of one contact-sheet row."""

    stem: str
    ir: np.ndarray
    vi: np.ndarray
    fused: np.ndarray
    prediction: np.ndarray
    ground_truth: np.ndarray | None


def write_contact_sheet(path: Path, rows: Sequence[SheetRow], title: str) -> None:
    """One row per image: infrared | visible | fused | prediction overlay, plus a ground-truth overlay column
    when any row has a label."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

    columns = ["infrared", "visible", "fused", "prediction"]
    with_gt = any(row.ground_truth is not None for row in rows)
    if with_gt:
        columns.append("ground truth")
    height, width = rows[0].vi.shape[:2]
    panel_w = 3.0
    panel_h = panel_w * height / width
    fig = Figure(figsize=(panel_w * len(columns), panel_h * len(rows) + 0.6), layout="constrained")
    axes = fig.subplots(len(rows), len(columns), squeeze=False)
    for r, row in enumerate(rows):
        panels = [row.ir, row.vi, row.fused, row.prediction] + ([row.ground_truth] if with_gt else [])
        for c, (ax, image) in enumerate(zip(axes[r], panels)):
            ax.set_xticks([])
            ax.set_yticks([])
            if image is None:
                ax.text(0.5, 0.5, "no label", ha="center", va="center", transform=ax.transAxes)
            elif image.ndim == 2:
                ax.imshow(image, cmap="gray", vmin=0, vmax=255)
            else:
                ax.imshow(image)
            if r == 0:
                ax.set_title(columns[c])
        axes[r][0].set_ylabel(row.stem)
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
