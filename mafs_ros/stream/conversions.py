"""sensor_msgs/Image <-> numpy without cv_bridge (numpy only: no rclpy, no torch at import time).

Duck-typed over any message with the fields height, width, encoding, is_bigendian, step, data (and header for
`numpy_to_image`): rclpy messages (`data` is array.array('B')), rosbags messages (`data` is a numpy uint8 array)
and plain stand-ins whose `data` is bytes. Results equal cv_bridge's `imgmsg_to_cv2` for these encodings
(passthrough, or "rgb8" for `visible_from_image`); 16- and 32-bit values are never rescaled.
"""

from __future__ import annotations

import array as pyarray
import sys
from typing import Any

import numpy as np

from ..errors import MafsError

VISIBLE_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
THERMAL_ENCODINGS = ("mono8", "8UC1", "mono16", "16UC1", "32FC1")
MAX_PIXELS = 8192 * 8192

# encoding -> (element dtype in native byte order, channels)
_LAYOUTS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "8UC1": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
}
SUPPORTED_ENCODINGS = tuple(_LAYOUTS)

# Index that turns each visible encoding's channels into R, G, B (alpha dropped). Slices keep it a view.
_TO_RGB: dict[str, Any] = {
    "rgb8": np.s_[..., :3],
    "bgr8": np.s_[..., ::-1],
    "rgba8": np.s_[..., :3],
    "bgra8": np.s_[..., 2::-1],
}


