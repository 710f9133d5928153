"""Camera-like bags from real image pairs (`write_pairs_bag`), for tests, demos and calibration examples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import (
    COMPRESSED_IMAGE_TYPE,
    GROUND_TRUTH_TOPIC,
    IMAGE_TYPE,
    RGB_TOPIC,
    THERMAL_TOPIC,
    absolute_topic,
    compressed_topic,
)
from .message_types import camera_info_message, compressed_image_message, image_message, make_header, topic_name
from .writer import BagWriter, qos_profile


@dataclass(frozen=True)
class WrittenBag:
    """What `write_pairs_bag` wrote: the bag and the header stamps (ns) per stream, in order."""

    path: Path
    rgb_stamps_ns: list[int]
    thermal_stamps_ns: list[int]
    label_stamps_ns: list[int]


THERMAL_BAG_ENCODINGS = ("mono8", "8UC1", "mono16", "16UC1")
# How a stream may be written: raw (sensor_msgs/Image) or as image_transport's compressed plugin writes it.
RGB_COMPRESSIONS = ("raw", "jpeg", "png")
THERMAL_COMPRESSIONS = ("raw", "png")


def write_pairs_bag(
    path: str | Path,
    pairs: str | Path | Sequence[tuple[np.ndarray, ...]],
    *,
    rgb_topic: str = absolute_topic(RGB_TOPIC),
    thermal_topic: str = absolute_topic(THERMAL_TOPIC),
    labels_topic: str | None = absolute_topic(GROUND_TRUTH_TOPIC),
    camera_info_topic: str | None = None,
    rate_hz: float = 10.0,
    thermal_offset_s: float = 0.0,
    jitter_s: float = 0.0,
    seed: int = 0,
    storage: str = "mcap",
    thermal_encoding: str = "mono8",
    repeat: int = 1,
    start_ns: int = 1_700_000_000 * 1_000_000_000,
    transport_delay_s: float = 0.005,
    rgb_compression: str = "raw",
    thermal_compression: str = "raw",
    jpeg_quality: int = 90,
) -> WrittenBag:
    """Write a rosbag2 that looks like a recording of an RGB and a thermal camera, from real image pairs.

    pairs: a folder with ir/ and vi/ (label/ optional) paired by file stem, or a sequence of (rgb, thermal) or
        (rgb, thermal, label or None) arrays: rgb (H, W, 3) uint8 RGB, thermal (H, W) uint8 or uint16, label
        (H, W) integer class ids. Each pair becomes frame i (pairs in order, `repeat` times over).
    Stamps: RGB frame i at start_ns + i / rate_hz. Thermal frame i at that stamp minus `thermal_offset_s` plus
        a uniform jitter in [-jitter_s, jitter_s] (numpy generator `seed`): a thermal camera whose stamps lag by
        `thermal_offset_s`, which the pairer's thermal_offset_s of the same value corrects. Labels and camera
        info carry the RGB stamp. Every message is received (bag time) `transport_delay_s` after its stamp and
        the bag is written in receive order.
    RGB is written as rgb8; thermal as `thermal_encoding` (mono8/8UC1 need 8-bit thermal; mono16/16UC1 scale
    8-bit thermal by 257, i.e. to the full 16-bit range); labels as mono8 on `labels_topic` (only for pairs with
    a label); camera info (size only) on `camera_info_topic` if given. `rgb_compression` "jpeg" or "png" and
    `thermal_compression` "png" write that stream as a robot records it: a sensor_msgs/CompressedImage on
    `<topic>/compressed` (`jpeg_quality`; a 16-bit thermal PNG keeps its 16 bits).
    Raises ValueError for bad arguments or images, BagError if `path` exists.
    """
    _check_options(thermal_encoding, rgb_compression, thermal_compression, rate_hz, repeat, jitter_s)
    frames = _load_pairs(pairs)
    rng = np.random.default_rng(seed)
    delay_ns = round(transport_delay_s * 1e9)
    rgb_topic, thermal_topic = topic_name(rgb_topic), topic_name(thermal_topic)
    rgb_stream = _Stream(rgb_topic, rgb_compression, jpeg_quality)
    thermal_stream = _Stream(thermal_topic, thermal_compression, jpeg_quality)

    # (receive ns, order, topic, message): sorting gives receive order, ties in the order written here.
    queue: list[tuple[int, int, str, Any]] = []
    written = WrittenBag(Path(path), [], [], [])
    for i in range(len(frames) * repeat):
        rgb, thermal, label = frames[i % len(frames)]
        rgb_stamp = start_ns + round(i * 1e9 / rate_hz)
        thermal_stamp = rgb_stamp - round(thermal_offset_s * 1e9) + round(rng.uniform(-jitter_s, jitter_s) * 1e9)
        messages = []
        if camera_info_topic is not None:  # before its image, so that a consumer has it when the image comes
            messages.append((rgb_stamp, topic_name(camera_info_topic),
                             camera_info_message(*rgb.shape[:2], make_header(rgb_stamp, "rgb_camera"))))
        messages += [
            (rgb_stamp, rgb_stream.topic, rgb_stream.message(rgb, "rgb8", make_header(rgb_stamp, "rgb_camera"))),
            (thermal_stamp, thermal_stream.topic,
             thermal_stream.message(_thermal_array(thermal, thermal_encoding), thermal_encoding,
                                    make_header(thermal_stamp, "thermal_camera"))),
        ]
        written.rgb_stamps_ns.append(rgb_stamp)
        written.thermal_stamps_ns.append(thermal_stamp)
        if label is not None and labels_topic is not None:
            messages.append((rgb_stamp, topic_name(labels_topic),
                             image_message(_label_array(label), "mono8", make_header(rgb_stamp, "rgb_camera"))))
            written.label_stamps_ns.append(rgb_stamp)
        for stamp, topic, msg in messages:
            queue.append((stamp + delay_ns, len(queue), topic, msg))

    with BagWriter(path, storage=storage) as writer:
        # Camera topics are best effort, as camera drivers usually offer them.
        for stream in (rgb_stream, thermal_stream):
            writer.add_topic(stream.topic, stream.msgtype, [qos_profile(reliable=False, depth=5)])
        for receive_ns, _, topic, msg in sorted(queue, key=lambda entry: entry[:2]):
            writer.write(topic, receive_ns, msg)
    return written


def _check_options(thermal_encoding: str, rgb_compression: str, thermal_compression: str, rate_hz: float,
                   repeat: int, jitter_s: float) -> None:
    if thermal_encoding not in THERMAL_BAG_ENCODINGS:
        raise ValueError(f"thermal_encoding must be one of {THERMAL_BAG_ENCODINGS}, got {thermal_encoding!r}")
    if rgb_compression not in RGB_COMPRESSIONS or thermal_compression not in THERMAL_COMPRESSIONS:
        raise ValueError(f"rgb_compression must be one of {RGB_COMPRESSIONS} and thermal_compression one of "
                         f"{THERMAL_COMPRESSIONS}, got {rgb_compression!r}, {thermal_compression!r}")
    if not rate_hz > 0 or repeat < 1 or jitter_s < 0:
        raise ValueError(f"need rate_hz > 0, repeat >= 1, jitter_s >= 0 (got {rate_hz}, {repeat}, {jitter_s})")


class _Stream:
    """One camera stream of the bag: its topic, message type and how its images become messages."""

    def __init__(self, topic: str, compression: str, jpeg_quality: int) -> None:
        self.compression, self.jpeg_quality = compression, jpeg_quality
        raw = compression == "raw"
        self.topic = topic if raw else compressed_topic(topic)
        self.msgtype = IMAGE_TYPE if raw else COMPRESSED_IMAGE_TYPE

    def message(self, array: np.ndarray, encoding: str, header: Any) -> Any:
        if self.compression == "raw":
            return image_message(array, encoding, header)
        # OpenCV, which the bag reader does not need, only here.
        from ..stream.compressed import JPEG_FORMAT, encode_jpeg, encode_png

        if self.compression == "jpeg":
            return compressed_image_message(JPEG_FORMAT, encode_jpeg(array, self.jpeg_quality), header)
        fmt, data = encode_png(array)
        return compressed_image_message(fmt, data, header)


def _load_pairs(pairs: str | Path | Sequence[tuple[np.ndarray, ...]]) -> list[tuple[np.ndarray, np.ndarray, Any]]:
    """(rgb, thermal, label or None) per pair, checked for types and sizes."""
    if isinstance(pairs, (str, Path)):
        # Here, not at module level: reading image files needs OpenCV, which the bag reader does not.
        from ..io.images import load_pair
        from ..io.layouts import discover_pairs

        loaded = [load_pair(pair) for pair in discover_pairs(pairs, layout="pairs")]
    else:
        loaded = [(item[0], item[1], item[2] if len(item) > 2 else None) for item in pairs]
    if not loaded:
        raise ValueError("no image pairs to write")
    for index, (rgb, thermal, label) in enumerate(loaded):
        if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3):
            raise ValueError(f"pair {index}: rgb must be an (H, W, 3) uint8 array")
        if not (isinstance(thermal, np.ndarray) and thermal.ndim == 2 and thermal.dtype in (np.uint8, np.uint16)):
            raise ValueError(f"pair {index}: thermal must be an (H, W) uint8 or uint16 array")
        shapes = [rgb.shape[:2], thermal.shape] + ([label.shape] if label is not None else [])
        if len(set(shapes)) != 1:
            raise ValueError(f"pair {index}: sizes differ: {shapes}")
    return loaded


def _thermal_array(thermal: np.ndarray, encoding: str) -> np.ndarray:
    if encoding in ("mono8", "8UC1"):
        if thermal.dtype != np.uint8:
            raise ValueError(f"{encoding} needs 8-bit thermal images, got {thermal.dtype}")
        return thermal
    return thermal.astype(np.uint16) * 257 if thermal.dtype == np.uint8 else thermal


def _label_array(label: np.ndarray) -> np.ndarray:
    label = np.asarray(label)
    if label.min() < 0 or label.max() > 255:
        raise ValueError(f"label ids {label.min()}..{label.max()} do not fit mono8")
    return label.astype(np.uint8)
