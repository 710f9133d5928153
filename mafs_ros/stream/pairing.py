"""Approximate-time pairing of RGB and thermal frames by header stamp (pure Python: no rclpy, no torch).

The live node calls `add_rgb` / `add_thermal` from subscription callbacks, the offline replay calls them in bag
receive order; both use this class, so live and offline pairs agree. Items are opaque (images or messages).

Policy
------
All stamps are integer nanoseconds. A thermal stamp t is compared as t' = t + thermal_offset (a thermal camera
that stamps its frames 40 ms later than the RGB camera stamps the same instant needs thermal_offset_s = -0.04).
The skew of a pair is t' - rgb stamp: its signed mean (`skew_ms_signed_mean`, measured with offset 0 and a wide
slop) is the offset to set, negated.

- Thermal is the pivot stream (normally the slower one, e.g. 9 Hz against 30 Hz): thermal frames are decided in
  stamp order, each paired with the *nearest* available RGB frame if |skew| < slop (strictly). An RGB frame is
  available if it is unused and newer than the last paired RGB frame, so pairs never cross: emitted pairs are in
  increasing RGB and thermal stamp order. Equal distances go to the earlier RGB frame (it leaves the later one
  to the next thermal frame).
- A thermal frame is decided as soon as its choice is final: when an available RGB frame at or beyond t' is
  queued (per-stream stamps increase, so later RGB frames can only be farther; an RGB frame with exactly the
  stamp t' therefore pairs at once), or when the RGB stream has passed t' + slop. The pair is returned by the
  call that made it final.
- It is also final when the next RGB frame cannot be nearer than the nearest queued one: the RGB stream's recent
  stamp steps bound the next stamp from below (last stamp + shortest recent step - (median step - shortest
  step), a margin for jitter). This needs RGB_STEPS_FOR_PREDICTION steps and depends only on the stamps. The
  prediction only settles pairs, never gives a thermal frame up: after a run of lost RGB frames the next step can
  be shorter than every recent one, and giving up on a guess would lose a pair whose RGB frame is on its way.
- Otherwise it waits at most max_wait_s after it was received for a nearer RGB frame: a thermal frame given a
  receive time (`received_ns`) is decided with the nearest available RGB frame within slop once the pairer's
  clock reaches receive time + max_wait_s. The clock is the latest time given to add_* or `expire`, so a caller
  that passes receive times (the node: its clock at the callback; replay: the bag's receive times) gets the same
  pairs whether the deadline is noticed by `expire` (the node's deadline thread) or by the next add_*. If no RGB
  frame is within slop at the deadline, the first one that arrives within slop is taken. Frames added without
  a receive time never time out (they wait for a later RGB frame, as above).
- A frame is counted unmatched exactly once, when it is given up: an RGB frame that no pending or future
  thermal frame can reach (stamp <= oldest pending t' - slop, or <= newest t' - slop when none is pending) or
  that a pair skipped over; a thermal frame with no RGB frame within slop; the oldest frame of a queue longer
  than queue_size (evicted, also counted in `evicted_*`, after matching had its chance with the new frame).
  Apart from evictions, resets and max_wait_s deadlines, the pairs depend only on the two stamp sequences, not
  on how the streams interleave (a late thermal frame gets the same partner it would have got on time).
- A stamp more than reset_on_backwards_s older than the previous one of the same stream (bag loop, sim-time
  jump) resets: both queues are dropped (counted unmatched), `resets` += 1 and pairing restarts from that frame.
  The other stream then still delivers frames of the old timeline for a moment; until its first frame on the new
  one, those lying more than reset_on_backwards_s ahead of the stream that reset are dropped (`stale_*`, counted
  unmatched) instead of causing a second reset.
- A smaller backwards step (`stamp_backwards_*`) or a repeated stamp (`duplicates_*`) drops the frame,
  counted unmatched; the stream's last stamp is unchanged.
- `flush()` (end of stream) decides the pending thermal frames with the queued RGB frames, then gives up the
  rest. `reset()` drops both queues (counted unmatched and in `resets`) and forgets the last stamps.

Invariant: 2 * matched + unmatched_rgb + unmatched_thermal + queued == frames added.
Every call is O(queue_size) and holds one lock, so callbacks on a multi-threaded executor may call concurrently;
`stats` returns a snapshot taken under that lock (safe to read from a diagnostics timer).
"""

