"""mafs_ros.stream.conversions: sensor_msgs/Image <-> numpy without cv_bridge.

Messages are built here byte by byte (independently of `numpy_to_image`) in three flavours: real rclpy
`sensor_msgs.msg.Image` (data is array.array('B')), a rosbags-like stand-in whose data is a numpy uint8 array,
and a stand-in whose data is bytes.
"""

import array
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from mafs_ros.stream.conversions import (
    MAX_PIXELS,
    THERMAL_ENCODINGS,
    VISIBLE_ENCODINGS,
    ImageConversionError,
    image_to_numpy,
    numpy_to_image,
    thermal_from_image,
    visible_from_image,
)

# encoding -> (dtype, channels), written out here so that the tests do not trust the module's table.
LAYOUTS = {
    "rgb8": (np.uint8, 3),
    "bgr8": (np.uint8, 3),
    "rgba8": (np.uint8, 4),
    "bgra8": (np.uint8, 4),
    "mono8": (np.uint8, 1),
    "8UC1": (np.uint8, 1),
    "mono16": (np.uint16, 1),
    "16UC1": (np.uint16, 1),
    "32FC1": (np.float32, 1),
}
ALL_ENCODINGS = tuple(LAYOUTS)
PAD_BYTE = 0xAB  # padding filler: a value that would show up if padding leaked into the pixels
FLAVOURS = ("rclpy", "numpy", "bytes")


def _pixels(encoding: str, height: int = 5, width: int = 4, seed: int = 0) -> np.ndarray:
    dtype, channels = LAYOUTS[encoding]
    rng = np.random.default_rng(seed)
    shape = (height, width) if channels == 1 else (height, width, channels)
    if dtype == np.float32:
        return rng.uniform(-40.0, 120.0, shape).astype(np.float32)
    # Full range, so that a 16-bit rescale or an 8-bit truncation would show.
    return rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)


def _raw(pixels: np.ndarray, pad: int = 0, bigendian: bool = False) -> tuple[bytes, int]:
    """Wire bytes of `pixels` with `pad` filler bytes after each row; returns (data, step)."""
    wire = pixels.astype(pixels.dtype.newbyteorder(">" if bigendian else "<"))
    rows = [wire[r].tobytes() + bytes([PAD_BYTE]) * pad for r in range(pixels.shape[0])]
    return b"".join(rows), len(rows[0])


def _message(flavour: str, encoding: str, height: int, width: int, step: int, data: bytes, bigendian: bool = False):
    fields = dict(height=height, width=width, encoding=encoding, is_bigendian=int(bigendian), step=step)
    if flavour == "rclpy":
        return Image(header=Header(frame_id="cam"), data=array.array("B", data), **fields)
    if flavour == "numpy":
        # rosbags deserialises into writable numpy arrays
        return SimpleNamespace(header=None, data=np.frombuffer(data, dtype=np.uint8).copy(), **fields)
    return SimpleNamespace(header=None, data=bytes(data), **fields)


def _message_of(flavour: str, encoding: str, pixels: np.ndarray, pad: int = 0, bigendian: bool = False):
    data, step = _raw(pixels, pad, bigendian)
    return _message(flavour, encoding, pixels.shape[0], pixels.shape[1], step, data, bigendian)


def _cv_bridge_passthrough(msg) -> np.ndarray:
    """cv_bridge's imgmsg_to_cv2(msg, "passthrough") (cv_bridge/core.py), transcribed for numpy 2.

    cv_bridge computes the row length as step / itemsize / channels, so it is only right for a step that is a
    multiple of the pixel size; it is the reference for those.
    """
    dtype, channels = LAYOUTS[msg.encoding]
    dtype = np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<")
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if channels == 1:
        im = np.ndarray(shape=(msg.height, int(msg.step / dtype.itemsize)), dtype=dtype, buffer=buf)
        im = np.ascontiguousarray(im[: msg.height, : msg.width])
    else:
        im = np.ndarray(
            shape=(msg.height, int(msg.step / dtype.itemsize / channels), channels), dtype=dtype, buffer=buf
        )
        im = np.ascontiguousarray(im[: msg.height, : msg.width, :])
    if bool(msg.is_bigendian) == (sys.byteorder == "little"):
        im = im.byteswap().view(im.dtype.newbyteorder())
    return im


