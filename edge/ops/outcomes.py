# -*- test-case-name: tests.e2e.test_observability, tests.e2e.test_accounting -*-
"""How a connection ended: the outcome metrics count, and the text its access-log line shows.

A small enum rather than strings parsed back: handlers say ``Outcome.TIMEOUT.because("idle")``, the
access log writes ``timeout: idle``, and ``edge_connections_total`` counts ``outcome="timeout"``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Outcome(enum.StrEnum):
    """How a connection ended, in one word: the ``outcome`` label of ``edge_connections_total``."""

    CLOSED = "closed"  # a side closed it (or edge did, at shutdown)
    TIMEOUT = "timeout"
    REFUSED = "refused"  # turned away: an address rule, a limit, no route, no certificate, no server
    ERROR = "error"

    def because(self, detail: str) -> Ending:
        """This outcome with what caused it: ``Outcome.TIMEOUT.because("idle")`` logs ``timeout: idle``."""
        return Ending(self, f"{self}: {detail}")


@dataclass(frozen=True, slots=True)
class Ending:
    """How one connection ended: the outcome metrics count, and the text the access log's ``ended`` shows."""

    outcome: Outcome
    text: str

    def __str__(self) -> str:
        return self.text


CLOSED = Ending(Outcome.CLOSED, "closed")
CLIENT_CLOSED = Ending(Outcome.CLOSED, "client closed")
SERVER_CLOSED = Ending(Outcome.CLOSED, "server closed")