from __future__ import annotations

import dataclasses
import math
import operator
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..constants import MAX_WAIT_S, QUEUE_SIZE, SLOP_S, THERMAL_OFFSET_S
from ..stats import percentile

SKEW_WINDOW = 1000  # recent skew samples kept for the summary in as_dict()
RGB_STEPS_FOR_PREDICTION = 4  # RGB stamp steps needed before the next RGB stamp is predicted
RGB_STEP_WINDOW = 16  # recent RGB stamp steps the prediction uses

_RGB, _THERMAL = 0, 1
_STREAM_NAMES = ("rgb", "thermal")


@dataclass(frozen=True)
class Pair:
    """One RGB frame and one thermal frame, with their stamps as given to add_* (thermal without offset)."""

    rgb: Any
    thermal: Any
    rgb_stamp_ns: int
    thermal_stamp_ns: int
    thermal_offset_ns: int = 0

    @property
    def skew_ns(self) -> int:
        """Signed skew: (thermal stamp + offset) - rgb stamp."""
        return self.thermal_stamp_ns + self.thermal_offset_ns - self.rgb_stamp_ns


@dataclass
class PairingStats:
    """Counters of an ApproximateTimePairer (see the module docstring) and the recent signed skews in ns."""

    matched: int = 0
    unmatched_rgb: int = 0
    unmatched_thermal: int = 0
    resets: int = 0
    stamp_backwards_rgb: int = 0
    stamp_backwards_thermal: int = 0
    duplicates_rgb: int = 0
    duplicates_thermal: int = 0
    evicted_rgb: int = 0
    evicted_thermal: int = 0
    stale_rgb: int = 0
    stale_thermal: int = 0
    skew_ns: deque[int] = field(default_factory=lambda: deque(maxlen=SKEW_WINDOW))

    def as_dict(self) -> dict[str, int | float]:
        """Counters plus skew_samples and, when there is at least one sample, skew_ms_{mean,p50,p95,max} of |skew|
        and skew_ms_signed_mean (positive: thermal stamps later than RGB).

        The skew keys are left out rather than set to NaN while nothing has been paired (strict JSON has no NaN).
        """
        out: dict[str, int | float] = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "skew_ns"
        }
        skews_ms = sorted(abs(s) / 1e6 for s in self.skew_ns)
        out["skew_samples"] = len(skews_ms)
        if skews_ms:
            out["skew_ms_signed_mean"] = sum(self.skew_ns) / len(self.skew_ns) / 1e6
            out["skew_ms_mean"] = sum(skews_ms) / len(skews_ms)
            out["skew_ms_p50"] = percentile(skews_ms, 50)
            out["skew_ms_p95"] = percentile(skews_ms, 95)
            out["skew_ms_max"] = skews_ms[-1]
        return out


def _max_wait_ns(max_wait_s: float) -> int:
    if not (isinstance(max_wait_s, (int, float)) and math.isfinite(max_wait_s) and max_wait_s >= 0):
        raise ValueError(f"max_wait_s must be a finite number >= 0, got {max_wait_s!r}")
    return round(max_wait_s * 1e9)


class _Queued(NamedTuple):
    """A frame waiting in its stream's queue for a partner."""

    stamp_ns: int  # thermal: offset already applied
    item: Any
    received_ns: int | None = None  # the caller's clock when the frame arrived; None: no max_wait_s deadline


