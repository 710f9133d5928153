"""Compressed camera streams (image_transport's `compressed` plugin) and raw 16-bit thermal, from decoding one
message to replaying a bag recorded as robots record it."""

import cv2
import numpy as np
import pytest

from mafs_ros import bags
from mafs_ros.constants import SAMPLE_DIR
from mafs_ros.io.images import load_pair
from mafs_ros.io.layouts import discover_pairs
from mafs_ros.metrics import luma_u8, mutual_information
from mafs_ros.stream.compressed import JPEG_FORMAT, decode_compressed, encode_jpeg, encode_png
from mafs_ros.stream.conversions import ImageConversionError
from mafs_ros.stream.frames import decode_input


class Compressed:
    """A CompressedImage as rclpy and rosbags give it: header, format, data."""

    def __init__(self, fmt, data):
        self.header, self.format, self.data = None, fmt, np.frombuffer(data, np.uint8)


def _rgb(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)


def test_png_keeps_rgb_and_16_bit_thermal_exactly():
    rgb = _rgb()
    fmt, data = encode_png(rgb)
    assert fmt == "rgb8; png compressed bgr8"
    np.testing.assert_array_equal(decode_input(Compressed(fmt, data), visible=True)[0], rgb)
    counts = np.random.default_rng(1).integers(7400, 8200, (24, 32)).astype(np.uint16)
    fmt, data = encode_png(counts)
    assert fmt == "mono16; png compressed mono16"
    thermal, repaired = decode_input(Compressed(fmt, data), visible=False)
    assert thermal.dtype == np.uint16 and repaired == 0
    np.testing.assert_array_equal(thermal, counts)


def test_jpeg_decodes_to_rgb_in_rgb_order():
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 200  # red: a decoder that forgot OpenCV's BGR order would give blue
    decoded = decode_input(Compressed(JPEG_FORMAT, encode_jpeg(rgb, 95)), visible=True)[0]
    assert decoded.shape == (32, 32, 3)
    assert abs(int(decoded[..., 0].mean()) - 200) <= 3 and decoded[..., 2].mean() < 5


@pytest.mark.parametrize("fmt", ["jpeg", "mono8; jpeg compressed mono8"])
def test_a_grey_jpeg_serves_as_thermal_and_as_rgb(fmt):
    grey = np.tile(np.arange(32, dtype=np.uint8) * 8, (16, 1))
    ok, data = cv2.imencode(".jpg", grey)
    thermal = decode_input(Compressed(fmt, data.tobytes()), visible=False)[0]
    assert thermal.shape == (16, 32) and np.abs(thermal.astype(int) - grey).max() <= 4
    assert decode_input(Compressed(fmt, data.tobytes()), visible=True)[0].shape == (16, 32, 3)


def test_compressed_depth_header_is_skipped():
    counts = np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 200
    _, data = encode_png(counts)
    header = np.zeros(12, np.uint8).tobytes()
    np.testing.assert_array_equal(decode_compressed(Compressed("16UC1; compressedDepth png", header + data)), counts)


@pytest.mark.parametrize("case", ["corrupt", "empty", "colour_thermal", "16_bit_rgb"])
def test_bad_compressed_frames_are_named(case):
    if case == "corrupt":
        msg, visible, reason = Compressed("jpeg", b"\xff\xd8 not a jpeg"), True, "invalid_data"
    elif case == "empty":
        msg, visible, reason = Compressed("png", b""), False, "invalid_data"
    elif case == "colour_thermal":
        msg, visible, reason = Compressed(JPEG_FORMAT, encode_jpeg(_rgb(), 90)), False, "unsupported_encoding"
    else:
        msg, visible, reason = Compressed(*encode_png(np.zeros((8, 8), np.uint16))), True, "unsupported_encoding"
    with pytest.raises(ImageConversionError) as raised:
        decode_input(msg, visible=visible)
    assert raised.value.reason == reason
    assert "CompressedImage" in str(raised.value) and repr(msg.format) in str(raised.value)


def _thermal_counts(thermal8: np.ndarray) -> np.ndarray:
    """8-bit thermal as a 14-bit camera's raw counts in a street scene (about 7400-8200)."""
    return (7400 + thermal8.astype(np.float64) * (800 / 255)).round().astype(np.uint16)


@pytest.fixture(scope="module")
def shipped_engine():
    from mafs_ros.engine import MafsEngine

    return MafsEngine(device="cpu")


def test_a_robot_bag_replays_every_pair_and_keeps_the_thermal(tmp_path, shipped_engine):
    """RGB as JPEG CompressedImage, thermal as raw 16-bit counts (raw Image, then 16-bit PNG): every pair is
    fused, and the fused luma keeps at least 0.8x the thermal information of the same pairs given as 8-bit raw
    images (the default thermal normalisation stretches the counts)."""
    from mafs_ros.replay import replay

    pairs = [load_pair(pair)[:2] for pair in discover_pairs(SAMPLE_DIR, layout="pairs")]
    thermal8 = {i: thermal for i, (_, thermal) in enumerate(pairs)}
    counts = [(rgb, _thermal_counts(thermal)) for rgb, thermal in pairs]
    variants = {
        "raw 8-bit": dict(pairs=pairs),
        "jpeg + mono16": dict(pairs=counts, rgb_compression="jpeg", thermal_encoding="mono16"),
        "jpeg + png mono16": dict(pairs=counts, rgb_compression="jpeg", thermal_encoding="mono16",
                                  thermal_compression="png"),
    }
    kept = {}
    for name, options in variants.items():
        folder = tmp_path / name.replace(" ", "_").replace("+", "")
        written = bags.write_pairs_bag(folder / "in", options.pop("pairs"), labels_topic=None, **options)
        report = replay(folder / "in", folder / "out", engine=shipped_engine, contact_sheet_count=0)
        assert report["pairs_fused"] == len(pairs), (name, report["skipped"])
        index = {stamp: i for i, stamp in enumerate(written.rgb_stamps_ns)}
        values = []
        with bags.BagReader(folder / "out" / "bag") as reader:
            for message in reader.messages(["/fused/image"]):
                msg = bags.deserialize(message)
                i = index[msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec]
                fused = decode_input(msg, visible=True)[0]
                values.append(mutual_information(thermal8[i], luma_u8(fused)))
        kept[name] = float(np.mean(values))
    print("MI(fused luma, 8-bit thermal) in nats:", kept)
    for name in ("jpeg + mono16", "jpeg + png mono16"):
        assert kept[name] >= 0.8 * kept["raw 8-bit"], kept