# ---------------------------------------------------------------------------------------------------------
# message -> numpy


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("pad", [0, 7])
@pytest.mark.parametrize("encoding", ALL_ENCODINGS)
def test_image_to_numpy_every_encoding(encoding, pad, flavour):
    pixels = _pixels(encoding)
    out = image_to_numpy(_message_of(flavour, encoding, pixels, pad=pad))
    assert out.shape == pixels.shape
    assert out.dtype == pixels.dtype and out.dtype.isnative
    np.testing.assert_array_equal(out, pixels)


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("encoding", ALL_ENCODINGS)
def test_image_to_numpy_equals_cv_bridge(encoding, bigendian):
    pixels = _pixels(encoding, height=3, width=6, seed=1)
    pixel_bytes = pixels.itemsize * (pixels.shape[2] if pixels.ndim == 3 else 1)
    msg = _message_of("rclpy", encoding, pixels, pad=2 * pixel_bytes, bigendian=bigendian)
    expected = _cv_bridge_passthrough(msg)
    out = image_to_numpy(msg)
    assert out.dtype == expected.dtype.newbyteorder("=")
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("encoding", ["mono16", "16UC1", "32FC1"])
def test_big_endian_is_converted_to_native(encoding, flavour, pad):
    pixels = _pixels(encoding, seed=2)
    msg = _message_of(flavour, encoding, pixels, pad=pad, bigendian=True)
    out = image_to_numpy(msg)
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, pixels)
    np.testing.assert_array_equal(thermal_from_image(msg), pixels)


def test_big_endian_flag_is_ignored_for_8_bit():
    pixels = _pixels("rgb8")
    msg = _message_of("numpy", "rgb8", pixels, bigendian=True)
    np.testing.assert_array_equal(image_to_numpy(msg), pixels)


def test_mono16_keeps_full_16_bit_values():
    pixels = np.array([[0, 1, 255, 256, 65535]], dtype=np.uint16)
    out = thermal_from_image(_message_of("rclpy", "mono16", pixels))
    assert out.dtype == np.uint16
    assert out.tolist() == [[0, 1, 255, 256, 65535]]


def test_data_longer_than_step_times_height_is_ignored():
    pixels = _pixels("rgb8")
    data, step = _raw(pixels)
    msg = _message("numpy", "rgb8", 5, 4, step, data + b"\x01\x02\x03")
    np.testing.assert_array_equal(image_to_numpy(msg), pixels)


# ---------------------------------------------------------------------------------------------------------
# visible / thermal


