"""Evaluation: a MAFS engine on a set of image pairs (`mafs eval`), and fusion metrics of fused images made by
any method (`mafs metrics`). ROS-agnostic; every number comes from `mafs_ros.metrics`.

Fusion metrics take three 8-bit grey images (see `metrics`):

- A, the infrared image. `evaluate` uses the thermal image as the network sees it: the engine's thermal
  normalisation x 255, rounded (`thermal_u8`). For 8-bit thermal under the default "fixed" normalisation this
  is the file itself; 16-bit or float thermal is reduced to 8 bits by that same normalisation (e.g. "fixed"
  maps 0..65535 to 0..255, "percentile" stretches each frame). `metrics_report` takes 8-bit infrared files only.
- B, the visible luma: `metrics.luma_u8` of the RGB visible image.
- F, the fused image: the engine's fused luminance (`FusionResult.fused_y`) in `evaluate`; in
  `metrics_report`, the fused file itself if it is grey, else `luma_u8` of its RGB.

Report layouts
--------------
Fusion layout (`fusion_report`, the whole file written by `mafs metrics`)::

    {"per_image": {stem: {metric: value}},   # metrics in FUSION_METRIC_NAMES order
     "mean": {metric: value},                # arithmetic mean over all images
     "day": {...}, "night": {...}}           # only when some stems are MSRS/MFNet day/night stems

`metrics_report` adds ``"skipped": {stem: reason}`` (stems without a complete, same-size ir/vi/fused triple).

`evaluate` writes report.json::

    {"checkpoint": {"path": str | null, "trained": bool | null, "config": "mafs-lite"},
     "engine": {"device": "cpu", "precision": "fp32", "thermal_normalization": "fixed", "size_policy": "resize"},
     "images": int,                          # pairs evaluated
     "fusion": <fusion layout>,
     "blank": null | "rgb" | "thermal",      # the camera fed black images (evaluate's `blank`)
     "segmentation": {                       # only when at least one evaluated pair has a label
         "mIoU": float | null, "pixel_accuracy": float | null,
         "per_class_iou": {class_name: float | null},   # fractions in [0, 1]; null: class in neither GT nor prediction
         "num_images": int,                  # labelled pairs in the confusion matrix
         "ignore_index": 255, "confusion_matrix": [[int]],    # rows = ground truth, columns = prediction
         "mIoU_by_time": {"day": float | null, "night": float | null}},   # MSRS/MFNet stems only
     "skipped": {stem: reason}}

Segmentation follows the MAFS test protocol: one confusion matrix over the whole set, mIoU over all classes including
class 0, classes with undefined IoU dropped, label 255 ignored. Values that are undefined (NaN) are written as
null, because strict JSON has no NaN.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from .class_sets import IGNORE_LABEL
from .errors import DataError, MafsError
from .imaging import overlay, thermal_u8
from .io.files import images_by_stem
from .io.images import read_fused_luma, read_label, read_rgbt, read_thermal, read_visible
from .io.layouts import PairFiles
from .metrics import FUSION_METRIC_NAMES, ConfusionMatrix, day_night, fusion_metrics, luma_u8, mean_metrics
from .reports import (
    SheetRow,
    format_metrics,
    format_table,
    fusion_table,
    json_ready,
    segmentation_markdown,
    segmentation_summary,
    write_contact_sheet,
    write_json,
)

if TYPE_CHECKING:
    from .engine import MafsEngine

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------
# Fusion report layout


def fusion_report(items: Iterable[tuple[str, Mapping[str, float]]]) -> dict[str, dict[str, Any]]:
    """The fusion layout {"per_image", "mean", ["day"], ["night"]} from (stem, {metric: value}) items.

    Raises ValueError for no items or a repeated stem.
    """
    per_image: dict[str, dict[str, float]] = {}
    for stem, values in items:
        if stem in per_image:
            raise DataError(f"stem {stem!r} occurs twice")
        per_image[stem] = dict(values)
    return {"per_image": per_image, **mean_metrics(per_image)}


# ---------------------------------------------------------------------------------------------------------
# mafs eval


def evaluate(
    engine: "MafsEngine",
    pairs: Sequence[PairFiles],
    out_dir: str | Path,
    *,
    contact_sheet_count: int = 4,
    save_fused: bool = False,
    blank: str | None = None,
) -> dict[str, Any]:
    """Run `engine` on every pair (batch 1, full resolution), compute the fusion metrics of each and the
    segmentation metrics over the labelled ones, and write into `out_dir`:

    - report.json: the report (schema in the module docstring), also returned;
    - report.md: the same as readable tables;
    - contact_sheet.png: infrared | visible | fused | prediction (| ground truth) rows for the first
      `contact_sheet_count` evaluated pairs (none if 0);
    - fused/<stem>.png if `save_fused`: the fused luminance F the metrics were computed on (8-bit grey), so
      `mafs metrics` on that folder reproduces the report's fusion numbers.

    `pairs` come from `io.layouts.discover_pairs` (separate ir/vi files or one MFNet RGBT file, label or
    None). A pair that cannot be read or evaluated (bad file, size mismatch, label ids outside the classes) is
    logged, listed under "skipped" and left out. Raises ValueError for repeated stems or when no pair could be
    evaluated, OSError when an output cannot be written.

    With `blank` ("rgb" or "thermal") that camera's image is all zeros, as from a camera that is down or an RGB
    camera at night: the metrics then say what the model makes of the other camera alone.
    """
    stems = [pair.stem for pair in pairs]
    repeated = sorted({stem for stem in stems if stems.count(stem) > 1})
    if repeated:
        raise DataError(f"repeated stems: {', '.join(repeated)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fused_dir = out_dir / "fused" if save_fused else None
    if fused_dir is not None:
        fused_dir.mkdir(exist_ok=True)
    if blank not in (None, "rgb", "thermal"):
        raise DataError(f"blank must be 'rgb', 'thermal' or None, got {blank!r}")
    tally = _score_pairs(engine, pairs, fused_dir, contact_sheet_count, blank)
    if not tally.per_image:
        raise DataError(f"none of the {len(pairs)} pair(s) could be evaluated")

    report: dict[str, Any] = {
        **engine.describe(),
        "images": len(tally.per_image),
        "fusion": fusion_report(tally.per_image.items()),
        "blank": blank,
    }
    if tally.labelled:
        report["segmentation"] = segmentation_summary(tally.matrix, engine.class_names, tally.labelled)
        report["segmentation"]["mIoU_by_time"] = {k: m.to_dict()["miou"] for k, m in sorted(tally.by_time.items())}
    report["skipped"] = tally.skipped
    report = json_ready(report)

    write_json(out_dir / "report.json", report)
    (out_dir / "report.md").write_text(_markdown_report(report), encoding="utf-8")
    if tally.sheet:
        write_contact_sheet(out_dir / "contact_sheet.png", tally.sheet, _sheet_title(report))
    logger.info("evaluated %d pair(s); report in %s", len(tally.per_image), out_dir)
    return report


@dataclass
class _Tally:
    """What `_score_pairs` gathered over the pairs."""

    matrix: ConfusionMatrix
    by_time: dict[str, ConfusionMatrix] = field(default_factory=dict)  # day and night apart
    per_image: dict[str, dict[str, float]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    labelled: int = 0
    sheet: list[SheetRow] = field(default_factory=list)


def _score_pairs(engine: "MafsEngine", pairs: Sequence[PairFiles], fused_dir: Path | None,
                 contact_sheet_count: int, blank: str | None = None) -> _Tally:
    """Run the engine on each pair: its fusion metrics, its label in the confusion matrix, its fused luminance
    in `fused_dir` (if given), and the first `contact_sheet_count` as contact-sheet rows. A pair that fails is
    logged and listed under `skipped`."""
    from tqdm import tqdm

    tally = _Tally(ConfusionMatrix(len(engine.class_names), ignore_index=IGNORE_LABEL))
    for pair in tqdm(pairs, desc="eval", unit="pair", disable=None):
        try:
            rgb, thermal, gt = _read_pair(pair, len(engine.class_names))
            if blank == "rgb":
                rgb = np.zeros_like(rgb)
            elif blank == "thermal":
                thermal = np.zeros_like(thermal)
            result = engine.infer(rgb, thermal, want_confidence=False)
            if gt is not None:
                # Before the metrics are stored, so that a bad label skips the whole pair.
                tally.matrix.update(result.labels, gt)
                time_of_day = day_night(pair.stem)
                if time_of_day:
                    tally.by_time.setdefault(time_of_day, ConfusionMatrix(len(engine.class_names), IGNORE_LABEL))
                    tally.by_time[time_of_day].update(result.labels, gt)
            ir = thermal_u8(engine, thermal)
            tally.per_image[pair.stem] = fusion_metrics(ir, luma_u8(rgb), result.fused_y)
        except MafsError as exc:
            logger.error("pair %r (%s): %s", pair.stem, ", ".join(map(str, pair.image_files)), exc)
            tally.skipped[pair.stem] = str(exc)
            continue
        if gt is not None:
            tally.labelled += 1
        if fused_dir is not None:
            _write_image(fused_dir / f"{pair.stem}.png", result.fused_y)
        if len(tally.sheet) < contact_sheet_count:
            tally.sheet.append(
                SheetRow(
                    stem=pair.stem,
                    ir=ir,
                    vi=rgb,
                    fused=result.fused_rgb,
                    prediction=overlay(result.fused_rgb, result.labels, engine.palette),
                    ground_truth=overlay(rgb, gt, engine.palette) if gt is not None else None,
                )
            )
    return tally


def _read_pair(pair: PairFiles, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(visible RGB, thermal, uint8 label or None) of a pair; raises ValueError for unreadable files, label ids
    outside 0..num_classes-1 (255 allowed) or a label of another size."""
    if pair.rgbt is not None:
        rgb, thermal = read_rgbt(pair.rgbt)
    else:
        rgb, thermal = read_visible(pair.vi), read_thermal(pair.ir)
    if pair.label is None:
        return rgb, thermal, None
    gt = read_label(pair.label, num_classes).astype(np.uint8)  # ids < num_classes or 255: uint8 is exact
    if gt.shape != rgb.shape[:2]:
        raise DataError(f"label {gt.shape[0]}x{gt.shape[1]} and visible {rgb.shape[0]}x{rgb.shape[1]} differ in size")
    return rgb, thermal, gt


