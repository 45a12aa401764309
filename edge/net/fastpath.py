# -*- test-case-name: tests.unit.net.test_fastpath, tests.e2e.test_transports, tests.e2e.test_fastpath_off -*-
"""Every use edge makes of Twisted's private internals: each probed at import, each with a public fallback and a switch.

Edge saves system calls and Python calls per connection by reaching into
Twisted where its public API cannot say what edge needs: how many bytes a
transport still holds, an epoll loop without a logging context, transports
built without their log strings.  Those internals are no contract; a
Twisted release may rename them or, worse, change what they mean.  So each
optimisation here is a named fast path that, at import,

- probes the internals it relies on (present, of the expected type,
  callable with the expected arguments where that is cheap to see);
- is off if they are not as expected, with ONE warning naming what is missing;
- is off if ``EDGE_FASTPATH=off`` (all of them) or ``EDGE_FASTPATH=off:name,...``
  (those named) is in the environment; ``EDGE_FAST_PATHS=0`` (the older switch) means all;

and when it is off edge does what Twisted's public API does, with the same
close semantics (``loseConnection`` waits for the write buffer,
``abortConnection`` does not).  The TLS layer's own (pyOpenSSL and
``TLSMemoryBIOProtocol``) are in :mod:`edge.tls.fast_tls`, switched the same way.

The fast paths (:data:`PATHS` says which are on):

``write_buffer``
    reads a transport's write buffer (``dataBuffer``, ``offset``, ``_tempDataLen``)
    to know the bytes still queued for its peer; off, they count as unknown (0).
``quick_close``
    ``loseConnection`` closes in this turn when nothing is queued, with a plain ``close``
    (no ``shutdown``); off, Twisted's close (one more turn, three more epoll calls).
``eager_write``
    ``write`` sends at once when nothing is queued before it; off, Twisted queues it for its next turn.
``splice``
    zero-copy forwarding (:mod:`edge.net.splice`) once Twisted's buffer is known to be empty; off, Twisted relays.
``accept``
    accepted transports built without Twisted's per-connection log strings (a copy of ``tcp.Server.__init__``).
``connect``
    backend transports built on a socket already non-blocking (a copy of ``tcp.Connection.__init__``).
``linger``
    a client connection closed with unread input lingers (:class:`edge.net.closing.Linger`) instead of
    being reset, by overriding ``tcp.Connection._closeSocket``; off, the kernel resets such a connection.
``epoll``
    the epoll reactor's poll step without ``callWithLogger``, one ``epoll_ctl`` where Twisted makes two
    when a connecting socket becomes a connected one, and work queued for the end of a turn.
``h2_lean``
    decided in :mod:`edge.http.h2_lean` (a sans-IO core: no Twisted, no log) and recorded here by the HTTP/2
    server: a plain HTTP/2 request's frames handled by edge, h2's state kept as h2 keeps it; off, h2 takes them.
``systemd``
    the listening sockets systemd passed, from the record Twisted made at import
    (``_SystemdParser._sddaemon``); off, read again from the environment (``ListenFDs.fromEnvironment``).
"""

from __future__ import annotations

import errno
import inspect
import os
import select
import socket
from dataclasses import dataclass
from typing import Any, Callable, Iterable, cast

from twisted.internet import address, error, tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IReactorFDSet
from twisted.logger import Logger
from twisted.python.failure import Failure

from edge.net.closing import CLOSE_STALL, DONE, CloseWatch, Linger, queued_output, unread_bytes
from edge.net.switches import parse_switch

log = Logger()


# -- the switches ------------------------------------------------------------------------------

ALL_OFF, SWITCHED_OFF = parse_switch(os.environ)


@dataclass(frozen=True)
class FastPath:
    """What was decided at import about one optimisation."""

    name: str
    on: bool
    switched_off: bool  # by EDGE_FASTPATH / EDGE_FAST_PATHS
    missing: tuple[str, ...]  # the internals that were not as expected (empty if they were)


