"""The node's result messages, segmentation/info and mafs/result, built one way for the live node and replay.

No rclpy here: the caller passes the message class, rclpy's (the node) or the rosbags type store's (replay).
Both take every field as a keyword argument; the values given suit both (a numpy palette, float timings).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..class_sets import IGNORE_LABEL

# The stages of an engine result's `timings`, which are also the timing fields of FusedSegmentation.
TIMING_FIELDS = ("preprocess_ms", "inference_ms", "postprocess_ms")


def info_message(info_type: type, header: Any, engine: Any) -> Any:
    """SegmentationInfo for `engine`: model id (checkpoint file name), configuration, class names, palette."""
    path = getattr(engine, "checkpoint_path", None)
    return info_type(
        header=header,
        model_id=path.name if path is not None else "in-memory model",
        model_config=engine.config.name,
        class_names=list(engine.class_names),
        palette=np.asarray(engine.palette, dtype=np.uint8).reshape(-1),
        ignore_id=IGNORE_LABEL,
    )


def result_message(result_type: type, header: Any, *, fused: Any, labels: Any, confidence: Any,
                   thermal_stamp: Any, timings: Mapping[str, float], rgb_stamp: Any = None,
                   missing_input: str = "") -> Any:
    """FusedSegmentation of one pair: the RGB input's header (also `rgb_stamp` unless given), the output images
    (an empty Image as `confidence` when it is off), the thermal input's stamp and the engine's stage timings.
    One camera alone: `missing_input` names the other, whose stamp is given as a zero time."""
    return result_type(
        header=header,
        fused=fused,
        labels=labels,
        confidence=confidence,
        rgb_stamp=header.stamp if rgb_stamp is None else rgb_stamp,
        thermal_stamp=thermal_stamp,
        **{name: float(timings.get(name, 0.0)) for name in TIMING_FIELDS},
        missing_input=missing_input,
    )


def result_timings(result: Any) -> dict[str, float]:
    """The stage timings of a received FusedSegmentation, as an engine result's `timings`."""
    return {name: float(getattr(result, name)) for name in TIMING_FIELDS}
