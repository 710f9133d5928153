"""Metric tables: aligned plain text for the terminal, Markdown for report.md."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..metrics import FUSION_METRIC_NAMES, ConfusionMatrix, day_night

# The rows of a fusion table, in order; "day" and "night" only where some stems are MSRS/MFNet day/night stems.
FUSION_GROUPS = ("mean", "day", "night")


def format_table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    """A Markdown table, or the same cells as plain-text columns (first left-aligned, numbers right-aligned)."""
    if markdown:
        lines = [header, ["---"] * len(header), *rows]
        return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join([cells[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(cells[1:], widths[1:])])
        for cells in [header, *rows]
    )


def format_metrics(values: Mapping[str, float | None]) -> list[str]:
    """Metric values in FUSION_METRIC_NAMES order, 4 decimals; "n/a" for undefined ones."""
    return [_number(values[name], "{:.4f}") for name in FUSION_METRIC_NAMES]


def fusion_table(fusion: Mapping[str, Any], *, markdown: bool = False) -> str:
    """The mean / day / night rows of a fusion layout ({"per_image", "mean", ["day"], ["night"]}) as a table."""
    tags = [day_night(stem) for stem in fusion["per_image"]]
    counts = {"mean": len(tags), "day": tags.count("day"), "night": tags.count("night")}
    rows = [[group, str(counts[group]), *format_metrics(fusion[group])] for group in FUSION_GROUPS if group in fusion]
    return format_table(["set", "images", *FUSION_METRIC_NAMES], rows, markdown)


def segmentation_summary(matrix: ConfusionMatrix, class_names: Sequence[str], num_images: int) -> dict[str, Any]:
    """A report's "segmentation" entry (the protocol of `ConfusionMatrix`: one matrix over the whole set)."""
    summary = matrix.to_dict()
    return {
        "mIoU": summary["miou"],
        "pixel_accuracy": summary["pixel_accuracy"],
        "per_class_iou": dict(zip(class_names, summary["per_class_iou"])),
        "num_images": num_images,
        "ignore_index": summary["ignore_index"],
        "confusion_matrix": summary["confusion_matrix"],
    }


def segmentation_markdown(seg: Mapping[str, Any]) -> list[str]:
    """The lines of a report's "## Segmentation" section (mIoU, pixel accuracy, per-class IoU table)."""
    return [
        "## Segmentation",
        "",
        f"Confusion matrix over {seg['num_images']} labelled image(s); mIoU over all classes including class 0, "
        f"classes absent from both ground truth and prediction dropped; label {seg['ignore_index']} ignored.",
        "",
        f"- mIoU: {_number(_percent(seg['mIoU']), '{:.2f}')} %",
        f"- Pixel accuracy: {_number(_percent(seg['pixel_accuracy']), '{:.2f}')} %",
        "",
        format_table(
            ["class", "IoU (%)"],
            [[name, _number(_percent(iou), "{:.2f}")] for name, iou in seg["per_class_iou"].items()],
            markdown=True,
        ),
    ]


def _number(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def _percent(value: float | None) -> float | None:
    return None if value is None else 100.0 * value
