"""Small real image pairs and bag helpers shared by test_bags.py and test_replay.py."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mafs_ros.bags import BagReader, deserialize
from mafs_ros.io.images import load_pair
from mafs_ros.io.layouts import discover_pairs

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
SIZE = (160, 120)  # (W, H): small, so that the stand-in network and the metrics are fast


@functools.cache
def small_pairs() -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray | None], ...]:
    """The 6 MSRS sample pairs resized to 120x160: (rgb uint8, thermal uint8, label uint8 or None)."""
    pairs = []
    for files in discover_pairs(SAMPLE, layout="pairs"):
        rgb, thermal, label = load_pair(files)
        pairs.append((
            cv2.resize(rgb, SIZE, interpolation=cv2.INTER_AREA),
            cv2.resize(thermal, SIZE, interpolation=cv2.INTER_AREA),
            None if label is None else cv2.resize(label.astype(np.uint8), SIZE, interpolation=cv2.INTER_NEAREST),
        ))
    return tuple(pairs)


def read_topics(path: str | Path, topics: Sequence[str]) -> dict[str, list[tuple[int, Any]]]:
    """topic -> [(receive ns, message)] in receive order."""
    out: dict[str, list[tuple[int, Any]]] = {topic: [] for topic in topics}
    with BagReader(path) as reader:
        for message in reader.messages(list(topics)):
            out[message.topic].append((message.receive_ns, deserialize(message)))
    return out
