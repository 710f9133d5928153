"""Frames lost before the node saw them, estimated from the gaps between header stamps (pure Python).

A camera stamps its frames about one period apart; a stamp step of k periods means k - 1 frames went missing on
the way (DDS dropped them) or were never sent. The period is estimated from the recent steps themselves: the
mean of the steps near the shortest ones (below 1.5 x their 10th percentile), which stays right while most
frames are lost, as long as one step in ten is a single period.

Limits: a step longer than PAUSE_PERIODS periods (and PAUSE_MIN_S) is a pause of the camera (unplugged, triggered
source), not counted as lost frames; a stamp that does not increase is ignored (the pairer counts it).
"""

from __future__ import annotations

import threading
from collections import deque

STEP_WINDOW = 200  # recent stamp steps the period is estimated from
MIN_STEPS = 4  # steps needed before gaps are counted (earlier steps are counted once the period is known)
LOSS_WINDOW = 200  # recent frames (received + missed) the loss percentage is computed over
PAUSE_PERIODS = 10
PAUSE_MIN_S = 1.0


class FrameLossEstimator:
    """Counts the frames missing from one stream, from its header stamps; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ns: int | None = None
        self._steps: deque[int] = deque(maxlen=STEP_WINDOW)
        self._uncounted: list[int] = []  # steps seen before the period could be estimated
        self._recent: deque[int] = deque(maxlen=LOSS_WINDOW)  # per received frame: frames missed just before it
        self.missed = 0
        self.pauses = 0

    def add(self, stamp_ns: int) -> None:
        with self._lock:
            last, self._last_ns = self._last_ns, stamp_ns if self._last_ns is None else max(self._last_ns, stamp_ns)
            if last is None or stamp_ns <= last:
                return
            step = stamp_ns - last
            self._steps.append(step)
            if len(self._steps) < MIN_STEPS:
                self._uncounted.append(step)
                return
            period = self._period_ns()
            for earlier in self._uncounted:
                self._count(earlier, period)
            self._uncounted.clear()
            self._count(step, period)

    def period_s(self) -> float | None:
        """The estimated frame period, or None before MIN_STEPS stamp steps."""
        with self._lock:
            return self._period_ns() / 1e9 if len(self._steps) >= MIN_STEPS else None

    def loss_percent(self) -> float:
        """Missed frames among the last LOSS_WINDOW expected ones (received + missed), percent; 0.0 before any."""
        with self._lock:
            missed = sum(self._recent)
            expected = len(self._recent) + missed
            return 100.0 * missed / expected if expected else 0.0

    def recent_frames(self) -> int:
        """Frames (received + missed) the loss percentage covers."""
        with self._lock:
            return len(self._recent) + sum(self._recent)

    def _period_ns(self) -> float:
        ordered = sorted(self._steps)
        base = ordered[len(ordered) // 10]
        singles = [s for s in ordered if s < 1.5 * base]
        return sum(singles) / len(singles)

    def _count(self, step: int, period: float) -> None:
        if step > max(PAUSE_PERIODS * period, PAUSE_MIN_S * 1e9):
            self.pauses += 1
            self._recent.append(0)
            return
        missed = max(0, round(step / period) - 1)
        self.missed += missed
        self._recent.append(missed)
