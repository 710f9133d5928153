"""The per-pair step of the node, `mafs replay` and the recording report: register the thermal image into the RGB
camera, check the sizes, run the engine. One function, so that "replay behaves like the live node" holds by
construction. Also the node's step for one camera alone (the other one down). The engine is passed in (anything
with MafsEngine's `infer`): this module needs no torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .registration import register_pair


@dataclass
class ProcessedPair:
    """result: the engine's FusionResult, or None when `process_pair` was asked to register only. thermal: the
    thermal image as fused, in the RGB camera's pixels (what fusion metrics compare with). registration_ms: the
    time the registration took (the node counts it as its own overhead)."""

    result: Any
    thermal: np.ndarray
    registration_ms: float


def process_pair(engine: Any, rgb: np.ndarray, thermal: np.ndarray, homography: np.ndarray | None,
                 **infer_options: Any) -> ProcessedPair:
    """Register `thermal` into `rgb`'s camera with `homography` (`register_pair`: SizeMismatchError when the
    sizes differ) and fuse the pair with `engine.infer(rgb, thermal, **infer_options)`; engine None registers
    only (the recording report, which scores results the node already made)."""
    start = time.perf_counter()
    registered = register_pair(rgb, thermal, homography)
    registration_ms = (time.perf_counter() - start) * 1e3
    result = engine.infer(rgb, registered, **infer_options) if engine is not None else None
    return ProcessedPair(result, registered, registration_ms)


def process_alone(engine: Any, image: np.ndarray, camera: str, **infer_options: Any) -> ProcessedPair:
    """Fuse one camera's frame alone (`camera` "rgb" or "thermal"), the other camera's image blank: zeros, a dark
    or failed camera, as the model was trained with modality dropout. The result is in this frame's pixels."""
    height, width = image.shape[:2]
    if camera == "rgb":
        rgb, thermal = image, np.zeros((height, width), np.uint8)
    else:
        rgb, thermal = np.zeros((height, width, 3), np.uint8), image
    return ProcessedPair(engine.infer(rgb, thermal, **infer_options), thermal, 0.0)
