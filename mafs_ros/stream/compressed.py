"""sensor_msgs/CompressedImage <-> numpy, as image_transport's `compressed` plugin writes them (OpenCV codecs).

Robots record cameras as `<base topic>/compressed`: JPEG for colour, PNG where the values must survive (a thermal
camera's 16-bit counts). image_transport (ROS 2) writes `format` as "<encoding>; <codec> compressed <coded
encoding>", e.g. "rgb8; jpeg compressed bgr8" or "mono16; png compressed mono16"; older drivers write the codec
alone ("jpeg"). depth_image_transport's "16UC1; compressedDepth png" puts a 12-byte header before the PNG. What
the image holds is read from the decoded image itself, so every one of these forms decodes the same way; the
`format` only decides the compressedDepth header.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from .conversions import MAX_PIXELS, ImageConversionError

_DEPTH_HEADER_BYTES = 12  # depth_image_transport's ConfigHeader: an int32 format and two float32 parameters
JPEG_FORMAT = "rgb8; jpeg compressed bgr8"


def is_compressed(msg: Any) -> bool:
    """Whether `msg` is a CompressedImage (any message with `format` and `data` but no `encoding`)."""
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def decode_compressed(msg: Any) -> np.ndarray:
    """The pixels of a CompressedImage: (H, W, 3) uint8 RGB for colour, (H, W) uint8 or uint16 for one channel
    (16-bit PNG stays 16-bit). Raises ImageConversionError ("invalid_data" for bytes that do not decode,
    "unsupported_encoding" for other layouts, "too_large")."""
    fmt = str(getattr(msg, "format", ""))
    try:
        data = np.frombuffer(getattr(msg, "data", None), dtype=np.uint8)
    except (TypeError, ValueError, BufferError):
        raise _error("invalid_data", fmt, f"data must be bytes-like, got {type(getattr(msg, 'data', None)).__name__}")
    if "compresseddepth" in fmt.lower().replace(" ", ""):
        data = data[_DEPTH_HEADER_BYTES:]
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise _error("invalid_data", fmt, f"{data.size} bytes that OpenCV cannot decode as an image")
    if image.shape[0] * image.shape[1] > MAX_PIXELS:
        raise _error("too_large", fmt, f"more than MAX_PIXELS={MAX_PIXELS} pixels")
    if image.dtype not in (np.uint8, np.uint16):
        raise _error("unsupported_encoding", fmt, f"{image.dtype} pixels (8- or 16-bit expected)")
    if image.ndim == 2:
        return image
    if image.shape[2] == 1:
        return image[:, :, 0]
    if image.dtype != np.uint8:
        raise _error("unsupported_encoding", fmt, "16-bit colour (8-bit colour or 16-bit mono expected)")
    # OpenCV decodes colour as BGR(A) whatever the format says.
    return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    """(H, W, 3) uint8 RGB as JPEG bytes at `quality` (1-100), the data of a CompressedImage of JPEG_FORMAT."""
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ImageConversionError("invalid_array", f"OpenCV could not encode a {rgb.shape} image as JPEG")
    return encoded.tobytes()


def encode_png(image: np.ndarray) -> tuple[str, bytes]:
    """A (H, W) uint8 / uint16 or (H, W, 3) uint8 RGB image as PNG: the CompressedImage's format and data."""
    if image.ndim == 3:
        encoding, coded, pixels = "rgb8", "bgr8", cv2.cvtColor(image, cv2.COLOR_RGB2BGR)  # OpenCV writes BGR
    else:
        encoding = coded = "mono16" if image.dtype == np.uint16 else "mono8"
        pixels = image
    ok, encoded = cv2.imencode(".png", pixels)
    if not ok:
        raise ImageConversionError("invalid_array", f"OpenCV could not encode a {image.shape} image as PNG")
    return f"{encoding}; png compressed {coded}", encoded.tobytes()


def _error(reason: str, fmt: str, detail: str) -> ImageConversionError:
    return ImageConversionError(reason, f"cannot decode CompressedImage (format {fmt!r}): {detail}")
