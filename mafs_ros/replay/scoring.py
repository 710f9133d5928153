"""Scoring both replay modes: per-pair fusion metrics, ground truth matched by stamp, skip counts, contact-sheet
samples, and the report entries computed from them.

Fusion metrics per pair (A, B, F as in `evaluate`): A = the thermal frame through the thermal normalisation
(`imaging.thermal_u8`), B = `metrics.luma_u8` of the RGB frame, F = `luma_u8` of the fused rgb8 image as
published (what `mafs metrics` takes from an RGB fused file), so both modes score the same pixels.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..class_sets import IGNORE_LABEL
from ..imaging import ThermalNormalization, overlay, thermal_u8
from ..metrics import ConfusionMatrix, fusion_metrics, luma_u8, mean_metrics
from ..reports import SheetRow, segmentation_summary
from ..stream.conversions import ImageConversionError, image_to_numpy
from ..stream.results import TIMING_FIELDS
from ..stamps import stamp_text
from ..stats import summary

logger = logging.getLogger(__name__)

_LOGGED_PER_REASON = 3  # a bag can repeat one problem thousands of times: log the first few, count them all


@dataclass
class PairRecord:
    """The numbers of one evaluated pair."""

    rgb_stamp_ns: int
    thermal_stamp_ns: int
    skew_ns: int
    timings: dict[str, float]
    metrics: dict[str, float]
    end_to_end_ms: float | None = None

    @property
    def latency_ms(self) -> float:
        return sum(self.timings.values())


class Evaluation:
    """Per-pair records, ground-truth matching, skip counts and contact-sheet samples of one run.

    Ground truth and predictions of a stamp may come in either order: a prediction is kept only for the stamps
    that have ground truth (`ground_truth_stamps`, read beforehand), a ground-truth image until its pair comes.
    Pairs are numbered in the order they are added (the pair index): a looped bag repeats RGB stamps.
    """

    def __init__(self, normalization: ThermalNormalization, class_names: Sequence[str], palette: np.ndarray,
                 ground_truth_stamps: set[int], sample_indices: set[int]) -> None:
        self.normalization = normalization
        self.class_names = tuple(class_names)
        self.palette = palette
        self.ground_truth_stamps = ground_truth_stamps
        self.sample_indices = sample_indices
        self.records: list[PairRecord] = []
        self.skipped: Counter = Counter()
        self.samples: dict[int, SheetRow] = {}  # pair index -> contact-sheet row
        self.labels_read = 0
        self.labels_scored = 0
        self._matrix = ConfusionMatrix(len(self.class_names), ignore_index=IGNORE_LABEL)
        self._pending_truth: dict[int, np.ndarray] = {}
        self._pending_predictions: dict[int, tuple[np.ndarray, int]] = {}  # RGB stamp -> (labels, pair index)

    def skip(self, reason: str, message: str) -> None:
        """Count a frame or pair left out under `reason`; log the first few of each reason."""
        self.skipped[reason] += 1
        if self.skipped[reason] < _LOGGED_PER_REASON:
            logger.error("%s", message)
        elif self.skipped[reason] == _LOGGED_PER_REASON:
            logger.error("%s (further %s cases are only counted)", message, reason)

    def add_pair(
        self,
        pair_stamps: tuple[int, int, int],
        rgb: np.ndarray,
        thermal: np.ndarray,
        fused_rgb: np.ndarray,
        labels: np.ndarray,
        timings: dict[str, float],
        end_to_end_ms: float | None = None,
    ) -> None:
        """Score one fused pair. pair_stamps: (RGB stamp, thermal stamp, skew) in ns; images at the RGB size."""
        rgb_stamp, thermal_stamp, skew = pair_stamps
        ir = thermal_u8(self.normalization, thermal)
        values = fusion_metrics(ir, luma_u8(rgb), luma_u8(fused_rgb))
        self.records.append(PairRecord(rgb_stamp, thermal_stamp, skew, dict(timings), values, end_to_end_ms))
        index = len(self.records) - 1
        if index in self.sample_indices:
            self.samples[index] = SheetRow(
                stem=stamp_text(rgb_stamp), ir=ir, vi=np.asarray(rgb), fused=fused_rgb,
                prediction=overlay(fused_rgb, labels, self.palette), ground_truth=None,
            )
        truth = self._pending_truth.pop(rgb_stamp, None)
        if truth is not None:
            self._score(rgb_stamp, labels, index, truth)
        elif rgb_stamp in self.ground_truth_stamps:
            self._pending_predictions[rgb_stamp] = (np.array(labels), index)

    def add_ground_truth(self, stamp: int, msg: Any) -> None:
        """A ground-truth label image (mono8/8UC1/mono16/16UC1 class ids) for the RGB frame stamped `stamp`."""
        self.labels_read += 1
        try:
            truth = image_to_numpy(msg)
            if truth.ndim != 2 or truth.dtype.kind != "u":
                raise ImageConversionError("unsupported_encoding", f"{msg.encoding!r} is not a class-id encoding")
        except ImageConversionError as exc:
            self.skip(f"ground_truth_{exc.reason}", f"ground truth at {stamp_text(stamp)}: {exc}")
            return
        pending = self._pending_predictions.pop(stamp, None)
        if pending is None:
            self._pending_truth[stamp] = np.array(truth)
        else:
            prediction, index = pending
            self._score(stamp, prediction, index, truth)

    def _score(self, stamp: int, prediction: np.ndarray, index: int, truth: np.ndarray) -> None:
        try:
            self._matrix.update(prediction, truth)
        except ValueError as exc:  # another size, or class ids outside the model's classes
            self.skip("bad_ground_truth", f"ground truth at {stamp_text(stamp)}: {exc}")
            return
        self.labels_scored += 1
        if index in self.samples:
            self.samples[index].ground_truth = overlay(self.samples[index].vi, truth, self.palette)

    def segmentation(self) -> dict[str, Any] | None:
        """The report's "segmentation" entry, or None without any ground truth."""
        if not self.labels_read:
            return None
        return {
            **segmentation_summary(self._matrix, self.class_names, self.labels_scored),
            "labels_read": self.labels_read,
            "labels_unmatched": len(self._pending_truth),
        }


