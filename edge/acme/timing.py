# -*- test-case-name: tests.unit.acme.test_timing, tests.e2e.test_acme -*-
"""When a certificate is due for renewal, and when to check next.  Pure functions, no I/O, no clock.

Without renewal information a certificate is due when a third of its
lifetime remains (so 6-day and 90-day certificates both work).  With ACME
Renewal Information (ARI, RFC 9773) the CA suggests a window; the edge
picks one moment in it once and keeps it (``RenewalInfo``), and asks the
CA again no sooner than its ``Retry-After``.  The next check is the
earliest of ``check_interval``, the next due moment, the next ARI
question and the next retry after a failure, so short-lived certificates
are renewed on time whatever ``check_interval`` says.
"""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass

MIN_DELAY = 1.0  # never busy-loop on a moment in the past


@dataclass(frozen=True)
class RenewalInfo:
    """What the CA said about one certificate (by its serial): its window, the moment picked in it, and
    when to ask again.  Kept in the state so a restart honours it."""

    serial: int
    start: datetime.datetime
    end: datetime.datetime
    chosen: datetime.datetime
    ask_again: datetime.datetime

    def to_json(self) -> dict:
        return {k: (v.isoformat() if isinstance(v, datetime.datetime) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict) -> "RenewalInfo":
        def when(text: str) -> datetime.datetime:
            value = datetime.datetime.fromisoformat(text)
            return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)
        return cls(int(data["serial"]), when(data["start"]), when(data["end"]), when(data["chosen"]),
                   when(data["ask_again"]))


def due_at(not_before: datetime.datetime, not_after: datetime.datetime, info: RenewalInfo | None = None,
           ) -> datetime.datetime:
    """When a certificate valid from ``not_before`` to ``not_after`` should be renewed: the moment picked
    in the CA's window if there is one (a CA asking for early renewal moves it forward), else when a third
    of its lifetime remains; never later than that third (a window past it would be the CA's mistake).
    A window that had opened when the certificate was issued is ignored: that certificate is the renewal
    it asked for (a CA repeating an urgent window for new certificates would otherwise renew forever)."""
    third = not_after - (not_after - not_before) / 3
    if info is None or info.start <= not_before:  # issued once the window had opened: it is the renewal
        return third
    return min(info.chosen, third) if info.chosen < not_after else third


def pick_in_window(start: datetime.datetime, end: datetime.datetime, fraction: float) -> datetime.datetime:
    """A moment in [start, end]; ``fraction`` (0..1) comes from the caller's randomness, so edges sharing
    a CA do not all renew at the window's first second."""
    if end <= start:
        return start
    return start + (end - start) * min(1.0, max(0.0, fraction))


def next_check(now: datetime.datetime, interval: float, due: list[datetime.datetime],
               ask_again: list[datetime.datetime], retries: list[float]) -> float:
    """Seconds until the next check: the earliest of ``interval``, the next due moment, the next ARI
    question, the next retry (seconds from now); at least MIN_DELAY for anything already past."""
    moments = [(when - now).total_seconds() for when in due + ask_again] + retries
    return min([interval] + [max(MIN_DELAY, m) for m in moments])
