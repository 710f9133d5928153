"""Thermal -> RGB registration by a 3x3 homography (no rclpy, no torch).

Shared by the node (parameter registration.homography), `mafs replay --homography / --homography-file` and
`mafs calibrate` (which writes the params file both read), so that all check the matrix the same way and fuse the
same warped pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ..errors import MafsError


class SizeMismatchError(MafsError, ValueError):
    """The registered thermal image and the RGB image differ in size, so the pair cannot be fused."""

    reason = "size_mismatch"  # the rejection reason the node's diagnostics and replay reports count


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


def register_pair(rgb: np.ndarray, thermal: np.ndarray, homography: np.ndarray | None) -> np.ndarray:
    """The thermal image of a pair in the RGB camera's pixels (`warp_thermal_to_rgb`), checked to be the RGB
    image's size: the one registration step of the node, `mafs replay` and the recording report. Raises
    SizeMismatchError naming both sizes."""
    height, width = rgb.shape[:2]
    registered = warp_thermal_to_rgb(thermal, homography, (width, height))
    if registered.shape[:2] != (height, width):
        raise SizeMismatchError(
            f"thermal {registered.shape[1]}x{registered.shape[0]} and RGB {width}x{height} differ; give the "
            "homography (thermal -> RGB pixels: node parameter registration.homography, mafs replay --homography "
            "or --homography-file) to register them")
    return registered


# ---------------------------------------------------------------------------------------------------------
# registration.yaml: the params file `mafs calibrate` writes, the node takes with --params-file and
# `mafs replay --homography-file` reads.

def registration_params_yaml(homography: np.ndarray, comment: str = "") -> str:
    """A ROS 2 params file setting registration.homography (for any node name: "/**") to `homography` (3x3,
    scaled to H[2, 2] = 1). `comment` lines are put on top as YAML comments."""
    matrix = np.asarray(homography, dtype=np.float64).reshape(3, 3)
    matrix = matrix / matrix[2, 2]
    rows = [", ".join(_yaml_double(v) for v in row) for row in matrix]
    head = "".join(f"# {line}\n" if line else "#\n" for line in comment.splitlines())
    return (f"{head}/**:\n  ros__parameters:\n    registration:\n      homography: [{rows[0]},\n"
            f"                   {rows[1]},\n                   {rows[2]}]\n")


def _yaml_double(value: float) -> str:
    # rcl types a params-file list by its elements and the node declares doubles, so every number must read as
    # a double: "1" would be an integer (the node refuses it), and YAML 1.1 readers such as PyYAML take "1e-05"
    # for a string. repr() round-trips; the mantissa gets a ".0" and the exponent a sign where missing.
    if not np.isfinite(value):
        raise ValueError(f"homography values must be finite, got {value!r}")
    text = repr(float(value))
    mantissa, _, exponent = text.partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    if exponent and exponent[0] not in "+-":
        exponent = "+" + exponent
    return f"{mantissa}e{exponent}" if exponent else mantissa


def read_homography_file(path: str | Path) -> list[float]:
    """registration.homography from a ROS 2 params file (the registration.yaml of `mafs calibrate`, or any params
    file of the node): 9 numbers under `<node or /**>: ros__parameters: registration: homography` (or the flat key
    `registration.homography`). Raises ValueError naming the file and the problem: unreadable, no such
    parameter, different values for different node keys, or values the node would refuse (not 9 doubles of an
    invertible matrix; an integer such as `1` instead of `1.0` is refused by rclpy's strict typing)."""
    import yaml

    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read homography file {path}: {exc}") from None
    found: dict[str, object] = {}
    for node_key, entry in (tree.items() if isinstance(tree, dict) else ()):
        params = entry.get("ros__parameters") if isinstance(entry, dict) else None
        if not isinstance(params, dict):
            continue
        nested = params.get("registration")
        if isinstance(nested, dict) and "homography" in nested:
            found[str(node_key)] = nested["homography"]
        elif "registration.homography" in params:
            found[str(node_key)] = params["registration.homography"]
    if not found:
        raise ValueError(f"no registration.homography in {path}: expected a ROS 2 params file "
                         "'/**: {ros__parameters: {registration: {homography: [9 numbers]}}}' as mafs calibrate "
                         "writes it")
    values = list(found.values())
    if any(value != values[0] for value in values[1:]):
        raise ValueError(f"{path} sets registration.homography differently for {', '.join(found)}; keep one")
    name = f"registration.homography in {path}"
    if not (isinstance(values[0], list) and all(isinstance(v, float) for v in values[0])):
        raise ValueError(f"{name} must be a list of 9 doubles (write 1.0, not 1: the node refuses integers), "
                         f"got {values[0]!r}")
    parse_homography(values[0], name)  # 9 finite numbers of an invertible matrix
    return [float(v) for v in values[0]]
