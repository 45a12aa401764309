# -*- test-case-name: tests.unit.net.test_timers -*-
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

    __slots__ = ("call", "slot")

    def __init__(self, call: Callable[[], Any], slot: "Slot") -> None:
        self.call: Callable[[], Any] | None = call
        self.slot: Slot | None = slot

    def active(self) -> bool:
        return self.call is not None

    def cancel(self) -> None:
        if self.call is None:
            return
        self.call = None
        slot, self.slot = self.slot, None
        if slot is not None:
            slot.cancelled_one()


class Slot:
    """The deadlines due in one slot of time.

    A cancelled deadline must not stay here until its slot comes round: with
    a one-hour idle timeout that would keep an object per connection for an
    hour (about 54 bytes a connection, which grew without bound at thousands
    of connections a second).  Once half of a slot is cancelled it is
    compacted; a slot with nothing left is dropped at once.
    """

    __slots__ = ("deadlines", "cancelled", "key", "timers")

    def __init__(self, key: int, timers: "CoarseTimers") -> None:
        self.deadlines: list[Deadline] = []
        self.cancelled = 0
        self.key = key
        self.timers = timers

    def cancelled_one(self) -> None:
        self.cancelled += 1
        if self.cancelled * 2 < len(self.deadlines):
            return
        self.deadlines = [d for d in self.deadlines if d.call is not None]
        self.cancelled = 0
        if not self.deadlines:
            self.timers.drop(self)


class CoarseTimers:
    """Deadlines for one reactor, fired by one reactor timer at a time."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.slots: dict[int, Slot] = {}
        self.keys: list[int] = []  # heap of the slots' keys (a dropped slot's key stays until it is due)
        self.queued: set[int] = set()  # the keys in that heap, each pushed once
        self.timer: Any = None
        self.timer_key = 0

    def later(self, seconds: float, call: Callable[[], Any]) -> Deadline:
        """Call ``call()`` in ``seconds`` (at most RESOLUTION more), unless cancelled first."""
        key = math.ceil((self.reactor.seconds() + seconds) / RESOLUTION)
        slot = self.slots.get(key)
        if slot is None:
            slot = self.slots[key] = Slot(key, self)
            if key not in self.queued:  # a slot dropped and made again: its key is in the heap already
                self.queued.add(key)
                heapq.heappush(self.keys, key)
            if self.timer is None or key < self.timer_key:
                self._schedule(key)
        deadline = Deadline(call, slot)
        slot.deadlines.append(deadline)
        return deadline

    def drop(self, slot: Slot) -> None:
        """``slot`` has no live deadline left."""
        if self.slots.get(slot.key) is slot:
            del self.slots[slot.key]

    def pending(self) -> int:
        """Deadlines held (live, or cancelled and not yet compacted away)."""
        return sum(len(slot.deadlines) for slot in self.slots.values())

    def _schedule(self, key: int) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer_key = key
        self.timer = self.reactor.callLater(max(0.0, key * RESOLUTION - self.reactor.seconds()), self._fire)

    def _fire(self) -> None:
        self.timer = None
        now = self.reactor.seconds()
        due: list[Deadline] = []
        keys, slots = self.keys, self.slots
        while keys and keys[0] * RESOLUTION <= now:
            key = heapq.heappop(keys)
            self.queued.discard(key)
            slot = slots.pop(key, None)
            if slot is not None:
                due.extend(slot.deadlines)
        if keys:
            self._schedule(keys[0])
        for deadline in due:
            call = deadline.call
            if call is not None:
                deadline.call = deadline.slot = None
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
