"""Coarse timers for per-connection timeouts counted in seconds.

Every forwarded connection has a few deadlines (the first bytes, the
backend connect, idleness) that almost never fire: the event comes first
and the timer is cancelled.  A Twisted ``callLater`` is an object and a
heap entry, then a cancel, each time.  Here deadlines are grouped in slots
of :data:`RESOLUTION` seconds; the reactor holds one timer, for the earliest
slot, so setting a deadline is an append to a list and cancelling it is
clearing a field, at any connection rate.  A deadline never fires early and
at most :data:`RESOLUTION` late.
"""

from __future__ import annotations

import heapq
import math
from typing import Any, Callable

from twisted.logger import Logger

log = Logger()

RESOLUTION = 0.1


class Deadline:
    """One pending call; ``cancel()`` it when its event came first."""

    __slots__ = ("call",)

    def __init__(self, call: Callable[[], Any]) -> None:
        self.call: Callable[[], Any] | None = call

    def active(self) -> bool:
        return self.call is not None

    def cancel(self) -> None:
        self.call = None


class CoarseTimers:
    """Deadlines for one reactor, fired by one reactor timer at a time."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.slots: dict[int, list[Deadline]] = {}
        self.keys: list[int] = []  # heap of the slots' keys
        self.timer: Any = None
        self.timer_key = 0

    def later(self, seconds: float, call: Callable[[], Any]) -> Deadline:
        """Call ``call()`` in ``seconds`` (at most RESOLUTION more), unless cancelled first."""
        deadline = Deadline(call)
        key = math.ceil((self.reactor.seconds() + seconds) / RESOLUTION)
        slot = self.slots.get(key)
        if slot is None:
            slot = self.slots[key] = []
            heapq.heappush(self.keys, key)
            if self.timer is None or key < self.timer_key:
                self._schedule(key)
        slot.append(deadline)
        return deadline

    def _schedule(self, key: int) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer_key = key
        self.timer = self.reactor.callLater(max(0.0, key * RESOLUTION - self.reactor.seconds()), self._fire)

    def _fire(self) -> None:
        self.timer = None
        now = self.reactor.seconds()
        due: list[Deadline] = []
        while self.keys and self.keys[0] * RESOLUTION <= now:
            due.extend(self.slots.pop(heapq.heappop(self.keys)))
        if self.keys:
            self._schedule(self.keys[0])
        for deadline in due:
            call = deadline.call
            if call is not None:
                deadline.call = None
                try:
                    call()
                except Exception:
                    log.failure("a timeout handler failed")


_TIMERS: dict[int, CoarseTimers] = {}


def coarse(reactor: Any) -> CoarseTimers:
    """The coarse timers of ``reactor`` (one set per reactor)."""
    timers = _TIMERS.get(id(reactor))
    if timers is None or timers.reactor is not reactor:
        timers = _TIMERS[id(reactor)] = CoarseTimers(reactor)
    return timers