@pytest.mark.parametrize(
    "encoding, pixel, rgb",
    [
        ("rgb8", [10, 20, 30], [10, 20, 30]),
        ("bgr8", [10, 20, 30], [30, 20, 10]),
        ("rgba8", [10, 20, 30, 40], [10, 20, 30]),
        ("bgra8", [10, 20, 30, 40], [30, 20, 10]),
        ("mono8", [77], [77, 77, 77]),
    ],
)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_visible_channel_order_known_pixel(flavour, encoding, pixel, rgb):
    # a 1x2 image: the known pixel, then a black one, so that a row/column mix-up would also show
    data = bytes(pixel) + bytes(len(pixel))
    out = visible_from_image(_message(flavour, encoding, 1, 2, 2 * len(pixel), data))
    assert out.shape == (1, 2, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == rgb
    assert out[0, 1].tolist() == [0, 0, 0]


@pytest.mark.parametrize("pad", [0, 7])
@pytest.mark.parametrize("encoding", VISIBLE_ENCODINGS)
def test_visible_from_image_whole_image(encoding, pad):
    pixels = _pixels(encoding)
    expected = {
        "rgb8": pixels,
        "bgr8": pixels[..., ::-1],
        "rgba8": pixels[..., :3],
        "bgra8": pixels[..., [2, 1, 0]],
        "mono8": np.stack([pixels] * 3, axis=-1),
    }[encoding]
    out = visible_from_image(_message_of("numpy", encoding, pixels, pad=pad))
    assert out.shape == pixels.shape[:2] + (3,)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("encoding", THERMAL_ENCODINGS)
def test_thermal_from_image_dtypes(encoding):
    pixels = _pixels(encoding)
    out = thermal_from_image(_message_of("rclpy", encoding, pixels))
    assert out.shape == pixels.shape and out.dtype == LAYOUTS[encoding][0]
    np.testing.assert_array_equal(out, pixels)


def test_thermal_non_finite_pixels_replaced_by_finite_minimum():
    pixels = np.array([[20.5, np.nan, 31.0], [np.inf, -3.25, -np.inf]], dtype=np.float32)
    msg = _message_of("numpy", "32FC1", pixels)
    out = thermal_from_image(msg)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[20.5, -3.25, 31.0], [-3.25, -3.25, -3.25]])
    # the message itself is untouched
    assert np.isnan(image_to_numpy(msg)[0, 1])


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_thermal_all_non_finite_is_rejected(value):
    msg = _message_of("rclpy", "32FC1", np.full((2, 3), value, dtype=np.float32))
    with pytest.raises(ImageConversionError) as info:
        thermal_from_image(msg)
    assert info.value.reason == "non_finite"
    assert "'32FC1'" in str(info.value)


def test_thermal_all_finite_is_returned_without_copy():
    msg = _message_of("numpy", "32FC1", _pixels("32FC1"))
    assert np.shares_memory(thermal_from_image(msg), msg.data)


# ---------------------------------------------------------------------------------------------------------
# zero copy


@pytest.mark.parametrize("pad", [0, 7])
@pytest.mark.parametrize("encoding", ALL_ENCODINGS)
def test_numpy_data_is_viewed_not_copied(encoding, pad):
    msg = _message_of("numpy", encoding, _pixels(encoding), pad=pad)
    out = image_to_numpy(msg)
    assert np.shares_memory(out, msg.data)
    assert not out.flags.writeable
    with pytest.raises(ValueError):
        out[0, 0] = 0


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_visible_reorders_channels_without_copy(encoding):
    msg = _message_of("numpy", encoding, _pixels(encoding))
    assert np.shares_memory(visible_from_image(msg), msg.data)


def test_rclpy_data_is_viewed_not_copied():
    pixels = _pixels("mono8")
    msg = _message_of("rclpy", "mono8", pixels)
    out = image_to_numpy(msg)
    msg.data[0] = (int(pixels[0, 0]) + 1) % 256
    assert out[0, 0] == (int(pixels[0, 0]) + 1) % 256


def test_big_endian_result_is_a_native_copy():
    msg = _message_of("numpy", "mono16", _pixels("mono16"), bigendian=True)
    out = image_to_numpy(msg)
    assert not np.shares_memory(out, msg.data)
    assert out.flags.writeable and out.dtype.isnative


# ---------------------------------------------------------------------------------------------------------
# numpy -> message


def _stand_in():
    """A rosbags-like message: numpy data, fields filled by numpy_to_image."""
    return SimpleNamespace(
        header=None, height=0, width=0, encoding="", is_bigendian=0, step=0, data=np.empty(0, dtype=np.uint8)
    )


