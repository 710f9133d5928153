"""One camera down: which camera has gone silent, so that the node fuses the other one alone until both deliver
again (pure Python: no rclpy, no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CAMERAS = ("rgb", "thermal")


@dataclass
class Alone:
    """A frame to fuse without its partner: `camera` delivered it, the other camera is silent."""

    frame: Any  # frames.InputFrame
    camera: str  # "rgb" or "thermal"

    @property
    def missing(self) -> str:
        return other_camera(self.camera)


class SilenceWatch:
    """Tracks when each camera last delivered a frame (any monotonic clock, ns).

    A frame goes alone when the other camera has delivered nothing for `degraded_after_s`, counted from its last
    frame or, before its first one, from `start_ns` (the node's activation): a camera that never starts is a
    camera down too. One frame of the silent camera ends it: the next frames pair again.
    """

    def __init__(self, degraded_after_s: float, start_ns: int) -> None:
        if not degraded_after_s > 0:
            raise ValueError(f"degraded_after_s must be > 0, got {degraded_after_s!r}")
        self._after_ns = round(degraded_after_s * 1e9)
        self._last = {camera: start_ns for camera in CAMERAS}
        self._alone: str | None = None  # the camera fused alone now, if any

    def seen(self, camera: str, now_ns: int) -> tuple[bool, str | None]:
        """A frame of `camera` arrived at `now_ns`: whether it goes alone, and a line for the log when the node
        enters or leaves single-camera fusion (None otherwise)."""
        other = other_camera(camera)
        self._last[camera] = max(self._last[camera], now_ns)
        silent_ns = now_ns - self._last[other]
        state = camera if silent_ns >= self._after_ns else None
        before, self._alone = self._alone, state
        if state == before:
            return state is not None, None
        if state is not None:
            return True, f"{other} camera silent for {silent_ns / 1e9:.1f} s: fusing {camera} alone until it delivers"
        return False, f"{other_camera(before)} camera delivers again: fusing pairs"

    def silent(self, now_ns: int) -> str | None:
        """The camera silent for `degraded_after_s` while the other one delivers, or None."""
        quiet = [c for c in CAMERAS if now_ns - self._last[c] >= self._after_ns]
        return quiet[0] if len(quiet) == 1 else None


def other_camera(camera: str) -> str:
    """The other one of CAMERAS."""
    return "thermal" if camera == "rgb" else "rgb"
