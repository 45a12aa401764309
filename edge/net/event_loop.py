# -*- test-case-name: tests.unit.net.test_fastpath, tests.e2e.test_fastpath_off -*-
"""The event loop made lighter: epoll events without a logging context, fewer epoll calls, a calmer collector.

Twisted's epoll reactor wraps every readiness event in
``twisted.python.log.callWithLogger``, which asks the selectable for its
log prefix and pushes a context for legacy ``log.msg`` calls.  The edge
logs through ``twisted.logger`` and has no use for that context, yet it
costs about a tenth of the CPU of a busy proxy (several Python calls per
event, thousands of events a second).  :func:`lighten` replaces the poll
step of the running reactor with the same loop minus that wrapper; an
exception escaping a handler is still logged, and the connection is still
closed by Twisted's own handler.  Any other reactor is left as it is.

:func:`after_events` queues work for the end of a turn (an HTTP/2
connection whose streams are answered by several backends in one turn then
sends their frames in one TLS write); :func:`writer_to_reader` hands a
connected socket from its connect to its transport with one ``epoll_ctl``.

That loop reads the reactor's private state, so it lives in
:mod:`edge.net.fastpath` (fast path ``epoll``); off, the reactor is
Twisted's own and these fall back to ``callLater(0)`` and
``removeWriter``/``startReading``.
"""

from __future__ import annotations

from edge.net.fastpath import AFTER_EVENTS, DIRECT, after_events, lighten, lightened, writer_to_reader

__all__ = ["AFTER_EVENTS", "DIRECT", "after_events", "lighten", "lightened", "settle_memory", "writer_to_reader"]


def settle_memory() -> None:
    """Keep the garbage collector off what lives as long as the process: config, routes, certificates.

    ``gc.freeze`` moves every object alive now out of the collector's reach,
    so a full collection no longer walks 10,000 routes (which would make a
    connection's cost grow with the size of the configuration); the first
    generation is collected less often, since nearly everything a
    connection allocates is freed by reference counting anyway.
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)  # Python's default first threshold is 700 allocations