def summaries(evaluation: Evaluation, frames_read: dict[str, int], duration_s: float,
              wall_s: float | None) -> dict[str, Any]:
    """The report entries computed from the evaluated pairs (shared by both modes; wall_s None: a recording)."""
    records = evaluation.records
    per_frame = [{"index": i, "rgb_stamp": stamp_text(r.rgb_stamp_ns), "metrics": r.metrics}
                 for i, r in enumerate(records)]
    # Keyed by pair index, not stamp: a looped bag repeats stamps, and every pair counts in the mean.
    mean = mean_metrics({str(i): r.metrics for i, r in enumerate(records)})["mean"] if records else None
    skews_ms = [r.skew_ns / 1e6 for r in records]
    abs_skew = summary(abs(s) for s in skews_ms)
    out: dict[str, Any] = {
        "pairs_fused": len(records),
        "skipped": dict(sorted(evaluation.skipped.items())),
        "skew_ms": {"mean": summary(skews_ms)["mean"], "p50": abs_skew["p50"], "p95": abs_skew["p95"],
                    "max": abs_skew["max"]},
        "latency_ms": {
            **summary(r.latency_ms for r in records),
            "stages": {name: summary(r.timings.get(name, 0.0) for r in records) for name in TIMING_FIELDS},
        },
        "throughput": _throughput(len(records), frames_read, duration_s, wall_s),
        "fusion": {"mean": mean, "per_frame": per_frame},
        "frames": [
            {"rgb_stamp_ns": r.rgb_stamp_ns, "thermal_stamp_ns": r.thermal_stamp_ns, "skew_ms": r.skew_ns / 1e6,
             "latency_ms": r.latency_ms, **({"end_to_end_ms": r.end_to_end_ms} if r.end_to_end_ms is not None else {})}
            for r in records
        ],
    }
    if wall_s is None:  # a recording: the node's results were received at a time of their own
        out["end_to_end_ms"] = summary(r.end_to_end_ms for r in records if r.end_to_end_ms is not None)
    segmentation = evaluation.segmentation()
    if segmentation is not None:
        out["segmentation"] = segmentation
    return out


def registration_entry(homography: np.ndarray | None) -> dict[str, list[float] | None]:
    """The report's "registration" entry: the homography applied (None: identity, no warp)."""
    return {"homography": None if homography is None else homography.ravel().tolist()}


def _throughput(pairs: int, frames_read: dict[str, int], duration_s: float, wall_s: float | None) -> dict[str, Any]:
    """The report's "throughput" entry: rates per bag second and, for a replay, per wall second."""
    throughput: dict[str, Any] = {
        "bag_duration_s": duration_s,
        "pairs_per_s": pairs / duration_s if duration_s > 0 else None,
        "rates_hz": {topic: n / duration_s if duration_s > 0 else None for topic, n in frames_read.items()},
    }
    if wall_s is not None:
        throughput["wall_s"] = wall_s
        throughput["pairs_per_s_wall"] = pairs / wall_s if wall_s > 0 else None
        throughput["realtime_factor"] = duration_s / wall_s if wall_s > 0 else None
    return throughput
