"""Thermal -> RGB registration by edges: the estimation behind `mafs calibrate` (see calibrate.py for the
workflow: inputs, manual points, judging the result, outputs).

The homography maps thermal pixels to RGB pixels of the images as the cameras deliver them, whatever their
sizes (e.g. 640x512 thermal, 1280x720 RGB), exactly as the node and `mafs replay` apply it.

Thermal and visible intensities do not correspond, but their edges do, so both images are compared as
edge-strength images (gradient magnitude of the smoothed image, compressed so that a few strong edges do not
dominate) by their correlation over the overlap (the "score", -1..1).

1. Start (`start_homography`): the thermal image scaled uniformly (geometric mean of the width and height
   ratios) onto the RGB image, centre on centre: the identity for same-sized cameras.
2. Coarse search (`coarse_search`) at COARSE_WIDTH: every scale of SCALES and rotation of ANGLES_DEG about the
   image centre, each with every shift up to SEARCH_MARGIN of the image (masked normalised cross-correlation,
   `cv2.matchTemplate`), the correlation maps summed over all pairs: one answer for the set.
3. Refinement per pair (`refine`): enhanced correlation (`cv2.findTransformECC`) on a pyramid from COARSE_WIDTH,
   doubling, up to FINE_WIDTH (the RGB width when smaller); affine on the coarser levels, full homography on the
   finest.
4. The pairs' homographies are combined (`combine`) by the per-point median of a grid of mapped thermal pixels;
   pairs that disagree with it by more than AGREEMENT_PX are left out, and a least-squares fit to the grid of the
   rest is the result.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

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
AGREEMENT_PX = 4.0  # pairs whose homography is farther than this from the median (grid mean, RGB pixels) are dropped


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


def scaling(sx: float, sy: float) -> np.ndarray:
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


def grey_image(image: np.ndarray) -> np.ndarray:
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
        self.thermal_scale = scaling(size[0] / thermal_grey.shape[1], size[1] / thermal_grey.shape[0])
        self.rgb_scale = scaling(size[0] / rgb_grey.shape[1], size[1] / rgb_grey.shape[0])

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


class PreparedPair:
    """A named thermal (H, W) / RGB (H, W, 3) pair as grey images and its pyramid levels, coarse to fine."""

    def __init__(self, name: str, thermal: np.ndarray, rgb: np.ndarray) -> None:
        self.name = name
        thermal_grey, rgb_grey = grey_image(thermal), grey_image(rgb)
        self.thermal_size = (thermal.shape[1], thermal.shape[0])
        self.rgb_size = (rgb.shape[1], rgb.shape[0])
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


def coarse_search(pairs: Sequence[PreparedPair], start: np.ndarray) -> np.ndarray:
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


def refine(pair: PreparedPair, homography: np.ndarray) -> tuple[np.ndarray, str | None]:
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