# ---------------------------------------------------------------------------------------------------------
# mafs metrics


def metrics_report(ir_dir: str | Path, vi_dir: str | Path, fused_dir: str | Path) -> dict[str, Any]:
    """Fusion metrics of the fused images in `fused_dir`, made by any method, against their sources.

    The three folders are paired by file stem. Infrared files must be 8-bit (the metrics' grey scale); visible
    files become `luma_u8` of their RGB; fused files are used as they are if grey, else as `luma_u8` of their
    RGB. A stem that is not in all three folders (or is ambiguous in one), or whose three images are
    unreadable or differ in size, is logged, listed under "skipped" with the reason and left out.

    Returns the fusion layout plus "skipped". Raises ValueError if a folder does not exist or no stem could
    be evaluated.
    """
    from tqdm import tqdm

    folders = {"ir": Path(ir_dir), "vi": Path(vi_dir), "fused": Path(fused_dir)}
    for name, folder in folders.items():
        if not folder.is_dir():
            raise DataError(f"{name} folder {folder} does not exist")
    files = {name: images_by_stem(folder) for name, folder in folders.items()}

    skipped: dict[str, str] = {}
    triples: list[tuple[str, Path, Path, Path]] = []
    for stem in sorted(set().union(*files.values())):
        missing = [f"no {name} image in {folders[name]}" for name in folders if stem not in files[name]]
        ambiguous = [
            f"several {name} files ({', '.join(p.name for p in files[name][stem])})"
            for name in folders
            if len(files[name].get(stem, [])) > 1
        ]
        if missing or ambiguous:
            skipped[stem] = "; ".join(missing + ambiguous)
        else:
            triples.append((stem, files["ir"][stem][0], files["vi"][stem][0], files["fused"][stem][0]))

    per_image: dict[str, dict[str, float]] = {}
    for stem, ir_path, vi_path, fused_path in tqdm(triples, desc="metrics", unit="image", disable=None):
        try:
            ir = read_thermal(ir_path)
            if ir.dtype != np.uint8:
                raise DataError(f"infrared {ir_path} is {ir.dtype}; the metrics need 8-bit infrared images")
            vi = luma_u8(read_visible(vi_path))
            fused = read_fused_luma(fused_path)
            if not ir.shape == vi.shape == fused.shape:
                raise DataError(
                    f"sizes differ: ir {ir.shape[0]}x{ir.shape[1]}, vi {vi.shape[0]}x{vi.shape[1]}, "
                    f"fused {fused.shape[0]}x{fused.shape[1]}"
                )
        except MafsError as exc:
            skipped[stem] = str(exc)
            continue
        per_image[stem] = fusion_metrics(ir, vi, fused)
    for stem in sorted(skipped):
        logger.error("skipped %r: %s", stem, skipped[stem])
    if not per_image:
        raise DataError(f"no complete ir/vi/fused image triple in {', '.join(map(str, folders.values()))}")
    return json_ready({**fusion_report(per_image.items()), "skipped": dict(sorted(skipped.items()))})


