# -*- test-case-name: tests.e2e.test_acme_resilience -*-
"""Blocking ACME work in daemon threads that a stop never waits for.

Twisted's thread pool is joined at reactor shutdown: an order polling a
slow validation (or a request hanging on an unresponsive CA) would hold
the process after SIGTERM, well past ``timeouts.drain``.  ACME steps run
instead in threads of their own, marked daemon, whose results come back
through ``callFromThread``; a stop sets the service's cancel event (the
steps check it between requests) and then simply does not wait for them.
Nothing they hold needs closing: state is only written on the reactor
thread, from their results.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


class Cancelled(Exception):
    """The edge is stopping: the ACME step gave up between two requests."""


def run_in_daemon_thread(reactor: Any, function: Callable[..., Any], *args: Any) -> Deferred:
    """``function(*args)`` in a new daemon thread; its result (or failure) fires the Deferred on the reactor."""
    result: Deferred = Deferred()

    def deliver(outcome: Any) -> None:
        try:
            reactor.callFromThread(result.callback, outcome)
        except Exception:  # the reactor is gone: the process is exiting, nobody waits for this
            pass

    def work() -> None:
        try:
            outcome: Any = function(*args)
        except BaseException:
            outcome = Failure()
        deliver(outcome)

    threading.Thread(target=work, name=f"acme-{getattr(function, '__name__', 'step')}", daemon=True).start()
    return result