@pytest.mark.parametrize("target", ["new", "strict_rclpy", "stand_in", "bytes_stand_in"])
@pytest.mark.parametrize("encoding", ALL_ENCODINGS)
def test_numpy_to_image_round_trip(encoding, target):
    pixels = _pixels(encoding, height=3, width=7)
    # check_fields=True makes rclpy assert every field's type, as with ROS_PYTHON_CHECK_FIELDS=1
    targets = {
        "new": None,
        "strict_rclpy": Image(check_fields=True),
        "stand_in": _stand_in(),
        "bytes_stand_in": SimpleNamespace(**{**vars(_stand_in()), "data": b""}),
    }
    msg = targets[target]
    out = numpy_to_image(pixels, encoding, msg=msg)
    if msg is not None:
        assert out is msg
    dtype, channels = LAYOUTS[encoding]
    assert (out.height, out.width, out.encoding) == (3, 7, encoding)
    assert out.step == 7 * channels * np.dtype(dtype).itemsize
    assert out.is_bigendian == 0
    assert len(out.data) == out.step * out.height
    if target == "stand_in":
        assert isinstance(out.data, np.ndarray) and out.data.dtype == np.uint8
        assert not np.shares_memory(out.data, pixels)
    else:
        # array.array('B') even where bytes would do: rclpy keeps it as is, but checks bytes byte by byte
        assert isinstance(out.data, array.array) and out.data.typecode == "B"
    back = image_to_numpy(out)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, pixels)


def test_numpy_to_image_header_is_set_only_when_given():
    header = Header(frame_id="thermal_optical")
    header.stamp.sec = 12
    msg = numpy_to_image(_pixels("mono8"), "mono8", header=header)
    assert msg.header.frame_id == "thermal_optical" and msg.header.stamp.sec == 12
    assert numpy_to_image(_pixels("mono8"), "mono8").header.frame_id == ""


def test_numpy_to_image_accepts_strided_and_big_endian_arrays():
    pixels = _pixels("rgb8", width=6)
    np.testing.assert_array_equal(image_to_numpy(numpy_to_image(pixels[:, ::2], "rgb8")), pixels[:, ::2])
    thermal = _pixels("mono16").astype(">u2")
    msg = numpy_to_image(thermal, "mono16")
    assert msg.is_bigendian == 0
    np.testing.assert_array_equal(image_to_numpy(msg), thermal)


def test_numpy_to_image_then_rgb_of_bgr8():
    rgb = _pixels("rgb8")
    msg = numpy_to_image(np.ascontiguousarray(rgb[..., ::-1]), "bgr8")
    np.testing.assert_array_equal(visible_from_image(msg), rgb)


@pytest.mark.parametrize(
    "array_, encoding, reason",
    [
        (np.zeros((2, 2), np.uint8), "yuv422", "unsupported_encoding"),
        (np.zeros((2, 2), np.uint8), None, "unsupported_encoding"),
        ([[0, 1], [2, 3]], "mono8", "invalid_array"),
        (np.zeros((2, 2), np.int64), "mono8", "invalid_array"),
        (np.zeros((2, 2), np.float64), "32FC1", "invalid_array"),
        (np.zeros((2, 2), np.uint8), "mono16", "invalid_array"),
        (np.zeros((2, 2, 3), np.uint8), "mono8", "invalid_array"),
        (np.zeros((2, 2), np.uint8), "rgb8", "invalid_array"),
        (np.zeros((2, 2, 4), np.uint8), "rgb8", "invalid_array"),
        (np.zeros((0, 4), np.uint8), "mono8", "empty_image"),
        (np.zeros((4, 0, 3), np.uint8), "rgb8", "empty_image"),
        # a broadcast view: the size check must come before anything allocates 64 MiB
        (np.broadcast_to(np.uint8(0), (8193, 8192)), "mono8", "too_large"),
    ],
)
def test_numpy_to_image_errors(array_, encoding, reason):
    with pytest.raises(ImageConversionError) as info:
        numpy_to_image(array_, encoding, msg=_stand_in())
    assert info.value.reason == reason
    assert repr(encoding) in str(info.value)


# ---------------------------------------------------------------------------------------------------------
# malformed messages


