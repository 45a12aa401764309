# -*- test-case-name: tests.e2e.test_passthrough, tests.e2e.test_flow, tests.e2e.test_ssh -*-
"""The TCP forwarder: a client transport paired with a backend connection.

Each transport is registered as the producer for the other, so a slow
reader on one side pauses reading on the other instead of letting the edge
buffer without bound.  An EOF on one side becomes a write shutdown on the
other (half-close, which SSH and git rely on); the pair closes once both
directions are done, or at once if either side is reset.  The bytes that
were buffered while sniffing are replayed first, after an optional PROXY
header.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import tcp
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from edge.tcp.backends import Backend, BackendUnavailable, NoServerAvailable, ServerState, describe_error
from edge.ops.access_log import ConnectionInfo
from edge.ops.outcomes import CLIENT_CLOSED, CLOSED, SERVER_CLOSED, Outcome
from edge.net import splice
from edge.net.eager import write_now
from edge.net.timers import coarse

log = Logger()

# A short exchange (a TLS handshake, one small request) is cheaper through Twisted's
# buffers than set up as a splice; past this many bytes the kernel moves them.
SPLICE_AFTER = 32768
MAX_PENDING = 65536  # bytes a client may send ahead while its backend connection is being made


@implementer(IHalfCloseableProtocol)
class TcpForward(Protocol):
    """Client-side protocol: connects a backend server and splices the two."""

    transport: tcp.Connection  # the client's, handed over by the dispatcher

    def __init__(
        self,
        backend: Backend,
        info: ConnectionInfo,
        reactor: Any,
        idle_timeout: float,
        header: Callable[[ConnectionInfo], bytes] | None = None,
        endpoint_for: Any = None,
    ) -> None:
        self.backend = backend
        self.info = info
        self.reactor = reactor
        self.idle_timeout = idle_timeout
        self.header = header
        self.endpoint_for = endpoint_for
        self.peer: _BackendSide | None = None
        self.state: ServerState | None = None
        self.pending: list[bytes] = []
        self.connecting: Any = None
        self.idle_call: Any = None
        self.active = False
        self.client_eof_seen = False
        self.backend_eof_seen = False
        self.closed = False
        self.paused = False
        self.splice_at: int | None = None  # bytes relayed after which the kernel takes over (edge.net.splice)
        self.splicer: splice.Splicer | None = None
        self.spliced_before = 0  # bytes the splicer had moved at the last idle check

    # client side
    def connectionMade(self) -> None:
        self.info.backend = self.backend.name
        self.connecting = self.backend.connect(self._backend_side, self._connected, self._failed, self.endpoint_for)

    def dataReceived(self, data: bytes) -> None:
        self.active = True
        info = self.info
        info.bytes_in += len(data)
        if self.peer is not None:
            write_now(self.peer.transport, data)
            if self.splice_at is not None and info.bytes_in + info.bytes_out >= self.splice_at:
                self._try_splice()
        else:
            self.pending.append(data)
            if not self.paused and sum(map(len, self.pending)) > MAX_PENDING:
                self.paused = True  # read no more until the backend is there to take it
                self.transport.pauseProducing()

    def readConnectionLost(self) -> None:
        if self.client_eof_seen:
            return
        self.client_eof_seen = True
        if self.peer is not None:
            self.peer.transport.loseWriteConnection()
            self._maybe_done()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        if self.connecting is not None:
            self.connecting.cancel()
        if self.info.ended is None:
            self.info.ended = CLIENT_CLOSED
        if self.peer is not None:
            self.peer.transport.loseConnection()
        self._finish_if_both_gone()

    # backend side
    def _backend_side(self) -> "_BackendSide":
        return _BackendSide(self)

    def _connected(self, state: ServerState, peer: "_BackendSide") -> None:
        self.connecting = None
        self.state, self.peer = state, peer
        self.info.server = str(self.state)
        if self.closed:
            self.peer.transport.loseConnection()
            return
        out = self.peer.transport
        replay = self.pending
        if self.header is not None:
            replay.insert(0, self.header(self.info))
        if replay:
            write_now(out, b"".join(replay))  # sent in this turn, so splicing can start at once
            self.pending = []
        out.registerProducer(self.transport, True)
        self.transport.registerProducer(out, True)
        if self.client_eof_seen:
            out.loseWriteConnection()
        elif self.paused:
            self.paused = False
            self.transport.resumeProducing()
        if self.idle_timeout:
            self.idle_call = coarse(self.reactor).later(self.idle_timeout, self._check_idle)
        self.splice_at = SPLICE_AFTER if splice.eligible(self.transport) and splice.eligible(out) else None

    def _try_splice(self) -> None:
        """Move to the zero-copy path once Twisted has written everything it was given."""
        if self.closed or self.peer is None or self.peer.lost or self.client_eof_seen or self.backend_eof_seen:
            self.splice_at = None
            return
        out = self.peer.transport
        if not (splice.eligible(self.transport) and splice.eligible(out)):
            self.splice_at = None
            return
        if not (splice.flushed(self.transport) and splice.flushed(out)):
            self.splice_at = self.info.bytes_in + self.info.bytes_out + 65536  # try again a little later
            return
        self.splice_at = None
        try:
            self.splicer = splice.Splicer(self.reactor, self.transport, out, self._splice_done)
        except OSError as e:  # out of descriptors for the pipes: the ordinary path carries on
            log.warn("zero-copy forwarding unavailable ({error}); using the ordinary path", error=e.strerror or e)
            return
        self.info.spliced = True

    def _splice_done(self, failed: bool) -> None:
        splicer, self.splicer = self.splicer, None
        if splicer is not None:  # always: the splicer calls this from a later event, never while being made
            moved_in, moved_out = splicer.moved()
            self.info.bytes_in += moved_in
            self.info.bytes_out += moved_out
        if self.info.ended is None:
            self.info.ended = Outcome.ERROR.because("connection reset") if failed else CLOSED

    def _failed(self, error: Exception) -> None:
        self.connecting = None
        if isinstance(error, NoServerAvailable):
            ended = Outcome.REFUSED.because("no server available")
        elif isinstance(error, BackendUnavailable):
            ended = Outcome.ERROR.because("backend unavailable")
        else:
            if not self.closed:
                log.failure("connecting to backend {backend}", Failure(error), backend=self.backend.name)
            ended = Outcome.ERROR.because("connect failed")
        if not self.closed:
            log.warn("{client}: {why}", client=self.info.client[0], why=describe_error(error))
        self.info.ended = ended
        self.transport.loseConnection()

    def backend_data(self, data: bytes) -> None:
        self.active = True
        info = self.info
        info.bytes_out += len(data)
        write_now(self.transport, data)
        if self.splice_at is not None and info.bytes_in + info.bytes_out >= self.splice_at:
            self._try_splice()

    def backend_eof(self) -> None:
        if self.backend_eof_seen:
            return
        self.backend_eof_seen = True
        self.transport.loseWriteConnection()
        self._maybe_done()

    def backend_lost(self) -> None:
        if self.state is not None:
            self.backend.release(self.state)
            self.state = None
        if self.idle_call is not None and self.idle_call.active():
            self.idle_call.cancel()
        if self.info.ended is None:
            self.info.ended = SERVER_CLOSED
        self.transport.loseConnection()
        self._finish_if_both_gone()

    def _maybe_done(self) -> None:
        if self.client_eof_seen and self.backend_eof_seen:
            self.info.ended = CLOSED
            self.transport.loseConnection()
            if self.peer is not None:
                self.peer.transport.loseConnection()

    def _check_idle(self) -> None:
        if self.splicer is not None:  # the kernel moves the bytes: ask it whether any moved
            moved = sum(self.splicer.moved())
            self.active, self.spliced_before = self.active or moved != self.spliced_before, moved
        if self.active:
            self.active = False
            self.idle_call = coarse(self.reactor).later(self.idle_timeout, self._check_idle)
            return
        self.idle_call = None
        self.info.ended = Outcome.TIMEOUT.because("idle")
        self.transport.loseConnection()
        if self.peer is not None:
            self.peer.transport.loseConnection()

    def _finish_if_both_gone(self) -> None:
        if self.closed and (self.peer is None or self.peer.lost):
            self.info.finish(self.info.ended or CLOSED)


@implementer(IHalfCloseableProtocol)
class _BackendSide(Protocol):
    """Backend-side protocol: reports everything to its :class:`TcpForward`."""

    transport: tcp.Connection  # edge.outgoing's BackendTransport, or Twisted's tcp.Client for a host name

    def __init__(self, client: TcpForward) -> None:
        self.client = client
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.client.backend_data(data)

    def readConnectionLost(self) -> None:
        self.client.backend_eof()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        self.client.backend_lost()
