"""`mafs calibrate`: measure the thermal -> RGB homography (the node's registration.homography) from image pairs.

The homography maps thermal pixels to RGB pixels of the images as the cameras deliver them, whatever their
sizes (e.g. 640x512 thermal, 1280x720 RGB), exactly as the node and `mafs replay` apply it.

Automatic mode (`estimate_homography`): thermal and visible intensities do not correspond, but their edges do, so
both images are compared as edge-strength images (gradient magnitude of the smoothed image, compressed so that a
few strong edges do not dominate) by their correlation over the overlap (the "score", -1..1).

1. Start: the thermal image scaled uniformly (geometric mean of the width and height ratios) onto the RGB image,
   centre on centre: the identity for same-sized cameras.
2. Coarse search at COARSE_WIDTH: every scale of SCALES and rotation of ANGLES_DEG about the image centre, each
   with every shift up to SEARCH_MARGIN of the image (masked normalised cross-correlation, `cv2.matchTemplate`),
   the correlation maps summed over all pairs: one answer for the set.
3. Refinement per pair: enhanced correlation (`cv2.findTransformECC`) on a pyramid from COARSE_WIDTH, doubling,
   up to FINE_WIDTH (the RGB width when smaller); affine on the coarser levels, full homography on the finest.
4. The pairs' homographies are combined by the per-point median of a grid of mapped thermal pixels; pairs that
   disagree with it by more than a few pixels are left out, and a least-squares fit to the grid of the rest
   is the result.

Manual mode (`homography_from_points`): at least 4 corresponding points (thermal x y -> RGB x y) give the
homography by least squares over all points (OpenCV's DLT + Levenberg-Marquardt on the reprojection error), or
with RANSAC when a threshold is given; `--refine` runs step 3 from it.

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

from .ros.registration import registration_params_yaml

logger = logging.getLogger(__name__)

FINE_WIDTH = 640  # finest refinement level: finer costs time, and sub-pixel accuracy there is enough for HD RGB
COARSE_WIDTH = 160  # coarse search level: small enough to try every candidate, large enough to see structure
# Relative to the start. Neighbouring candidates move the image border by a pixel or two at the coarse level:
# finer would only cost time, ECC takes it from there.
SCALES = np.geomspace(0.75, 4.0 / 3.0, 15)
ANGLES_DEG = np.linspace(-6.0, 6.0, 7)
SEARCH_MARGIN = 0.15  # shifts up to this fraction of the image size in x and y are searched
HOMOGRAPHY_LEVELS = 1  # finest levels refined as full homography; the coarser ones as affine (see `refine`)
ECC_ITERATIONS = 100
ECC_EPSILON = 1e-6
FEATURE_SIGMA = 1.0  # smoothing before the gradient, in pixels of the level: suppresses pixel noise, keeps edges
DEFAULT_MIN_SCORE = 0.1  # between a noise image (correlation near zero) and good results on real pairs
AGREEMENT_PX = 4.0  # pairs whose homography is farther than this from the median (grid mean, RGB pixels) are dropped
DEFAULT_PAIRS = 8
OVERLAY_PAIRS = 3
OVERLAY_WIDTH = 400  # width of one overlay panel


class CalibrationInputError(ValueError):
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


# ---------------------------------------------------------------------------------------------------------
# Geometry helpers


def map_points(homography: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N, 2) points mapped by a 3x3 homography."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 1, 2)
    return cv2.perspectiveTransform(points, np.asarray(homography, dtype=np.float64)).reshape(-1, 2)


def pixel_grid(size: tuple[int, int], count: int = 16) -> np.ndarray:
    """count x count pixel positions spread evenly over an image of `size` (width, height), corners included."""
    xs = np.linspace(0.0, size[0] - 1.0, count)
    ys = np.linspace(0.0, size[1] - 1.0, count)
    return np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)


def grid_error(estimate: np.ndarray, truth: np.ndarray, thermal_size: tuple[int, int]) -> float:
    """Mean distance (RGB pixels) between the thermal pixel grid mapped by `estimate` and by `truth`."""
    grid = pixel_grid(thermal_size)
    return float(np.linalg.norm(map_points(estimate, grid) - map_points(truth, grid), axis=1).mean())


def _scaling(sx: float, sy: float) -> np.ndarray:
    """Pixel coordinates of an image resized by (sx, sy), pixel centres aligned as cv2.resize does."""
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def start_homography(thermal_size: tuple[int, int], rgb_size: tuple[int, int]) -> np.ndarray:
    """The thermal image scaled uniformly onto the RGB image, centre on centre (identity for equal sizes)."""
    scale = float(np.sqrt(rgb_size[0] / thermal_size[0] * rgb_size[1] / thermal_size[1]))
    tx = (rgb_size[0] - 1) / 2 - scale * (thermal_size[0] - 1) / 2
    ty = (rgb_size[1] - 1) / 2 - scale * (thermal_size[1] - 1) / 2
    return np.array([[scale, 0.0, tx], [0.0, scale, ty], [0.0, 0.0, 1.0]])


def degeneracy(homography: np.ndarray, thermal_size: tuple[int, int], rgb_size: tuple[int, int],
               start: np.ndarray) -> str | None:
    """Why `homography` cannot be a camera registration (folded or flipped, an area far from the start's, little
    overlap with the RGB image), or None if it is plausible."""
    if not np.all(np.isfinite(homography)) or abs(np.linalg.det(homography)) < 1e-12:
        return "the homography is not finite or not invertible"
    w, h = thermal_size
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float64)
    # A point of the thermal image mapped to infinity or behind the camera (w <= 0) folds the warp.
    denominators = np.c_[corners, np.ones(4)] @ homography[2]
    if np.any(denominators <= 0):
        return "the homography maps part of the thermal image to infinity (too much perspective)"
    quad = map_points(homography, corners).astype(np.float32)
    if not cv2.isContourConvex(quad.reshape(-1, 1, 2)) or _signed_area(quad) <= 0:
        return "the homography folds or mirrors the thermal image"
    area_ratio = _signed_area(quad) / _signed_area(map_points(start, corners))
    if not 0.25 <= area_ratio <= 4.0:
        return f"the warped thermal image is {area_ratio:.2f} times the size it starts at (allowed 0.25-4)"
    frame = np.array([[0, 0], [rgb_size[0], 0], [rgb_size[0], rgb_size[1]], [0, rgb_size[1]]], dtype=np.float32)
    overlap, _ = cv2.intersectConvexConvex(quad, frame)
    if overlap < 0.2 * rgb_size[0] * rgb_size[1]:
        percent = 100 * overlap / (rgb_size[0] * rgb_size[1])
        return f"the warped thermal image covers only {percent:.0f} % of the RGB image"
    return None


def _signed_area(quad: np.ndarray) -> float:
    x, y = np.asarray(quad, dtype=np.float64).T
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


# ---------------------------------------------------------------------------------------------------------
# Edge images and the alignment score


def _grey(image: np.ndarray) -> np.ndarray:
    """A thermal (any depth) or RGB image as float32 grey, thermal stretched robustly (hot pixels ignored)."""
    if image.ndim == 3:
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    grey = np.asarray(image, dtype=np.float32)
    low, high = np.percentile(grey, (1, 99))
    return np.clip((grey - low) / max(float(high - low), 1e-6), 0.0, 1.0).astype(np.float32)


def edge_image(grey: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The edges of `grey` resized to `size` (width, height), as 3 float32 channels: edge strength a and
    a*cos(2 theta), a*sin(2 theta) of the gradient direction theta.

    a = |g|^2 / (|g|^2 + eps^2) (eps^2: the median |g|^2) saturates, so weak and strong edges count alike: edge
    contrast differs between the modalities, edge positions do not. The doubled angle makes the direction blind
    to polarity (an object warmer than its background can be darker than it in the visible image) while
    keeping it: correlating these channels rewards edges that lie on each other and run the same way, which a
    shear or a rotation cannot fake by sliding thin edges onto broad textured areas.
    """
    shrink = size[0] < grey.shape[1]
    resized = cv2.resize(grey, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    smooth = cv2.GaussianBlur(resized, (0, 0), FEATURE_SIGMA)
    gx, gy = cv2.Sobel(smooth, cv2.CV_32F, 1, 0), cv2.Sobel(smooth, cv2.CV_32F, 0, 1)
    squared = gx * gx + gy * gy
    strength = squared / (squared + float(np.median(squared)) + 1e-12)
    cos2, sin2 = (gx * gx - gy * gy) / (squared + 1e-12), 2 * gx * gy / (squared + 1e-12)
    return np.ascontiguousarray(np.dstack([strength, strength * cos2, strength * sin2]), dtype=np.float32)


def _correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    a, b = a[mask].astype(np.float64), b[mask].astype(np.float64)  # (N, channels)
    if len(a) < 100:
        return 0.0
    a, b = a - a.mean(axis=0), b - b.mean(axis=0)
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def _level_size(rgb_size: tuple[int, int], width: int) -> tuple[int, int]:
    width = min(width, rgb_size[0])
    return width, max(8, round(rgb_size[1] * width / rgb_size[0]))


def _common_detail(thermal_grey: np.ndarray, rgb_grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both images at the finer detail of the two: the finer camera's image downsampled to the coarser one's
    pixel density. A coarse thermal image stretched to a fine level has broad edges next to the RGB image's
    thin ones, and ECC then settles where the broad and the thin edges overlap best, not where they coincide."""
    ratio = float(np.sqrt(rgb_grey.shape[0] * rgb_grey.shape[1] / (thermal_grey.shape[0] * thermal_grey.shape[1])))
    if ratio > 1.05:
        size = (round(rgb_grey.shape[1] / ratio), round(rgb_grey.shape[0] / ratio))
        return thermal_grey, cv2.resize(rgb_grey, size, interpolation=cv2.INTER_AREA)
    if ratio < 1 / 1.05:
        size = (round(thermal_grey.shape[1] * ratio), round(thermal_grey.shape[0] * ratio))
        return cv2.resize(thermal_grey, size, interpolation=cv2.INTER_AREA), rgb_grey
    return thermal_grey, rgb_grey


class _Level:
    """One pyramid level: both images' edge images at the RGB image's aspect and `size`, and the maps between
    full-resolution pixels and level pixels (thermal is stretched to the level size)."""

    def __init__(self, thermal_grey: np.ndarray, rgb_grey: np.ndarray, size: tuple[int, int]) -> None:
        self.size = size
        thermal_detail, rgb_detail = _common_detail(thermal_grey, rgb_grey)
        self.thermal = edge_image(thermal_detail, size)
        self.rgb = edge_image(rgb_detail, size)
        self.thermal_scale = _scaling(size[0] / thermal_grey.shape[1], size[1] / thermal_grey.shape[0])
        self.rgb_scale = _scaling(size[0] / rgb_grey.shape[1], size[1] / rgb_grey.shape[0])

    def to_level(self, homography: np.ndarray) -> np.ndarray:
        return self.rgb_scale @ homography @ np.linalg.inv(self.thermal_scale)

    def from_level(self, homography: np.ndarray) -> np.ndarray:
        matrix = np.linalg.inv(self.rgb_scale) @ homography @ self.thermal_scale
        return matrix / matrix[2, 2]

    def score(self, homography: np.ndarray) -> float:
        """Edge correlation of RGB and the thermal warped by `homography` (full resolution), over the overlap."""
        matrix = self.to_level(homography)
        warped = cv2.warpPerspective(self.thermal, matrix, self.size, flags=cv2.INTER_LINEAR)
        valid = cv2.warpPerspective(np.ones(self.thermal.shape[:2], np.uint8), matrix, self.size,
                                    flags=cv2.INTER_NEAREST)
        # Pixels next to the overlap's border see the zeros outside it through the interpolation: leave them out.
        valid = cv2.erode(valid, np.ones((5, 5), np.uint8)).astype(bool)
        return _correlation(warped, self.rgb, valid)


class _PreparedPair:
    """An ImagePair as grey images and its pyramid levels, coarse to fine."""

    def __init__(self, pair: ImagePair) -> None:
        self.name = pair.name
        thermal_grey, rgb_grey = _grey(pair.thermal), _grey(pair.rgb)
        self.thermal_size = (pair.thermal.shape[1], pair.thermal.shape[0])
        self.rgb_size = (pair.rgb.shape[1], pair.rgb.shape[0])
        finest = min(FINE_WIDTH, self.rgb_size[0])
        widths = [COARSE_WIDTH]
        while widths[-1] * 2 <= finest:
            widths.append(widths[-1] * 2)
        if widths[-1] < finest:
            widths.append(finest)
        self.levels = [_Level(thermal_grey, rgb_grey, _level_size(self.rgb_size, w)) for w in widths]

    def score(self, homography: np.ndarray) -> float:
        """The score at the finest level."""
        return self.levels[-1].score(homography)


# ---------------------------------------------------------------------------------------------------------
# Automatic estimation


def coarse_search(pairs: Sequence[_PreparedPair], start: np.ndarray) -> np.ndarray:
    """The similarity transform (scale, rotation about the RGB image centre, shift) after `start` whose masked
    edge cross-correlation, summed over all pairs, is highest; as a full-resolution homography."""
    levels = [pair.levels[0] for pair in pairs]
    size = levels[0].size
    start_level = levels[0].to_level(start)
    centre = ((size[0] - 1) / 2, (size[1] - 1) / 2)
    mx, my = round(SEARCH_MARGIN * size[0]), round(SEARCH_MARGIN * size[1])
    best = (-np.inf, np.eye(3))
    for scale in SCALES:
        for angle in ANGLES_DEG:
            similarity = np.vstack([cv2.getRotationMatrix2D(centre, float(angle), float(scale)), [0, 0, 1]])
            candidate = similarity @ start_level
            total = _summed_correlation(levels, candidate, (mx, my))
            if total is None:
                continue
            iy, ix = np.unravel_index(int(np.argmax(total)), total.shape)
            if total[iy, ix] > best[0]:
                shift = np.array([[1.0, 0.0, ix - mx], [0.0, 1.0, iy - my], [0.0, 0.0, 1.0]])
                best = (float(total[iy, ix]), shift @ candidate)
    return levels[0].from_level(best[1])


def _summed_correlation(levels: Sequence[_Level], candidate: np.ndarray,
                        margin: tuple[int, int]) -> np.ndarray | None:
    """Masked edge cross-correlation of each level's RGB image with its thermal image warped by `candidate` (level
    pixels) and cropped by `margin` (x, y), for every shift within the margin, summed over the levels; None when
    too little of the crop lies inside the thermal image to judge."""
    mx, my = margin
    total = None
    for level in levels:
        warped = cv2.warpPerspective(level.thermal, candidate, level.size, flags=cv2.INTER_LINEAR)
        valid = cv2.warpPerspective(np.ones(level.thermal.shape[:2], np.uint8), candidate, level.size,
                                    flags=cv2.INTER_NEAREST)
        template = warped[my:-my, mx:-mx]
        mask = cv2.erode(valid, np.ones((3, 3), np.uint8))[my:-my, mx:-mx]
        if mask.mean() < 0.3:
            return None
        correlation = cv2.matchTemplate(level.rgb, template, cv2.TM_CCOEFF_NORMED, mask=mask)
        # A shift where the masked template has no variance gives NaN: never the best.
        correlation = np.nan_to_num(correlation, nan=-1.0, posinf=-1.0, neginf=-1.0)
        total = correlation if total is None else total + correlation
    return total


def refine(pair: _PreparedPair, homography: np.ndarray) -> tuple[np.ndarray, str | None]:
    """`homography` refined by ECC on the edge images, coarse to fine. The coarser levels refine only its affine
    part: a few edges at low resolution do not pin down perspective, and letting it loose there walks off to
    a wrong optimum. Returns the result and a note when a level did not converge (the result then is the input)."""
    for index, level in enumerate(pair.levels):
        full = index >= len(pair.levels) - HOMOGRAPHY_LEVELS
        criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, ECC_ITERATIONS, ECC_EPSILON)
        warp = level.to_level(homography)
        try:
            if full:
                _, warp = cv2.findTransformECC(level.thermal, level.rgb, warp.astype(np.float32),
                                               cv2.MOTION_HOMOGRAPHY, criteria, None, 5)
            else:
                # Level warp = A P with P its perspective part, kept: ECC refines the affine A for the thermal
                # edges warped by P (P is the identity unless the start came from manual points).
                perspective = np.eye(3)
                perspective[2] = warp[2] / warp[2, 2]
                affine = (warp @ np.linalg.inv(perspective))[:2] / warp[2, 2]
                template = level.thermal
                if not np.allclose(perspective, np.eye(3)):
                    template = cv2.warpPerspective(level.thermal, perspective, level.size, flags=cv2.INTER_LINEAR,
                                                   borderMode=cv2.BORDER_REPLICATE)
                _, affine = cv2.findTransformECC(template, level.rgb, affine.astype(np.float32), cv2.MOTION_AFFINE,
                                                 criteria, None, 5)
                warp = np.vstack([affine, [0.0, 0.0, 1.0]]) @ perspective
        except cv2.error as exc:
            text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            return homography, f"refinement stopped at {level.size[0]}x{level.size[1]}: {text}"
        homography = level.from_level(np.asarray(warp, dtype=np.float64))
    return homography, None


def combine(homographies: Sequence[np.ndarray], thermal_size: tuple[int, int]) -> tuple[np.ndarray, list[float]]:
    """One homography for several: the per-point median of the mapped thermal grid, then a least-squares fit to
    the grids of the pairs within AGREEMENT_PX of it. Returns it and each input's distance to the median."""
    grid = pixel_grid(thermal_size)
    mapped = np.stack([map_points(h, grid) for h in homographies])
    median = np.median(mapped, axis=0)
    distances = [float(np.linalg.norm(m - median, axis=1).mean()) for m in mapped]
    if len(homographies) == 1:
        return homographies[0], distances
    agreeing = [m for m, d in zip(mapped, distances) if d <= AGREEMENT_PX] or [median]
    source = np.tile(grid, (len(agreeing), 1))
    matrix, _ = cv2.findHomography(source, np.concatenate(agreeing), 0)
    if matrix is None:  # cannot happen with a grid of distinct points, but never return None
        matrix = homographies[int(np.argmin(distances))]
    return matrix / matrix[2, 2], distances


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
    prepared = [_PreparedPair(pair) for pair in pairs]
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


def _finish(result: CalibrationResult, homography: np.ndarray, prepared: Sequence[_PreparedPair],
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
    from .cli import collect_pairs, read_thermal, read_visible

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
                   slop_s: float = 0.05, queue_size: int = 10, thermal_offset_s: float = 0.0) -> list[ImagePair]:
    """At most `limit` pairs spread evenly over a bag, made by the node's pairing (same sync parameters). Reads
    the bag twice: stamps first, then the pixels of the chosen frames only. Raises CalibrationInputError."""
    from .bags import BagError, BagReader, deserialize, stamp_ns, topic_name
    from .ros.conversions import ImageConversionError, thermal_from_image, visible_from_image
    from .ros.pairing import ApproximateTimePairer

    try:
        rgb_topic, thermal_topic = topic_name(rgb_topic), topic_name(thermal_topic)
        pairer = ApproximateTimePairer(slop_s=slop_s, queue_size=queue_size, thermal_offset_s=thermal_offset_s)
    except ValueError as exc:
        raise CalibrationInputError(str(exc)) from None
    try:
        with BagReader(bag) as reader:
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
                        convert = visible_from_image if message.topic == rgb_topic else thermal_from_image
                        images[index] = np.array(convert(msg))
                    except ImageConversionError as exc:
                        raise CalibrationInputError(f"{bag}, {message.topic}: {exc}") from None
    except BagError as exc:
        raise CalibrationInputError(str(exc)) from None
    return [ImagePair(_stamp_text(stamp), images[thermal], images[rgb]) for rgb, thermal, stamp in chosen]


def _stamp_text(stamp: int) -> str:
    return f"{stamp // 1_000_000_000}.{stamp % 1_000_000_000:09d}"


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
        shrink = _scaling(panel_size[0] / width, panel_size[1] / height)
        grey = cv2.resize(cv2.cvtColor(np.ascontiguousarray(pair.rgb), cv2.COLOR_RGB2GRAY), panel_size,
                          interpolation=cv2.INTER_AREA)
        thermal = (_grey(pair.thermal) * 255).astype(np.uint8)
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
