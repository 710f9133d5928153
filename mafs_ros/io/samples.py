"""The bundled sample pairs (data/sample: real MSRS pairs), resized, for checks and benchmarks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..constants import SAMPLE_DIR


def sample_pairs(
    size: tuple[int, int], count: int, sample_dir: Path = SAMPLE_DIR
) -> list[tuple[np.ndarray, np.ndarray]]:
    """`count` real (RGB uint8 (H, W, 3), thermal uint8 (H, W)) pairs from the bundled sample, resized to `size`
    (H, W) and cycled when `count` exceeds the sample. Raises FileNotFoundError without sample pairs (an
    installed package has no data/sample)."""
    names = sorted(p.name for p in (sample_dir / "vi").glob("*.png"))
    if not names:
        raise FileNotFoundError(f"no sample pairs in {sample_dir}/vi")
    pairs = []
    for index in range(count):
        name = names[index % len(names)]
        rgb = cv2.cvtColor(cv2.imread(str(sample_dir / "vi" / name), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        thermal = cv2.imread(str(sample_dir / "ir" / name), cv2.IMREAD_GRAYSCALE)
        size_wh = (size[1], size[0])
        pairs.append((cv2.resize(rgb, size_wh, interpolation=cv2.INTER_AREA), cv2.resize(thermal, size_wh)))
    return pairs


def sample_count(sample_dir: Path = SAMPLE_DIR) -> int:
    """How many sample pairs there are (0 in an installed package, which has no data/sample)."""
    return len(list((sample_dir / "vi").glob("*.png")))