# ---------------------------------------------------------------------------------------------------------
# Output


def _checkpoint_line(report: Mapping[str, Any]) -> str:
    """"mafs-lite (mafs-lite.safetensors, UNTRAINED)"-style description of the report's checkpoint."""
    ckpt = report["checkpoint"]
    parts = [Path(ckpt["path"]).name if ckpt["path"] else "model without checkpoint file"]
    if ckpt["trained"] is False:
        parts.append("UNTRAINED")
    return f"{ckpt['config']} ({', '.join(parts)})"


def _markdown_report(report: Mapping[str, Any]) -> str:
    """report.md: the report's numbers as Markdown tables."""
    ckpt, engine, fusion = report["checkpoint"], report["engine"], report["fusion"]
    lines = [
        "# MAFS evaluation",
        "",
        f"- Checkpoint: `{ckpt['path']}`, config `{ckpt['config']}`",
        f"- Engine: {engine['device']}, {engine['precision']}, "
        f"thermal normalisation `{engine['thermal_normalization']}`, size policy `{engine['size_policy']}`",
        f"- Images evaluated: {report['images']}; skipped: {len(report['skipped'])}",
    ]
    if ckpt["trained"] is False:
        lines += ["", "**The checkpoint is UNTRAINED (random weights): these numbers are meaningless.**"]
    lines += [
        "",
        "## Fusion metrics",
        "",
        "A = infrared (the engine's normalisation x 255), B = visible luma, F = fused luminance; definitions in "
        "`mafs_ros.metrics` (CDDFuse's evaluator, MI in nats).",
        "",
        fusion_table(fusion, markdown=True),
        "",
        "### Per image",
        "",
        format_table(
            ["image", *FUSION_METRIC_NAMES],
            [[stem, *format_metrics(values)] for stem, values in fusion["per_image"].items()],
            markdown=True,
        ),
    ]
    seg = report.get("segmentation")
    if seg is not None:
        lines += ["", *segmentation_markdown(seg)]
    if report["skipped"]:
        lines += ["", "## Skipped", ""] + [f"- `{stem}`: {reason}" for stem, reason in report["skipped"].items()]
    return "\n".join(lines) + "\n"


def _sheet_title(report: Mapping[str, Any]) -> str:
    title = f"MAFS evaluation: {_checkpoint_line(report)}, {report['images']} image(s)"
    seg = report.get("segmentation")
    if seg is not None and seg["mIoU"] is not None:
        title += f", mIoU {100 * seg['mIoU']:.2f} % ({seg['num_images']} labelled)"
    return title


def _write_image(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")
