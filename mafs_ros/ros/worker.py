"""The node's two threads besides the executor's: the inference worker and the pairing-deadline thread.

Keeping the model off the executor's thread means parameter services and diagnostics stay responsive while a
slow model runs; the one-slot mailbox between them means a camera faster than the model costs drops, not
latency.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..stream.pairing import Pair


class Mailbox:
    """One slot holding the newest pair; `put` over an unread pair counts a drop."""

    def __init__(self) -> None:
        self._pair: Pair | None = None
        self._cond = threading.Condition()
        self._closed = False
        self.drops = 0

    def put(self, pair: Pair) -> None:
        with self._cond:
            if self._pair is not None:
                self.drops += 1
            self._pair = pair
            self._cond.notify()

    def take(self, timeout_s: float) -> Pair | None:
        """The newest pair, or None after `timeout_s` or once closed."""
        with self._cond:
            if self._pair is None and not self._closed:
                self._cond.wait(timeout_s)
            pair, self._pair = self._pair, None
            return None if self._closed else pair

    def clear(self) -> int:
        """Empties the slot; returns the number of pairs removed (0 or 1), which the caller counts."""
        with self._cond:
            removed, self._pair = int(self._pair is not None), None
            return removed

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class Workers:
    """The threads of one configuration: each configuration gets its own mailbox and stop event, so that a
    worker still finishing a forward pass after a cleanup cannot pick up the pairs of the next configuration.

    process(pair): fuse and publish one pair. on_error(exc): a pair failed; return False to end the worker (the
    node is shutting down). next_deadline_ns() / expire(): the pairer's next max_wait_s deadline (monotonic ns,
    None: none pending) and the call that decides the pairs whose deadline has passed.
    """

    def __init__(self, process: Callable[[Pair], None], on_error: Callable[[Exception], bool],
                 next_deadline_ns: Callable[[], int | None], expire: Callable[[], None]) -> None:
        self.mailbox = Mailbox()
        self._process, self._on_error = process, on_error
        self._next_deadline_ns, self._expire = next_deadline_ns, expire
        self._stop = threading.Event()
        self._wakeup = threading.Event()
        self._inference = threading.Thread(target=self._inference_loop, name="mafs-inference", daemon=True)
        self._inference.start()
        threading.Thread(target=self._deadline_loop, name="mafs-pairing", daemon=True).start()

    def wake_deadline(self) -> None:
        """A new deadline may be nearer than the one waited for."""
        self._wakeup.set()

    def stop(self, timeout_s: float) -> bool:
        """Stops both threads; waits at most `timeout_s` for a running forward pass, on the first call only.
        Returns whether the inference worker has ended."""
        if not self._stop.is_set():
            self._stop.set()
            self.mailbox.close()
            self._wakeup.set()
            if self._inference is not threading.current_thread():
                self._inference.join(timeout_s)
        return not self._inference.is_alive()

    def _inference_loop(self) -> None:
        while not self._stop.is_set():
            pair = self.mailbox.take(timeout_s=0.2)
            if pair is None:
                continue
            try:
                self._process(pair)
            except Exception as exc:  # noqa: BLE001 - a failed frame must never stop the node
                if self._stop.is_set() or not self._on_error(exc):
                    return

    def _deadline_loop(self) -> None:
        """Decides the pairs whose sync.max_wait_s runs out while no frame arrives (an isolated or a last pair).

        The monotonic clock, not the ROS clock: the wait is real time even under sim time, and the callbacks
        stamp frames with the same clock, so a deadline that passes just before a frame arrives is decided the
        same way here or in that frame's add_* (as replay decides it)."""
        while not self._stop.is_set():
            self._wakeup.clear()
            deadline = self._next_deadline_ns()
            if deadline is None:
                self._wakeup.wait(0.5)
                continue
            delay_s = (deadline - time.monotonic_ns()) / 1e9
            if delay_s > 0:
                self._wakeup.wait(delay_s)
                continue
            self._expire()
