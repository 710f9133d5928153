"""Input frames as the node and the replay hold them while pairing: the message and its pixels, decoded once.

Both decode a frame before pairing and never pair one they refuse, so a bad frame is counted on its own topic
and cannot take a partner away from a good one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .conversions import thermal_with_repairs, visible_from_image


@dataclass
class InputFrame:
    """An input image message and its decoded pixels (a view of the message buffer where possible)."""

    msg: Any
    image: np.ndarray  # visible: (H, W, 3) uint8 RGB; thermal: (H, W) uint8 | uint16 | float32
    receive_ns: int  # when it arrived: the node's monotonic clock, or the bag's receive time in a replay
    callback_ms: float = 0.0  # live only: the frame's subscription callback (decoding and pairing)


def decode_input(msg: Any, visible: bool) -> tuple[np.ndarray, int]:
    """The pixels of an RGB (`visible`) or thermal image message, and how many non-finite thermal pixels were
    replaced. Raises conversions.ImageConversionError for a frame that cannot be fused."""
    return (visible_from_image(msg), 0) if visible else thermal_with_repairs(msg)
