"""Input frames as the node and the replay hold them while pairing: the message and its pixels, decoded once.

Both decode a frame before pairing and never pair one they refuse, so a bad frame is counted on its own topic
and cannot take a partner away from a good one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .compressed import decode_compressed, is_compressed
from .conversions import ImageConversionError, thermal_with_repairs, visible_from_image


@dataclass
class InputFrame:
    """An input image message and its decoded pixels (a view of the message buffer where possible)."""

    msg: Any
    image: np.ndarray  # visible: (H, W, 3) uint8 RGB; thermal: (H, W) uint8 | uint16 | float32
    receive_ns: int  # when it arrived: the node's monotonic clock, or the bag's receive time in a replay
    callback_ms: float = 0.0  # live only: the frame's subscription callback (decoding and pairing)


def decode_input(msg: Any, visible: bool) -> tuple[np.ndarray, int]:
    """The pixels of an RGB (`visible`) or thermal message, an Image or a CompressedImage, and how many
    non-finite thermal pixels were replaced. Raises conversions.ImageConversionError for a frame that cannot be
    fused."""
    if not is_compressed(msg):
        return (visible_from_image(msg), 0) if visible else thermal_with_repairs(msg)
    pixels = decode_compressed(msg)
    if visible and pixels.ndim == 2 and pixels.dtype == np.uint8:
        return np.repeat(pixels[:, :, None], 3, axis=2), 0
    if visible and pixels.ndim == 3 or not visible and pixels.ndim == 2:
        return pixels, 0
    wanted = "8-bit colour or mono" if visible else "one channel (mono8 or mono16)"
    raise ImageConversionError("unsupported_encoding", f"cannot use CompressedImage (format {msg.format!r}) as "
                               f"{'RGB' if visible else 'thermal'}: {pixels.shape} {pixels.dtype} pixels, "
                               f"{wanted} expected")
