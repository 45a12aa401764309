"""The event loop made lighter: epoll events without a logging context, fewer epoll calls, a calmer collector.

Twisted's epoll reactor wraps every readiness event in
``twisted.python.log.callWithLogger``, which asks the selectable for its
log prefix and pushes a context for legacy ``log.msg`` calls.  The edge
logs through ``twisted.logger`` and has no use for that context, yet it
costs about a tenth of the CPU of a busy proxy (several Python calls per
event, thousands of events a second).  :func:`lighten` replaces the poll
step of the running reactor with the same loop minus that wrapper; an
exception escaping a handler is still logged, and the connection is still
closed by Twisted's own ``_doReadOrWrite``.  Any other reactor is left as
it is.
"""

from __future__ import annotations

import errno
import select
from typing import Any

from twisted.logger import Logger

log = Logger()

# Selectable types that take the raw epoll event mask themselves (``on_event(event)``) rather than
# through Twisted's ``_doReadOrWrite``: the spliced sockets, whose whole handling is a system call or two.
DIRECT: set[type] = set()


def lighten(reactor: Any) -> bool:
    """Make ``reactor`` (if it is Twisted's epoll reactor) dispatch events directly; True if it did."""
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # not Linux
        return False
    if type(reactor) is not EPollReactor or getattr(reactor, "_edge_lightened", False):
        return False
    selectables = reactor._selectables
    poller = reactor._poller
    handle = reactor._doReadOrWrite

    def do_poll(timeout: float | None) -> None:
        if timeout is None:
            timeout = -1
        if AFTER_EVENTS:  # queued by a timer: this poll must not wait
            timeout = 0
        try:
            events = poller.poll(timeout, len(selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is not None:
                try:
                    if type(selectable) in DIRECT:
                        selectable.on_event(event)
                    else:
                        handle(selectable, fd, event)
                except Exception:
                    log.failure("handling an event of {selectable!r}", selectable=selectable)
        while AFTER_EVENTS:
            calls = AFTER_EVENTS[:]
            AFTER_EVENTS.clear()
            for call in calls:
                try:
                    call()
                except Exception:
                    log.failure("after the events of this turn")

    reactor.doPoll = reactor.doIteration = do_poll
    reactor._edge_lightened = True
    return True


# Calls to make once the events of this turn are handled (see after_events).
AFTER_EVENTS: list[Any] = []


def after_events(reactor: Any, call: Any) -> None:
    """Call ``call`` once every event of this reactor turn has been handled.

    An HTTP/2 connection whose streams are answered by several backends in
    one turn then sends their frames in one TLS write instead of one each.
    On a reactor :func:`lighten` did not change, ``callLater(0, ...)``.
    """
    if getattr(reactor, "_edge_lightened", False):
        AFTER_EVENTS.append(call)
    else:
        reactor.callLater(0, call)


def writer_to_reader(reactor: Any, writer: Any, reader: Any) -> None:
    """``reader`` takes over ``writer``'s descriptor, watched for reading instead of writing.

    A connect in progress waits for writability; once connected the same
    socket is read.  Twisted would unregister it and register it again (two
    ``epoll_ctl`` calls per backend connection); on the lightened epoll
    reactor one ``modify`` does it.
    """
    fd = writer.fileno()
    if getattr(reactor, "_edge_lightened", False) and fd in reactor._writes and fd not in reactor._reads:
        reactor._poller.modify(fd, select.EPOLLIN)
        reactor._writes.discard(fd)
        reactor._reads.add(fd)
        reactor._selectables[fd] = reader
        return
    reactor.removeWriter(writer)
    reader.startReading()


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
