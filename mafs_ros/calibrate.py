"""`mafs calibrate`: measure the thermal -> RGB homography (the node's registration.homography) from image pairs.

The homography maps thermal pixels to RGB pixels of the images as the cameras deliver them, whatever their
sizes, exactly as the node and `mafs replay` apply it.

Automatic mode: the edge alignment of `edge_alignment` (a coarse search over the pairs, then ECC refinement per
pair, combined by the median), from the start homography (the thermal image scaled onto the RGB image).

Manual mode (`homography_from_points`): at least 4 corresponding points (thermal x y -> RGB x y) give the
homography by least squares over all points (OpenCV's DLT + Levenberg-Marquardt on the reprojection error), or
with RANSAC when a threshold is given; `--refine` runs the ECC refinement from it.

A result the method itself finds poor is a failure with a reason (`CalibrationResult.ok` False): the refinement
diverged for every pair, the homography is degenerate (folded, flipped, a tiny or huge area, little overlap with
the RGB image), the edge correlation is below `min_score` (no common structure), or it is worse than at the
start.

Outputs (`write_outputs`): registration.yaml (a params file the node takes with --params-file, only when the
result is good), report.json and overlay.png (edges of the warped thermal image over the visible image, before
and after, for a few pairs).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .constants import QUEUE_SIZE, SLOP_S, THERMAL_OFFSET_S
from .edge_alignment import (
    AGREEMENT_PX,
    PreparedPair,
    coarse_search,
    combine,
    degeneracy,
    grey_image,
    map_points,
    refine,
    scaling,
    start_homography,
)
from .stream.registration import registration_params_yaml
from .stamps import stamp_ns, stamp_text
from .errors import MafsError

logger = logging.getLogger(__name__)

DEFAULT_MIN_SCORE = 0.1  # between a noise image (correlation near zero) and good results on real pairs
DEFAULT_PAIRS = 8
OVERLAY_PAIRS = 3
OVERLAY_WIDTH = 400  # width of one overlay panel


class CalibrationInputError(MafsError, ValueError):
    """Unusable input: no pairs, unreadable or mismatched images, a bad points file, a bag without the topics."""


@dataclass
class ImagePair:
    """A thermal frame (H, W) in any depth and its RGB frame (H, W, 3) uint8, with a name for the report."""

    name: str
    thermal: np.ndarray
    rgb: np.ndarray


@dataclass
class PointFit:
    """A homography fitted to manual points and its reprojection error (RGB pixels) on them."""

    homography: np.ndarray
    thermal_points: np.ndarray  # (N, 2)
    rgb_points: np.ndarray  # (N, 2)
    inliers: np.ndarray  # (N,) bool; all True without RANSAC
    method: str

    def errors(self, homography: np.ndarray | None = None) -> np.ndarray:
        """Distance between each RGB point and its thermal point mapped by `homography` (default: the fit's)."""
        matrix = self.homography if homography is None else homography
        return np.linalg.norm(map_points(matrix, self.thermal_points) - self.rgb_points, axis=1)

    def summary(self, homography: np.ndarray | None = None) -> dict[str, Any]:
        errors = self.errors(homography)
        inlier_errors = errors[self.inliers]
        return {"count": len(errors), "inliers": int(self.inliers.sum()), "method": self.method,
                "mean_px": float(inlier_errors.mean()), "rms_px": float(np.sqrt((inlier_errors ** 2).mean())),
                "max_px": float(inlier_errors.max()), "per_point_px": [round(float(e), 3) for e in errors]}


@dataclass
class CalibrationResult:
    """What `calibrate` found. `homography` is the estimate (also when it failed, for the report); only an `ok`
    result may be used. Scores are mean edge correlations over the pairs (None without images)."""

    ok: bool
    reason: str | None
    mode: str
    homography: np.ndarray
    start: np.ndarray
    thermal_size: tuple[int, int]  # (width, height)
    rgb_size: tuple[int, int]
    score_before: float | None = None
    score_after: float | None = None
    pairs: list[dict[str, Any]] = field(default_factory=list)
    points: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        """The JSON report (report.json)."""
        return {
            "ok": self.ok,
            "reason": self.reason,
            "mode": self.mode,
            "homography": _matrix_list(self.homography) if self.ok else None,
            "estimate": _matrix_list(self.homography),
            "start": _matrix_list(self.start),
            "thermal_size": list(self.thermal_size),
            "rgb_size": list(self.rgb_size),
            "score": {
                "before": self.score_before, "after": self.score_after,
                "measure": "correlation of the edge-strength images of RGB and warped thermal over their overlap "
                           "(-1..1), mean over the pairs used; before: the start homography",
            },
            "pairs": self.pairs,
            "points": self.points,
            "notes": self.notes,
        }


def _matrix_list(matrix: np.ndarray) -> list[float]:
    return [float(v) for v in (matrix / matrix[2, 2]).ravel()]


def calibrate(
    pairs: Sequence[ImagePair],
    *,
    points: PointFit | None = None,
    refine_points: bool = False,
    min_score: float = DEFAULT_MIN_SCORE,
) -> CalibrationResult:
    """Estimate the thermal -> RGB homography from `pairs` (all of the same sizes): automatically, or from manual
    `points` (refined by ECC when `refine_points`). Raises CalibrationInputError for unusable input; a poor
    result is returned with ok=False and the reason."""
    thermal_size, rgb_size = _camera_sizes(pairs)
    start = start_homography(thermal_size, rgb_size)
    prepared = [PreparedPair(pair.name, pair.thermal, pair.rgb) for pair in pairs]
    mode = "automatic" if points is None else ("manual+refine" if refine_points else "manual")
    result = CalibrationResult(ok=False, reason=None, mode=mode, homography=start, start=start,
                               thermal_size=thermal_size, rgb_size=rgb_size)
    before = [pair.score(start) for pair in prepared]

    if points is not None and not refine_points:
        return _finish(result, points.homography, prepared, before, None, min_score, points)
    initial = points.homography if points is not None else coarse_search(prepared, start)
    refined, notes = [], []
    for pair in prepared:
        homography, note = refine(pair, initial)
        refined.append(homography)
        notes.append(note)
    usable = [i for i, note in enumerate(notes) if note is None]
    if not usable:
        result.homography = initial
        result.reason = "the refinement did not converge for any pair (" + "; ".join(
            f"{prepared[i].name}: {note}" for i, note in enumerate(notes)) + ")"
        result.pairs = [{"name": p.name, "score_before": b, "used": False, "note": n}
                        for p, b, n in zip(prepared, before, notes)]
        return result
    combined, distances = combine([refined[i] for i in usable], thermal_size)
    distance_of = dict(zip(usable, distances))
    for i in range(len(prepared)):
        if i in distance_of and distance_of[i] > AGREEMENT_PX:
            notes[i] = f"left out: {distance_of[i]:.1f} px from the median of the pairs"
    if points is not None and np.mean([p.score(combined) for p in prepared]) < np.mean(
            [p.score(points.homography) for p in prepared]):
        result.notes.append("the refinement lowered the score: the homography of the points is kept")
        combined = points.homography
    return _finish(result, combined, prepared, before, notes, min_score, points, distance_of)


def _camera_sizes(pairs: Sequence[ImagePair]) -> tuple[tuple[int, int], tuple[int, int]]:
    """The (width, height) of the thermal and of the RGB images, which must be the same for every pair. Raises
    CalibrationInputError for no pairs, wrong shapes, mixed sizes or images too small to calibrate with."""
    if not pairs:
        raise CalibrationInputError("no image pairs to calibrate with")
    thermal_sizes = {(p.thermal.shape[1], p.thermal.shape[0]) for p in pairs}
    rgb_sizes = {(p.rgb.shape[1], p.rgb.shape[0]) for p in pairs}
    for pair in pairs:
        if pair.thermal.ndim != 2 or pair.rgb.ndim != 3 or pair.rgb.shape[2] != 3:
            raise CalibrationInputError(f"pair {pair.name}: thermal must be (H, W) and RGB (H, W, 3), got "
                                        f"{pair.thermal.shape} and {pair.rgb.shape}")
    if len(thermal_sizes) > 1 or len(rgb_sizes) > 1:
        raise CalibrationInputError(f"all pairs must come from the same cameras: thermal sizes "
                                    f"{sorted(thermal_sizes)}, RGB sizes {sorted(rgb_sizes)}")
    (thermal_size,), (rgb_size,) = thermal_sizes, rgb_sizes
    if min(thermal_size) < 32 or min(rgb_size) < 32:
        raise CalibrationInputError(f"images of at least 32x32 pixels are needed, got thermal {thermal_size}, "
                                    f"RGB {rgb_size}")
    return thermal_size, rgb_size


def _finish(result: CalibrationResult, homography: np.ndarray, prepared: Sequence[PreparedPair],
            before: Sequence[float], notes: Sequence[str | None] | None, min_score: float,
            points: PointFit | None, distances: dict[int, float] | None = None) -> CalibrationResult:
    """Score `homography` on every pair, judge it and fill in `result`."""
    homography = homography / homography[2, 2]
    result.homography = homography
    after = [pair.score(homography) for pair in prepared]
    used = [i for i in range(len(prepared)) if notes is None or notes[i] is None]
    result.pairs = [
        {"name": pair.name, "score_before": round(before[i], 4), "score_after": round(after[i], 4),
         "used": i in used, **({"note": notes[i]} if notes is not None and notes[i] else {}),
         **({"distance_to_median_px": round(distances[i], 3)} if distances and i in distances else {})}
        for i, pair in enumerate(prepared)
    ]
    scored = used or list(range(len(prepared)))
    result.score_before = float(np.mean([before[i] for i in scored]))
    result.score_after = float(np.mean([after[i] for i in scored]))
    if points is not None:
        result.points = points.summary(homography)
    if len(used) * 2 < len(prepared):
        result.reason = (f"the pairs disagree: only {len(used)} of {len(prepared)} gave a homography within "
                         f"{AGREEMENT_PX} px of the median")
        return result
    degenerate = degeneracy(homography, result.thermal_size, result.rgb_size, result.start)
    if degenerate is not None:
        result.reason = f"degenerate homography: {degenerate}"
    elif points is not None:
        # The points are the user's measurement: the edge score only informs (a calibration target in front of
        # a plain wall has little other structure).
        if result.score_after < min_score or result.score_after < result.score_before:
            result.notes.append(f"edge correlation {result.score_after:.3f} after, {result.score_before:.3f} "
                                "before: check the overlay and the points")
    elif result.score_after < min_score:
        result.reason = (f"no common structure found: the edge correlation after alignment is "
                         f"{result.score_after:.3f}, below {min_score} (is the thermal image of the same scene, "
                         "with some structure in it?)")
    # A tie (pairs already registered at the start) is not a failure: only a clear loss is.
    elif result.score_after < result.score_before - 0.005:
        result.reason = (f"the estimate aligns worse than the start (edge correlation {result.score_after:.3f} "
                         f"after, {result.score_before:.3f} before)")
    result.ok = result.reason is None
    return result


# ---------------------------------------------------------------------------------------------------------
# Manual points


def read_points(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Corresponding points from a text file: one `thermal_x thermal_y rgb_x rgb_y` per line (spaces or commas),
    `#` starts a comment. Returns (thermal (N, 2), rgb (N, 2)). Raises CalibrationInputError naming the line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationInputError(f"cannot read points file {path}: {exc}") from None
    rows = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].replace(",", " ").split()
        if not text:
            continue
        try:
            values = [float(v) for v in text]
        except ValueError:
            values = []
        if len(values) != 4 or not np.all(np.isfinite(values)):
            raise CalibrationInputError(f"{path}, line {number}: expected 4 numbers 'thermal_x thermal_y rgb_x "
                                        f"rgb_y', got {line.strip()!r}")
        rows.append(values)
    if len(rows) < 4:
        raise CalibrationInputError(f"{path}: at least 4 point pairs are needed, got {len(rows)}")
    array = np.asarray(rows, dtype=np.float64)
    return array[:, :2], array[:, 2:]


def homography_from_points(thermal_points: np.ndarray, rgb_points: np.ndarray,
                           ransac_px: float | None = None) -> PointFit:
    """The homography mapping `thermal_points` onto `rgb_points` (N >= 4): least squares over all points, or
    RANSAC with inlier threshold `ransac_px` (then least squares over the inliers). Raises CalibrationInputError
    for degenerate points (fewer than 4, or too many on one line)."""
    thermal_points = np.asarray(thermal_points, dtype=np.float64).reshape(-1, 2)
    rgb_points = np.asarray(rgb_points, dtype=np.float64).reshape(-1, 2)
    if len(thermal_points) < 4 or len(thermal_points) != len(rgb_points):
        raise CalibrationInputError(f"at least 4 point pairs are needed, got {len(thermal_points)} thermal and "
                                    f"{len(rgb_points)} RGB points")
    method, threshold = (cv2.RANSAC, float(ransac_px)) if ransac_px else (0, 3.0)
    matrix, mask = cv2.findHomography(thermal_points, rgb_points, method, threshold)
    if matrix is None or abs(np.linalg.det(matrix)) < 1e-12:
        raise CalibrationInputError("the points do not determine a homography (are 3 of every 4 on one line?)")
    inliers = np.ones(len(thermal_points), bool) if mask is None else mask.ravel().astype(bool)
    return PointFit(matrix / matrix[2, 2], thermal_points, rgb_points, inliers,
                    f"ransac ({ransac_px} px)" if ransac_px else "least squares")


# ---------------------------------------------------------------------------------------------------------
# Inputs


def pairs_from_paths(ir: Path, vi: Path, limit: int = DEFAULT_PAIRS) -> list[ImagePair]:
    """Image pairs from two files or two folders (paired by stem, as `mafs fuse`), at most `limit` of them spread
    evenly over the sorted stems. Raises CalibrationInputError for missing, unpaired or unreadable files."""
    from .io.files import collect_pairs
    from .io.images import read_thermal, read_visible

    try:
        found, problems = collect_pairs(ir, vi)
    except ValueError as exc:
        raise CalibrationInputError(str(exc)) from None
    for message in problems:
        logger.warning("%s", message)
    if not found:
        raise CalibrationInputError(f"no image pairs found (ir: {ir}, vi: {vi})")
    pairs = []
    for stem, ir_path, vi_path in _spread(found, limit):
        try:
            pairs.append(ImagePair(stem, read_thermal(ir_path), read_visible(vi_path)))
        except ValueError as exc:
            raise CalibrationInputError(str(exc)) from None
    return pairs


def _spread(items: Sequence[Any], limit: int) -> list[Any]:
    """At most `limit` items evenly spaced over `items`, first and last included."""
    if len(items) <= limit:
        return list(items)
    return [items[i] for i in np.unique(np.linspace(0, len(items) - 1, limit).round().astype(int))]


def pairs_from_bag(bag: Path, rgb_topic: str, thermal_topic: str, *, limit: int = DEFAULT_PAIRS,
                   slop_s: float = SLOP_S, queue_size: int = QUEUE_SIZE,
                   thermal_offset_s: float = THERMAL_OFFSET_S) -> list[ImagePair]:
    """At most `limit` pairs spread evenly over a bag, made by the node's pairing (same sync parameters). Reads
    the bag twice: stamps first, then the pixels of the chosen frames only. Raises CalibrationInputError."""
    from .bags import BagError, BagReader, deserialize, topic_name
    from .stream.conversions import ImageConversionError
    from .stream.frames import decode_input
    from .stream.pairing import ApproximateTimePairer

    try:
        rgb_topic, thermal_topic = topic_name(rgb_topic), topic_name(thermal_topic)
        pairer = ApproximateTimePairer(slop_s=slop_s, queue_size=queue_size, thermal_offset_s=thermal_offset_s)
    except ValueError as exc:
        raise CalibrationInputError(str(exc)) from None
    try:
        with BagReader(bag) as reader:
            rgb_topic, thermal_topic = reader.image_topic(rgb_topic), reader.image_topic(thermal_topic)
            reader.require_topics([rgb_topic, thermal_topic])
            made = []  # (rgb message index, thermal message index, rgb stamp)
            for index, message in enumerate(reader.messages([rgb_topic, thermal_topic])):
                try:
                    stamp = stamp_ns(deserialize(message).header)
                except Exception:  # noqa: BLE001 - a corrupt message is one frame less, not a failure
                    continue
                add = pairer.add_rgb if message.topic == rgb_topic else pairer.add_thermal
                made += [(p.rgb, p.thermal, p.rgb_stamp_ns) for p in add(stamp, index)]
            made += [(p.rgb, p.thermal, p.rgb_stamp_ns) for p in pairer.flush()]
            if not made:
                raise CalibrationInputError(f"no pairs in {bag}: no {thermal_topic} frame within {slop_s} s of a "
                                            f"{rgb_topic} frame (see --slop-s and --thermal-offset-s)")
            chosen = _spread(made, limit)
            wanted = {i for rgb, thermal, _ in chosen for i in (rgb, thermal)}
            images: dict[int, np.ndarray] = {}
            for index, message in enumerate(reader.messages([rgb_topic, thermal_topic])):
                if index in wanted:
                    msg = deserialize(message)
                    try:
                        images[index] = np.array(decode_input(msg, visible=message.topic == rgb_topic)[0])
                    except ImageConversionError as exc:
                        raise CalibrationInputError(f"{bag}, {message.topic}: {exc}") from None
    except BagError as exc:
        raise CalibrationInputError(str(exc)) from None
    return [ImagePair(stamp_text(stamp), images[thermal], images[rgb]) for rgb, thermal, stamp in chosen]


# ---------------------------------------------------------------------------------------------------------
# Outputs


def overlay_image(pairs: Sequence[ImagePair], start: np.ndarray, homography: np.ndarray,
                  scores: Sequence[dict[str, Any]] | None = None) -> np.ndarray:
    """Per pair (at most OVERLAY_PAIRS) a row of two panels, before (`start`) and after (`homography`): the
    visible image in grey with the edges of the warped thermal image in red. BGR uint8, for cv2.imwrite."""
    rows = []
    for index, pair in enumerate(pairs[:OVERLAY_PAIRS]):
        width, height = pair.rgb.shape[1], pair.rgb.shape[0]
        panel_size = (min(OVERLAY_WIDTH, width), round(height * min(OVERLAY_WIDTH, width) / width))
        shrink = scaling(panel_size[0] / width, panel_size[1] / height)
        grey = cv2.resize(cv2.cvtColor(np.ascontiguousarray(pair.rgb), cv2.COLOR_RGB2GRAY), panel_size,
                          interpolation=cv2.INTER_AREA)
        thermal = (grey_image(pair.thermal) * 255).astype(np.uint8)
        panels = []
        for label, matrix in (("before", start), ("after", homography)):
            warped = cv2.warpPerspective(thermal, shrink @ matrix, panel_size, flags=cv2.INTER_LINEAR)
            valid = cv2.warpPerspective(np.full_like(thermal, 255), shrink @ matrix, panel_size,
                                        flags=cv2.INTER_NEAREST)
            edges = cv2.Canny(cv2.GaussianBlur(warped, (0, 0), 1.5), 40, 100)
            edges[cv2.erode(valid, np.ones((5, 5), np.uint8)) == 0] = 0
            panel = cv2.cvtColor((grey * 0.7).astype(np.uint8), cv2.COLOR_GRAY2BGR)
            panel[edges > 0] = (40, 40, 255)
            score = scores[index].get(f"score_{label}") if scores and index < len(scores) else None
            caption = f"{pair.name} {label}" + (f" (score {score:.2f})" if score is not None else "")
            (text_width, text_height), _ = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
            panel[: text_height + 12, : text_width + 12] = 0
            cv2.putText(panel, caption, (6, text_height + 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                        cv2.LINE_AA)
            panels.append(panel)
        rows.append(np.hstack([panels[0], np.full((panel_size[1], 4, 3), 255, np.uint8), panels[1]]))
    width = max(row.shape[1] for row in rows)
    rows = [np.pad(row, ((0, 4), (0, width - row.shape[1]), (0, 0)), constant_values=255) for row in rows]
    return np.vstack(rows)[:-4]


def write_outputs(result: CalibrationResult, pairs: Sequence[ImagePair], out_dir: Path) -> list[str]:
    """report.json always; overlay.png when there are images; registration.yaml only for a good result. Returns
    the file names written (raises OSError)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if result.ok:
        comment = (f"thermal -> RGB homography ({result.thermal_size[0]}x{result.thermal_size[1]} thermal, "
                   f"{result.rgb_size[0]}x{result.rgb_size[1]} RGB), written by mafs calibrate ({result.mode})\n"
                   "ros2 run mafs_ros mafs_node --ros-args --params-file registration.yaml\n"
                   "mafs replay BAG --out DIR --homography-file registration.yaml")
        (out_dir / "registration.yaml").write_text(registration_params_yaml(result.homography, comment),
                                                   encoding="utf-8")
        written.append("registration.yaml")
    elif (out_dir / "registration.yaml").exists():
        logger.warning("%s is from an earlier run and was left unchanged", out_dir / "registration.yaml")
    if pairs:
        image = overlay_image(pairs, result.start, result.homography, result.pairs)
        if not cv2.imwrite(str(out_dir / "overlay.png"), image, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
            raise OSError(f"cannot write {out_dir / 'overlay.png'}")
        written.append("overlay.png")
    report = result.report()
    report["files"] = written + ["report.json"]
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report["files"]