class ApproximateTimePairer:
    """Pairs RGB and thermal frames whose stamps are within slop_s; see the module docstring for the policy.

    Args:
        slop_s: largest accepted |skew| (exclusive), > 0.
        queue_size: frames held per stream while waiting for a partner, >= 1.
        thermal_offset_s: added to thermal stamps before comparing; finite, either sign.
        reset_on_backwards_s: a backwards stamp step larger than this resets the pairer; > 0 (math.inf: never).
        max_wait_s: longest wait of a thermal frame (given a receive time) for a nearer RGB frame; finite, >= 0.
            The wait is paid only when the next RGB frame may be nearer than the nearest one so far, and that
            frame normally comes within half a frame period; the full wait only when it never comes (a lost
            frame, a triggered or stopped camera).
    """

    def __init__(self, slop_s: float = SLOP_S, queue_size: int = QUEUE_SIZE,
                 thermal_offset_s: float = THERMAL_OFFSET_S, reset_on_backwards_s: float = 1.0,
                 max_wait_s: float = MAX_WAIT_S) -> None:
        if not (math.isfinite(slop_s) and slop_s > 0):
            raise ValueError(f"slop_s must be a finite number > 0, got {slop_s!r}")
        if operator.index(queue_size) < 1:
            raise ValueError(f"queue_size must be an integer >= 1, got {queue_size!r}")
        if not math.isfinite(thermal_offset_s):
            raise ValueError(f"thermal_offset_s must be finite, got {thermal_offset_s!r}")
        if not reset_on_backwards_s > 0:  # also refuses NaN
            raise ValueError(f"reset_on_backwards_s must be > 0 (math.inf disables resets), got "
                             f"{reset_on_backwards_s!r}")
        self._max_wait_ns = _max_wait_ns(max_wait_s)
        self._slop_ns = round(slop_s * 1e9)
        if self._slop_ns < 1:
            raise ValueError(f"slop_s must be at least 1 ns, got {slop_s!r}")
        self._queue_size = operator.index(queue_size)
        self._offset_ns = round(thermal_offset_s * 1e9)
        self._reset_ns = reset_on_backwards_s * 1e9  # float: may be inf
        self._lock = threading.Lock()
        self._stats = PairingStats()
        self._queues: tuple[deque[_Queued], deque[_Queued]] = (deque(), deque())
        self._last: list[int | None] = [None, None]  # newest accepted stamp per stream (thermal: with offset)
        # Set for a stream when the other one reset while this one was on the old timeline.
        self._awaiting_new_timeline = [False, False]
        self._now_ns: int | None = None  # latest receive time given to add_* / expire (the deadline clock)
        self._rgb_steps: deque[int] = deque(maxlen=RGB_STEP_WINDOW)

    # ------------------------------------------------------------------------------------------------
    # Public API

    @property
    def stats(self) -> PairingStats:
        """A snapshot of the counters, consistent and safe to read while other threads keep adding frames."""
        with self._lock:
            return dataclasses.replace(self._stats, skew_ns=deque(self._stats.skew_ns, maxlen=SKEW_WINDOW))

    @property
    def slop_s(self) -> float:
        return self._slop_ns / 1e9

    @property
    def queue_size(self) -> int:
        return self._queue_size

    @property
    def thermal_offset_s(self) -> float:
        return self._offset_ns / 1e9

    @property
    def max_wait_s(self) -> float:
        return self._max_wait_ns / 1e9

    def retune(self, *, slop_s: float | None = None, thermal_offset_s: float | None = None,
               max_wait_s: float | None = None) -> list[Pair]:
        """Changes slop, offset and/or max_wait_s at run time; returns the pairs that became final.

        A new max_wait_s applies to the queued frames too (their deadlines are computed from their receive times),
        so it may decide some at once. Queued frames were ordered with the old offset, so a new slop or offset gives
        them up (counted unmatched) rather than re-sorting them; a retune is rare and the loss is one queue."""
        pairs: list[Pair] = []
        if max_wait_s is not None:
            max_wait_ns = _max_wait_ns(max_wait_s)
            with self._lock:
                self._max_wait_ns = max_wait_ns
                while self._step(pairs, end_of_stream=False):
                    pass
        if slop_s is None and thermal_offset_s is None:
            return pairs
        slop_ns = self._slop_ns if slop_s is None else round(slop_s * 1e9)
        offset_ns = self._offset_ns if thermal_offset_s is None else round(thermal_offset_s * 1e9)
        if slop_ns < 1 or not math.isfinite(slop_ns / 1e9):
            raise ValueError(f"slop_s must be at least 1 ns, got {slop_s!r}")
        with self._lock:
            self._give_up_all()
            self._slop_ns, self._offset_ns = slop_ns, offset_ns
            self._last = [None, None]
            self._awaiting_new_timeline = [False, False]
            self._rgb_steps.clear()
        return pairs

    def count_external_pair(self, pair: Pair) -> None:
        """Counts a pair made by another synchroniser (the node's message_filters backend) in `stats`, so that
        matched pairs and skew are reported whichever backend pairs."""
        with self._lock:
            self._count_pair(pair)

    @property
    def queued(self) -> int:
        """Frames currently held (both streams)."""
        with self._lock:
            return len(self._queues[_RGB]) + len(self._queues[_THERMAL])

    def add_rgb(self, stamp_ns: int, item: Any, received_ns: int | None = None) -> list[Pair]:
        """Adds an RGB frame received at `received_ns` (the caller's clock; None: unknown); returns the pairs
        that became final, in increasing stamp order."""
        return self._add(_RGB, operator.index(stamp_ns), item, received_ns)

    def add_thermal(self, stamp_ns: int, item: Any, received_ns: int | None = None) -> list[Pair]:
        """Adds a thermal frame (stamp without offset) received at `received_ns` (None: unknown, the frame then
        has no max_wait_s deadline); returns the pairs that became final, in stamp order."""
        return self._add(_THERMAL, operator.index(stamp_ns) + self._offset_ns, item, received_ns)

    def expire(self, now_ns: int) -> list[Pair]:
        """Advances the deadline clock to `now_ns`; returns the pairs whose max_wait_s ran out by then."""
        with self._lock:
            pairs: list[Pair] = []
            self._advance_clock(operator.index(now_ns))
            while self._step(pairs, end_of_stream=False):
                pass
            return pairs

    def next_deadline_ns(self) -> int | None:
        """When `expire` may next decide a pair (the oldest pending thermal frame's deadline), or None: nothing is
        pending, the frame has no receive time, or its deadline passed and it waits for an RGB frame within slop
        (which only an add_rgb can bring)."""
        with self._lock:
            thermal = self._queues[_THERMAL]
            if not thermal or thermal[0].received_ns is None:
                return None
            deadline = thermal[0].received_ns + self._max_wait_ns
            if self._now_ns is not None and deadline <= self._now_ns:
                return None
            return deadline

    def flush(self) -> list[Pair]:
        """End of stream: pairs the pending thermal frames with the queued RGB frames, gives up everything else."""
        with self._lock:
            pairs: list[Pair] = []
            while self._step(pairs, end_of_stream=True):
                pass
            self._give_up_all()
            return pairs

    def reset(self) -> None:
        """Drops both queues (counted unmatched and as a reset) and forgets the last stamps of both streams."""
        with self._lock:
            self._give_up_all()
            self._stats.resets += 1
            self._last = [None, None]
            self._awaiting_new_timeline = [False, False]
            self._rgb_steps.clear()

    # ------------------------------------------------------------------------------------------------
    # Internals (called with the lock held)

    def _add(self, stream: int, stamp_ns: int, item: Any, received_ns: int | None) -> list[Pair]:
        with self._lock:
            pairs: list[Pair] = []
            if received_ns is not None:
                # Deadlines that ran out before this frame arrived are decided without it, whether or not
                # `expire` got to them first: that keeps a live run and its replay identical.
                self._advance_clock(operator.index(received_ns))
                while self._step(pairs, end_of_stream=False):
                    pass
            if not self._admit(stream, stamp_ns):
                self._count("unmatched", stream)
                return pairs
            self._queues[stream].append(_Queued(stamp_ns, item, self._now_ns if received_ns is not None else None))
            if stream == _RGB and self._last[_RGB] is not None:
                self._rgb_steps.append(stamp_ns - self._last[_RGB])
            self._last[stream] = stamp_ns
            while True:
                while self._step(pairs, end_of_stream=False):
                    pass
                # Evicting only now lets the new frame settle the frames it completes before anything is lost.
                overfull = [s for s in (_RGB, _THERMAL) if len(self._queues[s]) > self._queue_size]
                if not overfull:
                    return pairs
                for s in overfull:
                    self._queues[s].popleft()
                    self._count("unmatched", s)
                    self._count("evicted", s)

    def _advance_clock(self, now_ns: int) -> None:
        # Never backwards: a caller's clock may step back (sim time), and a deadline once passed stays passed.
        if self._now_ns is None or now_ns > self._now_ns:
            self._now_ns = now_ns

    def _admit(self, stream: int, stamp_ns: int) -> bool:
        """Stamp checks of a new frame; False means drop it. May reset the pairer."""
        other = 1 - stream
        if self._awaiting_new_timeline[stream]:
            other_last = self._last[other]
            if other_last is not None and stamp_ns - other_last > self._reset_ns:
                self._count("stale", stream)
                return False
            self._awaiting_new_timeline[stream] = False
            return True
        last = self._last[stream]
        if last is None or stamp_ns > last:
            return True
        if stamp_ns == last:
            self._count("duplicates", stream)
            return False
        if last - stamp_ns <= self._reset_ns:
            self._count("stamp_backwards", stream)
            return False
        self._give_up_all()
        self._stats.resets += 1
        self._rgb_steps.clear()
        self._awaiting_new_timeline[other] = self._last[other] is not None
        self._last[other] = None
        return True

    def _step(self, pairs: list[Pair], end_of_stream: bool) -> bool:
        """Settles at most one frame (gives up a dead RGB frame or decides the oldest thermal frame).

        Returns whether anything changed. All RGB frames scanned but one are consumed, so the cost is amortised O(1).
        """
        rgb, thermal = self._queues
        bound = thermal[0].stamp_ns if thermal else self._last[_THERMAL]
        if rgb and bound is not None and rgb[0].stamp_ns <= bound - self._slop_ns:
            rgb.popleft()
            self._stats.unmatched_rgb += 1
            return True
        if not thermal:
            return False
        t = thermal[0].stamp_ns
        last_rgb = self._last[_RGB]
        if rgb:
            final = rgb[-1].stamp_ns >= t
        else:  # nothing queued (not yet arrived, or used by earlier thermal frames): a later one may be in slop
            final = last_rgb is not None and last_rgb - t >= self._slop_ns
        next_rgb = self._next_rgb_lower_bound()
        if not final and rgb and next_rgb is not None:
            # The next RGB frame lies at or beyond next_rgb: it cannot beat the nearest queued one. A prediction never
            # gives a thermal frame up (a stream that lost frames can step shorter than all its recent steps), it only
            # settles a pair with a queued RGB frame, which lies within slop here (older ones were given up above).
            final = next_rgb - t >= t - rgb[-1].stamp_ns
        if not (final or end_of_stream):
            received = thermal[0].received_ns
            timed_out = (received is not None and self._now_ns is not None
                         and self._now_ns >= received + self._max_wait_ns)
            # Queued RGB frames all lie before t here, so the newest one is the nearest candidate.
            if not (timed_out and rgb and t - rgb[-1].stamp_ns < self._slop_ns):
                return False
        thermal_frame = thermal.popleft()
        # The queue is sorted, so the nearest frame is the last one <= t or the first one beyond; strict `<` keeps
        # the earlier frame on equal distances and enforces |skew| < slop.
        best_index, best_distance = -1, self._slop_ns
        for index, frame in enumerate(rgb):
            distance = abs(frame.stamp_ns - t)
            if distance < best_distance:
                best_index, best_distance = index, distance
            if frame.stamp_ns >= t:
                break
        if best_index < 0:
            self._stats.unmatched_thermal += 1
            return True
        for _ in range(best_index):  # skipped over: pairs never cross
            rgb.popleft()
            self._stats.unmatched_rgb += 1
        rgb_frame = rgb.popleft()
        pair = Pair(rgb_frame.item, thermal_frame.item, rgb_frame.stamp_ns, t - self._offset_ns, self._offset_ns)
        self._count_pair(pair)
        pairs.append(pair)
        return True

    def _next_rgb_lower_bound(self) -> int | None:
        """The earliest stamp the next RGB frame is expected at, or None while too few steps are known."""
        if len(self._rgb_steps) < RGB_STEPS_FOR_PREDICTION or self._last[_RGB] is None:
            return None
        ordered = sorted(self._rgb_steps)
        shortest, median = ordered[0], ordered[len(ordered) // 2]
        return self._last[_RGB] + shortest - (median - shortest)

    def _count_pair(self, pair: Pair) -> None:
        self._stats.matched += 1
        self._stats.skew_ns.append(pair.skew_ns)

    def _give_up_all(self) -> None:
        for stream in (_RGB, _THERMAL):
            while self._queues[stream]:
                self._queues[stream].popleft()
                self._count("unmatched", stream)

    def _count(self, counter: str, stream: int) -> None:
        name = f"{counter}_{_STREAM_NAMES[stream]}"
        setattr(self._stats, name, getattr(self._stats, name) + 1)