class ImageConversionError(MafsError, ValueError):
    """An image message or array that cannot be converted.

    `reason` is a short machine-readable code: "unsupported_encoding", "invalid_field", "invalid_data",
    "invalid_array", "empty_image", "too_large", "step_too_small", "data_too_short" or "non_finite".
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def image_to_numpy(msg: Any) -> np.ndarray:
    """The pixels of an Image message, in the message's own dtype and channel order.

    Returns (H, W) for one-channel encodings, else (H, W, C); dtype uint8, uint16 or float32, native byte order.
    Row padding (step > width * channels * itemsize) and bytes past step * height are ignored. Without a
    byte swap the result is a read-only view of `msg.data` (zero-copy; read-only so that a consumer cannot
    silently change a message other subscribers may share); a big-endian 16/32-bit image is a native copy.
    Raises ImageConversionError for anything malformed.
    """
    encoding = getattr(msg, "encoding", None)
    if not _is_supported(encoding, SUPPORTED_ENCODINGS):
        raise _error("unsupported_encoding", msg, f"supported encodings are {', '.join(SUPPORTED_ENCODINGS)}")
    dtype, channels = _LAYOUTS[encoding]
    height, width, step, is_bigendian = (_int_field(msg, name) for name in ("height", "width", "step", "is_bigendian"))
    if height == 0 or width == 0:
        raise _error("empty_image", msg, "the image has no pixels")
    if height * width > MAX_PIXELS:
        raise _error("too_large", msg, f"more than MAX_PIXELS={MAX_PIXELS} pixels")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise _error("step_too_small", msg, f"step must be at least width*channels*itemsize = {row_bytes}")
    buf = _data_buffer(msg)
    if buf.size < step * height:
        raise _error("data_too_short", msg, f"data must hold at least step*height = {step * height} bytes")

    rows = buf[: step * height].reshape(height, step)[:, :row_bytes]
    # A nonzero is_bigendian means big-endian, as in cv_bridge; the view reads the bytes in that order.
    wire_dtype = dtype.newbyteorder(">" if is_bigendian else "<")
    pixels = rows.view(wire_dtype)
    pixels = pixels.reshape(height, width) if channels == 1 else pixels.reshape(height, width, channels)
    if not wire_dtype.isnative:
        return pixels.astype(dtype)
    pixels.flags.writeable = False
    return pixels


def visible_from_image(msg: Any) -> np.ndarray:
    """A visible image message as (H, W, 3) uint8 RGB.

    bgr/bgra channels are reordered and alpha dropped by strided views (no copy); mono8 is replicated to
    three channels (a new array). Raises ImageConversionError, reason "unsupported_encoding" for encodings
    outside VISIBLE_ENCODINGS.
    """
    _require_encoding(msg, VISIBLE_ENCODINGS)
    pixels = image_to_numpy(msg)
    if msg.encoding == "mono8":
        return np.repeat(pixels[:, :, None], 3, axis=2)
    return pixels[_TO_RGB[msg.encoding]]


def thermal_from_image(msg: Any) -> np.ndarray:
    """A thermal image message as (H, W) uint8 (mono8, 8UC1), uint16 (mono16, 16UC1) or float32 (32FC1).

    Raw values are kept (no rescaling). Non-finite 32FC1 pixels are replaced by the finite minimum, because one
    dead pixel must not cost a whole frame; a frame with no finite pixel at all raises ImageConversionError
    with reason "non_finite". `thermal_with_repairs` also says how many pixels were replaced.
    """
    return thermal_with_repairs(msg)[0]


def thermal_with_repairs(msg: Any) -> tuple[np.ndarray, int]:
    """`thermal_from_image` and the number of non-finite pixels it replaced (0 for integer encodings)."""
    _require_encoding(msg, THERMAL_ENCODINGS)
    pixels = image_to_numpy(msg)
    if pixels.dtype.kind != "f":
        return pixels, 0
    finite = np.isfinite(pixels)
    if finite.all():
        return pixels, 0
    if not finite.any():
        raise _error("non_finite", msg, "no pixel of the 32FC1 image is finite")
    return np.where(finite, pixels, pixels[finite].min()), int(finite.size - np.count_nonzero(finite))


def numpy_to_image(array: np.ndarray, encoding: str, *, header: Any = None, msg: Any = None) -> Any:
    """Fill an Image message from `array` and return the message.

    array: (H, W) for one-channel encodings or (H, W, C), with the encoding's dtype (uint8 for the 8-bit ones,
        uint16 for mono16/16UC1, float32 for 32FC1; any byte order) and already in the encoding's channel order.
    msg: the message to fill; default a new sensor_msgs.msg.Image. If `msg.data` is a numpy array (rosbags),
        data becomes a numpy uint8 array, otherwise an array.array('B') (what rclpy stores).
    Sets height, width, encoding, is_bigendian (the host's order: 0 on little-endian hosts), step (no padding)
    and data, and header when given. Raises ImageConversionError for an unsupported encoding or a wrong
    array type, shape or dtype.
    """
    if not _is_supported(encoding, SUPPORTED_ENCODINGS):
        raise ImageConversionError(
            "unsupported_encoding",
            f"cannot encode {encoding!r}: supported encodings are {', '.join(SUPPORTED_ENCODINGS)}",
        )
    dtype, channels = _LAYOUTS[encoding]
    if not isinstance(array, np.ndarray):
        raise ImageConversionError(
            "invalid_array", f"cannot encode {encoding!r}: expected a numpy array, got {type(array).__name__}"
        )
    expected_shape = "(H, W)" if channels == 1 else f"(H, W, {channels})"
    shape_ok = array.ndim == 2 if channels == 1 else array.ndim == 3 and array.shape[2] == channels
    if not shape_ok or array.dtype.newbyteorder("=") != dtype:
        raise ImageConversionError(
            "invalid_array",
            f"cannot encode {encoding!r}: expected a {expected_shape} {dtype} array, "
            f"got shape {array.shape} dtype {array.dtype}",
        )
    height, width = array.shape[:2]
    if height == 0 or width == 0:
        raise ImageConversionError("empty_image", f"cannot encode {encoding!r}: array shape {array.shape} is empty")
    if height * width > MAX_PIXELS:
        raise ImageConversionError(
            "too_large", f"cannot encode {encoding!r}: {height}x{width} is more than MAX_PIXELS={MAX_PIXELS} pixels"
        )

    if msg is None:
        from sensor_msgs.msg import Image

        msg = Image()
    # Native order, C-contiguous: then the raw memory is exactly the message bytes (step = width*C*itemsize).
    contiguous = np.ascontiguousarray(array, dtype=dtype)
    if isinstance(getattr(msg, "data", None), np.ndarray):
        msg.data = contiguous.reshape(-1).view(np.uint8).copy()
    else:
        # array.frombytes of the raw memory is one memcpy. For a 640x480x3 image it costs the same as assigning
        # bytes when rclpy does not check fields (~80 us: both are copied once more into an array.array), but
        # with ROS_PYTHON_CHECK_FIELDS=1 rclpy keeps an array.array('B') as is (~40 us) while bytes are checked
        # element by element in Python (~60 ms).
        data = pyarray.array("B")
        data.frombytes(memoryview(contiguous).cast("B"))
        msg.data = data
    if header is not None:
        msg.header = header
    msg.height = int(height)
    msg.width = int(width)
    msg.encoding = encoding
    msg.is_bigendian = int(sys.byteorder == "big")
    msg.step = int(width * channels * dtype.itemsize)
    return msg


def _require_encoding(msg: Any, allowed: tuple[str, ...]) -> None:
    if not _is_supported(getattr(msg, "encoding", None), allowed):
        raise _error("unsupported_encoding", msg, f"expected one of {', '.join(allowed)}")


def _is_supported(encoding: Any, allowed: tuple[str, ...]) -> bool:
    # The str check first: `in` on an unhashable or array-valued encoding would raise a TypeError of its own.
    return isinstance(encoding, str) and encoding in allowed


def _int_field(msg: Any, name: str) -> int:
    value = getattr(msg, name, None)
    if not isinstance(value, (int, np.integer)) or value < 0:
        raise _error("invalid_field", msg, f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _data_buffer(msg: Any) -> np.ndarray:
    """msg.data as a 1-D uint8 array sharing its memory."""
    data = getattr(msg, "data", None)
    # A wider element type would silently be reinterpreted as bytes by frombuffer.
    if (isinstance(data, np.ndarray) and data.dtype != np.uint8) or (
        isinstance(data, pyarray.array) and data.typecode != "B"
    ):
        raise _error("invalid_data", msg, "data must hold uint8 elements")
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError, BufferError) as exc:
        raise _error(
            "invalid_data", msg, f"data must be a contiguous bytes-like object, got {type(data).__name__}"
        ) from exc


def _error(reason: str, msg: Any, detail: str) -> ImageConversionError:
    data = getattr(msg, "data", None)
    try:
        data_len = str(len(data))
    except TypeError:
        data_len = f"<{type(data).__name__}>"
    fields = ", ".join(f"{name}={getattr(msg, name, None)!r}" for name in ("width", "height", "step", "is_bigendian"))
    return ImageConversionError(
        reason, f"cannot convert {getattr(msg, 'encoding', None)!r} image ({fields}, len(data)={data_len}): {detail}"
    )