def _valid_fields(encoding: str = "mono16") -> dict:
    pixels = _pixels(encoding, height=3, width=4)
    data, step = _raw(pixels)
    return dict(header=None, height=3, width=4, encoding=encoding, is_bigendian=0, step=step, data=data)


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"encoding": "yuv422"}, "unsupported_encoding"),
        ({"encoding": "MONO16"}, "unsupported_encoding"),
        ({"encoding": b"mono16"}, "unsupported_encoding"),
        ({"encoding": ["mono16"]}, "unsupported_encoding"),
        ({"encoding": None}, "unsupported_encoding"),
        ({"height": 0}, "empty_image"),
        ({"width": 0}, "empty_image"),
        ({"height": 8193, "width": 8192, "step": 16384}, "too_large"),
        ({"height": MAX_PIXELS + 1, "width": 1, "step": 2}, "too_large"),
        ({"step": 7}, "step_too_small"),
        ({"step": 0}, "step_too_small"),
        ({"data": bytes(3 * 8 - 1)}, "data_too_short"),
        ({"data": b""}, "data_too_short"),
        ({"step": 9}, "data_too_short"),  # padding declared that the data does not hold
        ({"height": 3.0}, "invalid_field"),
        ({"width": "4"}, "invalid_field"),
        ({"step": None}, "invalid_field"),
        ({"height": -3}, "invalid_field"),
        ({"is_bigendian": -1}, "invalid_field"),
        ({"is_bigendian": "yes"}, "invalid_field"),
        ({"data": list(range(24))}, "invalid_data"),
        ({"data": "x" * 24}, "invalid_data"),
        ({"data": None}, "invalid_data"),
        ({"data": array.array("H", range(12))}, "invalid_data"),
        ({"data": np.zeros(12, np.uint16)}, "invalid_data"),
        ({"data": np.zeros(48, np.uint8)[::2]}, "invalid_data"),  # not contiguous
    ],
)
def test_malformed_message_errors(changes, reason):
    msg = SimpleNamespace(**{**_valid_fields(), **changes})
    with pytest.raises(ImageConversionError) as info:
        image_to_numpy(msg)
    assert info.value.reason == reason
    assert isinstance(info.value, ValueError)
    text = str(info.value)
    assert repr(msg.encoding) in text
    for name in ("width=", "height=", "step=", "len(data)="):
        assert name in text


def test_missing_field_is_an_invalid_field():
    fields = _valid_fields()
    del fields["step"]
    with pytest.raises(ImageConversionError) as info:
        image_to_numpy(SimpleNamespace(**fields))
    assert info.value.reason == "invalid_field"
    assert "step" in str(info.value)


def test_numpy_integer_fields_are_accepted():
    fields = _valid_fields()
    fields.update(height=np.uint32(3), width=np.int64(4), step=np.uint32(fields["step"]))
    assert image_to_numpy(SimpleNamespace(**fields)).shape == (3, 4)


@pytest.mark.parametrize("flavour", ["rclpy", "numpy"])
def test_errors_name_the_message_sizes(flavour):
    msg = _message(flavour, "rgb8", height=2, width=3, step=9, data=bytes(17))
    with pytest.raises(ImageConversionError) as info:
        image_to_numpy(msg)
    assert info.value.reason == "data_too_short"
    text = str(info.value)
    assert "'rgb8'" in text and "width=3" in text and "height=2" in text and "step=9" in text
    assert "len(data)=17" in text and "18" in text


@pytest.mark.parametrize(
    "convert, encoding",
    [
        (visible_from_image, "mono16"),
        (visible_from_image, "8UC1"),
        (visible_from_image, "32FC1"),
        (thermal_from_image, "rgb8"),
        (thermal_from_image, "bgra8"),
    ],
)
def test_wrong_encoding_for_the_stream(convert, encoding):
    msg = _message_of("rclpy", encoding, _pixels(encoding))
    with pytest.raises(ImageConversionError) as info:
        convert(msg)
    assert info.value.reason == "unsupported_encoding"
    assert repr(encoding) in str(info.value)


# ---------------------------------------------------------------------------------------------------------
# imports


def test_module_imports_neither_rclpy_nor_torch():
    code = (
        "import sys, mafs_ros.stream.conversions; "
        "bad = [m for m in ('rclpy', 'torch', 'sensor_msgs') if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
