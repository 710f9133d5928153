"""Plots of per-pair numbers as PNGs (matplotlib's object API: no pyplot, no GUI backend, no global state)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def write_metric_curves(path: Path, x: Sequence[float], values: Sequence[Mapping[str, float]],
                        names: Sequence[str], *, xlabel: str, title: str) -> None:
    """One panel per metric name (3 columns): values[i][name] over x[i]."""
    from matplotlib.figure import Figure

    rows = -(-len(names) // 3)
    fig = Figure(figsize=(12, 8 * rows / 3), layout="constrained")
    for ax, name in zip(fig.subplots(rows, 3).flat, names):
        ax.plot(x, [entry[name] for entry in values], marker=".", linewidth=1)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
    fig.suptitle(title)
    fig.savefig(path, dpi=90)


def write_histograms(path: Path, panels: Sequence[tuple[str, Sequence[float]]], *, xlabel: str, ylabel: str,
                     markers: Sequence[float] = ()) -> None:
    """One histogram per (title, values) panel side by side; `markers`: x positions drawn as red dashed lines."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6 * len(panels), 4), layout="constrained")
    for ax, (title, values) in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels):
        ax.hist(values, bins=min(50, max(5, len(values) // 2)))
        for x in markers:
            ax.axvline(x, color="red", linestyle="--")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    fig.savefig(path, dpi=90)