PATHS: dict[str, FastPath] = {}


def decide(name: str, probe: Callable[[], Iterable[str]], requires: tuple[str, ...] = ()) -> bool:
    """Whether fast path ``name`` runs: not switched off, what it ``requires`` on, and ``probe()`` finds nothing
    missing.  Missing internals are logged once, in one warning; a path that is off only because one it
    requires is off says nothing more (that one has said it)."""
    switched = ALL_OFF or name in SWITCHED_OFF
    missing: list[str] = []
    if not switched and all(PATHS[r].on for r in requires):
        try:
            missing = list(probe())
        except Exception as e:  # a probe that cannot even look: the internals are not what it knows
            missing = [f"probe failed: {e!r}"]
    on = not switched and not missing and all(PATHS[r].on for r in requires)
    PATHS[name] = FastPath(name, on, switched, tuple(missing))
    if missing:
        _warn(name, missing)
    return on


def demote(name: str, missing: Iterable[str]) -> None:
    """Fast path ``name`` found, on use, that what it relies on is missing: it is off from now on (one warning)."""
    path = PATHS[name]
    if path.on:
        PATHS[name] = FastPath(name, False, path.switched_off, tuple(missing))
        _warn(name, PATHS[name].missing)


def adopt(name: str, on: bool, switched_off: bool, missing: tuple[str, ...]) -> None:
    """Record fast path ``name`` as decided by a sans-IO core that has no log of its own (the HTTP/2 codec's
    ``h2_lean``, :mod:`edge.http.h2_lean`); one warning if it is off because internals are missing."""
    PATHS[name] = FastPath(name, on, switched_off, missing)
    if missing:
        _warn(name, missing)


def enabled(name: str) -> bool:
    path = PATHS.get(name)
    return path is not None and path.on


def _warn(name: str, missing: Iterable[str]) -> None:
    log.warn("edge fast path {name} is off: the Twisted, pyOpenSSL or h2 internals it relies on are not as expected "
             "({missing}); edge uses the public API instead", name=name, missing=", ".join(missing))


def has(owner: Any, *names: str, kind: type | tuple[type, ...] | None = None) -> list[str]:
    """The ``names`` that ``owner`` lacks (or holds as something other than ``kind``), spelled owner.name."""
    label = getattr(owner, "__name__", type(owner).__name__)
    return [f"{label}.{n}" for n in names
            if not hasattr(owner, n) or (kind is not None and not isinstance(getattr(owner, n), kind))]


