"""Thermal -> RGB registration by a 3x3 homography (no rclpy, no torch).

Shared by the node (parameter registration.homography) and `mafs replay --homography`, so that both check the
matrix the same way and fuse the same warped pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

IDENTITY_HOMOGRAPHY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def parse_homography(values: Sequence[float], name: str = "homography") -> np.ndarray | None:
    """The thermal -> RGB pixel homography from 9 row-major numbers, scaled to H[2, 2] = 1, or None for the
    identity (pre-registered cameras: no warp).

    Raises ValueError, naming the setting `name`, unless `values` are 9 finite numbers of an invertible matrix.
    """
    try:
        matrix = np.asarray(values, dtype=np.float64).reshape(3, 3)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be 9 numbers (row-major 3x3), got {values!r}") from None
    if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) < 1e-12:
        raise ValueError(f"{name} must be finite and invertible, got {matrix.tolist()}")
    matrix = matrix / matrix[2, 2] if matrix[2, 2] != 0 else matrix
    return None if np.allclose(matrix, np.eye(3)) else matrix


def warp_thermal_to_rgb(thermal: np.ndarray, homography: np.ndarray | None, size: tuple[int, int]) -> np.ndarray:
    """`thermal` (H, W) warped into an RGB image of `size` (width, height) with `homography` (thermal pixels ->
    RGB pixels): bilinear, same dtype, 0 where no thermal pixel maps. None (identity, as `parse_homography`
    gives it): `thermal` unchanged, whatever its size, so the caller's size check decides."""
    if homography is None:
        return thermal
    return cv2.warpPerspective(np.ascontiguousarray(thermal), homography, size, flags=cv2.INTER_LINEAR)
