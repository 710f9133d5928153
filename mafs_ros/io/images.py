"""Image files as numpy arrays: visible (RGB uint8), thermal (its own depth), MFNet RGBT, class-id labels and
fused images (8-bit grey for the fusion metrics). Every reader raises ValueError naming the file it cannot use."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..class_sets import IGNORE_LABEL
from ..errors import DataError
from ..metrics import luma_u8
from .layouts import PairFiles


def read_visible(path: Path) -> np.ndarray:
    """A visible image file as (H, W, 3) uint8 RGB (grey files are expanded, 16-bit reduced to 8)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"cannot read image file {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_thermal(path: Path) -> np.ndarray:
    """A thermal image file unchanged in depth (8/16-bit, float TIFF) as (H, W); from a colour file the
    first (red) channel is kept, as the official code keeps the first channel of its RGB tensor."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError(f"cannot read image file {path}")
    if image.ndim == 3:
        image = image[:, :, 2] if image.shape[2] in (3, 4) else image[:, :, 0]  # OpenCV stores BGR(A)
    return image


def read_rgbt(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """An MFNet 4-channel PNG (channels R, G, B, thermal) as ((H, W, 3) uint8 RGB, (H, W) thermal).

    The thermal keeps its depth (uint8 or uint16); 16-bit colour is reduced to 8 bits as `read_visible` does.
    """
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError(f"cannot read image file {path}")
    if image.ndim != 3 or image.shape[2] != 4:
        raise DataError(f"{path}: expected a 4-channel RGBT image, got shape {image.shape}")
    rgb = image[:, :, 2::-1]  # OpenCV stores B, G, R, A: file channels 2, 1, 0 are R, G, B
    if rgb.dtype == np.uint16:
        rgb = (rgb >> 8).astype(np.uint8)
    return np.ascontiguousarray(rgb), np.ascontiguousarray(image[:, :, 3])


def read_label(path: Path, num_classes: int) -> np.ndarray:
    """A class-id label file as (H, W) int64; ids must be < num_classes or IGNORE_LABEL (255).

    A 3-channel file is accepted only if its channels are equal (a grey image saved as colour); a colour-coded
    label is refused rather than misread.
    """
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError(f"cannot read label file {path}")
    if image.ndim == 3:
        if not all(np.array_equal(image[:, :, 0], image[:, :, c]) for c in range(1, image.shape[2])):
            raise DataError(f"{path}: a colour label; expected single-channel class ids")
        image = image[:, :, 0]
    if image.dtype not in (np.uint8, np.uint16):
        raise DataError(f"{path}: label dtype must be uint8 or uint16, got {image.dtype}")
    bad = (image >= num_classes) & (image != IGNORE_LABEL)
    if bad.any():
        values = sorted(np.unique(image[bad]).tolist())[:10]
        raise DataError(f"{path}: class ids {values} outside 0..{num_classes - 1} (and not {IGNORE_LABEL})")
    return image.astype(np.int64)


def read_fused_luma(path: Path) -> np.ndarray:
    """A fused image file as 8-bit grey: grey files as they are, colour ones as `luma_u8` of their RGB."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError(f"cannot read image file {path}")
    if image.dtype != np.uint8:
        raise DataError(f"fused image {path} is {image.dtype}; the metrics need 8-bit images")
    if image.ndim == 2:
        return image
    if image.shape[2] == 3:
        return luma_u8(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    if image.shape[2] == 4:
        return luma_u8(cv2.cvtColor(image, cv2.COLOR_BGRA2RGB))
    raise DataError(f"fused image {path} has {image.shape[2]} channels; expected grey or RGB")


def load_pair(
    pair: PairFiles, num_classes: int = IGNORE_LABEL
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The raw images and label of a pair, checked to share one size.

    Returns rgb (H, W, 3) uint8, thermal (H, W) in its file's depth (uint8, uint16 or float; not normalised),
    and label (H, W) int64 (`read_label`, ids < num_classes or 255; the default bounds nothing) or None.
    Raises ValueError for an unreadable file or differing sizes.
    """
    if pair.rgbt is not None:
        rgb, thermal = read_rgbt(pair.rgbt)
    else:
        rgb, thermal = read_visible(pair.vi), read_thermal(pair.ir)
    if thermal.shape != rgb.shape[:2]:
        raise DataError(f"infrared {thermal.shape} and visible {rgb.shape[:2]} images differ in size")
    label = None if pair.label is None else read_label(pair.label, num_classes)
    if label is not None and label.shape != rgb.shape[:2]:
        raise DataError(f"label {label.shape} and images {rgb.shape[:2]} differ in size")
    return rgb, thermal, label