def takes(function: Any, label: str, parameters: tuple[str, ...]) -> list[str]:
    """``[label]`` unless ``function`` is callable with exactly these parameter names (in this order)."""
    if not callable(function):
        return [label]
    try:
        names = tuple(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return [label]
    return [] if names == parameters else [f"{label}{names} (expected {parameters})"]


# -- the write buffer ----------------------------------------------------------------------------

def _probe_write_buffer() -> list[str]:
    probe = FileDescriptor.__new__(FileDescriptor)
    FileDescriptor.__init__(probe, reactor=cast(IReactorFDSet, object()))  # not a reactor: __init__ only keeps it
    return has(probe, "dataBuffer", kind=bytes) + has(probe, "offset", "_tempDataLen", kind=int)


WRITE_BUFFER = decide("write_buffer", _probe_write_buffer)


def pending_bytes(transport: Any) -> int:
    """Bytes a Twisted TCP transport still holds for its peer (0 for any other, or if that cannot be known)."""
    buffer = getattr(transport, "dataBuffer", None) if WRITE_BUFFER else None  # no exception raised per call
    return 0 if buffer is None else len(buffer) - transport.offset + transport._tempDataLen


def flushed(transport: Any) -> bool:
    """Twisted has no bytes waiting to be written on ``transport`` (False when that cannot be known)."""
    return WRITE_BUFFER and not transport._tempDataLen and len(transport.dataBuffer) == transport.offset


# -- edge's TCP transports ---------------------------------------------------------------------------

QUICK_CLOSE = decide("quick_close", lambda: (
    has(tcp.Connection, "_shouldShutdown", kind=bool)
    + takes(tcp.Connection._closeSocket, "tcp.Connection._closeSocket", ("self", "orderly"))
    + has(FileDescriptor, "producer", "streamingProducer", "producerPaused")), requires=("write_buffer",))
LINGER = decide("linger", lambda: takes(getattr(tcp.Connection, "_closeSocket", None), "tcp.Connection._closeSocket",
                                        ("self", "orderly")))
ACCEPT = decide("accept", lambda: (
    takes(tcp.Server.__init__, "tcp.Server.__init__",
          ("self", "sock", "protocol", "client", "server", "sessionno", "reactor"))
    + has(tcp.Server, "_addressType")))
CONNECT = decide("connect", lambda: takes(tcp.Connection.__init__, "tcp.Connection.__init__",
                                          ("self", "skt", "protocol", "reactor")))


class QuickClose(tcp.Connection):
    """``loseConnection`` that closes in this turn when the write buffer is empty (fast path ``quick_close``);
    every close bounded by a :class:`CloseWatch`.  A mixin of Twisted's TCP transports: first in the bases of
    :class:`AcceptedTransport` (before ``tcp.Server``) and :class:`BackendTransport`."""

    if QUICK_CLOSE:
        _shouldShutdown = False  # close() alone ends the connection: no other process holds the socket
    # Twisted's TLS protocol is not written for a transport that reports connectionLost from inside
    # its own loseConnection call (it carries on using the TLS state it has just torn down); under
    # TLS the close waits for the next turn, as Twisted does it (see edge.net.transports.under_tls).
    close_at_once = QUICK_CLOSE
    close_watch: CloseWatch | None = None

    def loseConnection(self) -> None:
        # Twisted would close at its next write turn unless that turn resumes a producer instead.
        if self.close_at_once and self.connected and not self.disconnecting and not self._tempDataLen \
                and len(self.dataBuffer) == self.offset \
                and (self.producer is None or (self.streamingProducer and not self.producerPaused)):
            self.disconnecting = 1
            self.stopReading()
            self.stopWriting()
            self.connectionLost(DONE)
            return
        FileDescriptor.loseConnection(self)
        if self.connected and self.close_watch is None:
            self.close_watch = CloseWatch(self.reactor, lambda: pending_bytes(self), self.abortConnection, CLOSE_STALL)

    if WRITE_BUFFER:
        def queued_for_peer(self) -> int:
            """Bytes written and not yet taken by the peer (a method, so that asking costs no failed lookups)."""
            return len(self.dataBuffer) - self.offset + self._tempDataLen
    else:
        def queued_for_peer(self) -> int:
            """Bytes written and not yet taken by the peer: unknown without the ``write_buffer`` fast path."""
            return 0

    if QUICK_CLOSE:
        def connectionLost(self, reason: Failure) -> None:
            # tcp.Connection's, with a plain isinstance where Twisted calls Failure.check (which walks the MRO).
            if not hasattr(self, "socket"):
                return
            if self.close_watch is not None:
                self.close_watch.cancel()
                self.close_watch = None
            FileDescriptor.connectionLost(self, reason)
            self._closeSocket(not isinstance(reason.value, error.ConnectionAborted))
            protocol = self.protocol
            del self.protocol
            del self.socket
            del self.fileno
            protocol.connectionLost(reason)
    else:
        def connectionLost(self, reason: Failure) -> None:
            if self.close_watch is not None:
                self.close_watch.cancel()
                self.close_watch = None
            super().connectionLost(reason)  # Twisted's tcp.Connection's (tcp.Server's), next in the MRO


class AcceptedTransport(QuickClose, tcp.Server):
    """A client connection accepted on one of edge's doors."""

    client: tuple[str, int] | tuple[str, int, int, int]  # accept()'s address: IPv4, or IPv6 with flow and scope

    def __init__(self, sock: socket.socket, protocol: Any, client: tuple, server: Any, sessionno: int,
                 reactor: Any) -> None:
        if not ACCEPT:
            tcp.Server.__init__(self, sock, protocol, client, server, sessionno, reactor)
            return
        tcp.Connection.__init__(self, sock, protocol, reactor)
        if len(client) != 2:
            self._addressType = address.IPv6Address
        self.server = server
        self.client = client
        self.sessionno = sessionno
        self.hostname = client[0]
        self.logstr = "edge"
        self.startReading()
        self.connected = 1

    def __repr__(self) -> str:
        return f"<{type(self.protocol).__name__} #{self.sessionno} from {self.hostname}>"

    if LINGER:
        def _closeSocket(self, orderly: bool) -> None:
            # The edge closes (``disconnecting``) while the client's bytes wait unread, or while its own still
            # wait for the client (who may answer them as it reads: WINDOW_UPDATE, PING): linger, do not reset.
            if orderly and self.disconnecting and (unread_bytes(self.socket) or queued_output(self.socket)):
                try:
                    self.socket.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                else:
                    Linger(self.socket, self.reactor)
                    return
            super()._closeSocket(orderly)


def accept_with(port: Any) -> None:
    """Make the listening ``port`` build :class:`AcceptedTransport` (Twisted's TCP ports only)."""
    if isinstance(port, tcp.Port) and hasattr(port, "transport"):
        port.transport = AcceptedTransport


def backend_address(host: str, port: int) -> Any:
    """The Twisted address of a backend server at ``host``, ``port``."""
    return (address.IPv6Address if ":" in host else address.IPv4Address)("TCP", host, port)


class BackendTransport(QuickClose, tcp.Connection):
    """An established connection to a backend server: a Twisted TCP transport."""

    def __init__(self, sock: socket.socket, protocol: Any, reactor: Any, peer: tuple[str, int]) -> None:
        if CONNECT:  # tcp.Connection.__init__ without its setblocking call: the socket is non-blocking already
            FileDescriptor.__init__(self, reactor=reactor)
            self.socket = sock
            self.fileno = sock.fileno
            self.protocol = protocol
        else:
            tcp.Connection.__init__(self, sock, protocol, reactor)
        self.peer = peer
        self.connected = 1
        self.logstr = "backend"

    def getPeer(self) -> Any:
        return backend_address(*self.peer)

    def getHost(self) -> Any:
        return backend_address(*self.socket.getsockname()[:2])


# -- writing at once -----------------------------------------------------------------------------------

PLAIN_TCP = frozenset((tcp.Server, tcp.Client, AcceptedTransport, BackendTransport))  # not TLS wrappers

if decide("eager_write", lambda: (), requires=("write_buffer",)):
    def write_now(transport: Any, data: bytes) -> None:
        """``transport.write(data)``, but sent in this turn when the socket can take it."""
        if type(transport) not in PLAIN_TCP or transport._tempDataLen \
                or len(transport.dataBuffer) != transport.offset or not transport.connected \
                or transport.disconnecting:
            transport.write(data)
            return
        try:
            sent = transport.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            transport.write(data)  # Twisted's own write path notices the error and closes
            return
        if sent < len(data):
            transport.write(data[sent:])
else:
    def write_now(transport: Any, data: bytes) -> None:
        """``transport.write(data)`` (the ``eager_write`` fast path is off)."""
        transport.write(data)


SPLICE = decide("splice", lambda: (), requires=("write_buffer",))


# -- the event loop --------------------------------------------------------------------------------------

def _probe_epoll_class() -> list[str]:
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # not Linux: there is nothing to lighten, and nothing is missing
        return []
    return takes(getattr(EPollReactor, "_doReadOrWrite", None), "EPollReactor._doReadOrWrite",
                 ("self", "selectable", "fd", "event")) + has(EPollReactor, "doPoll", "doIteration")


EPOLL = decide("epoll", _probe_epoll_class)

# Selectable types that take the raw epoll event mask themselves (``on_event(event)``) rather than
# through Twisted's ``_doReadOrWrite``: the spliced sockets, whose whole handling is a system call or two.
DIRECT: set[type] = set()
# Calls to make once the events of this turn are handled (see after_events).
AFTER_EVENTS: list[Any] = []
_LIGHTENED: set[int] = set()  # id() of the reactors lighten() changed


def _probe_epoll_reactor(reactor: Any) -> list[str]:
    return (has(reactor, "_selectables", kind=dict) + has(reactor, "_reads", "_writes", kind=set)
            + [f"EPollReactor._poller.{n}" for n in ("poll", "modify")
               if not hasattr(getattr(reactor, "_poller", None), n)])


def lighten(reactor: Any) -> bool:
    """Make ``reactor`` (if it is Twisted's epoll reactor) dispatch events directly; True if it did."""
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # not Linux
        return False
    if type(reactor) is not EPollReactor or id(reactor) in _LIGHTENED or not enabled("epoll"):
        return False
    missing = _probe_epoll_reactor(reactor)
    if missing:
        demote("epoll", missing)
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

    setattr(reactor, "doPoll", do_poll)  # this reactor's own poll step, in place of its class's
    setattr(reactor, "doIteration", do_poll)
    _LIGHTENED.add(id(reactor))
    return True


def lightened(reactor: Any) -> bool:
    """Whether :func:`lighten` changed ``reactor``."""
    return id(reactor) in _LIGHTENED


def after_events(reactor: Any, call: Any) -> None:
    """Call ``call`` once every event of this reactor turn has been handled (``callLater(0, ...)`` on a
    reactor :func:`lighten` did not change)."""
    if id(reactor) in _LIGHTENED:
        AFTER_EVENTS.append(call)
    else:
        reactor.callLater(0, call)


def writer_to_reader(reactor: Any, writer: Any, reader: Any) -> None:
    """``reader`` takes over ``writer``'s descriptor, watched for reading instead of writing.

    Twisted would unregister it and register it again (two ``epoll_ctl`` calls);
    on the lightened epoll reactor one ``modify`` does it.
    """
    fd = writer.fileno()
    if id(reactor) in _LIGHTENED and fd in reactor._writes and fd not in reactor._reads:
        reactor._poller.modify(fd, select.EPOLLIN)
        reactor._writes.discard(fd)
        reactor._reads.add(fd)
        reactor._selectables[fd] = reader
        return
    reactor.removeWriter(writer)
    reader.startReading()


# -- systemd's sockets ---------------------------------------------------------------------------------------

def _probe_systemd() -> list[str]:
    from twisted.internet.endpoints import _SystemdParser

    record = getattr(_SystemdParser, "_sddaemon", None)
    return [f"_SystemdParser._sddaemon.{n}" for n in ("inheritedDescriptors", "inheritedNamedDescriptors")
            if not callable(getattr(record, n, None))]


SYSTEMD = decide("systemd", _probe_systemd)


def systemd_descriptors() -> Any:
    """The descriptors systemd passed (a ``twisted.python.systemd.ListenFDs``).

    Twisted reads LISTEN_FDS once, when ``twisted.internet.endpoints`` is imported, and some
    versions remove it from the environment then: the fast path asks that record; without it
    the environment is read again.
    """
    if SYSTEMD:
        from twisted.internet.endpoints import _SystemdParser

        return _SystemdParser._sddaemon
    from twisted.python.systemd import ListenFDs

    return ListenFDs.fromEnvironment()


if ALL_OFF or SWITCHED_OFF:
    log.info("edge fast paths switched off: {names}", names="all" if ALL_OFF else ", ".join(sorted(SWITCHED_OFF)))
