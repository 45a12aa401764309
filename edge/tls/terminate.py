# -*- test-case-name: tests.e2e.test_terminate, tests.unit.tls.test_terminate -*-
"""TLS termination at the dispatcher's hand-over point.

The dispatcher already has the ClientHello and its SNI; it picks the
certificate, builds a TLS server protocol around an HTTP channel, and
replays the buffered hello into it.  A name with no certificate gets a
fatal ``unrecognized_name`` alert rather than somebody else's certificate.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IHandshakeListener
from twisted.internet import tcp
from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from edge.ops.access_log import ConnectionInfo
from edge.ops.outcomes import CLOSED, Outcome
from edge.tls.fast_tls import FastTLSProtocol
from edge.net.transports import CloseWatch, QuickClose, queued_for_peer

TLS_CLOSE_GRACE = 2.0

# A TLS record: alert (21), version 3.3, length 2, level fatal (2), unrecognized_name (112).
UNRECOGNIZED_NAME_ALERT = b"\x15\x03\x03\x00\x02\x02\x70"


class EdgeTLSProtocol(FastTLSProtocol):
    """A TLS server connection that logs its access-log line when it ends.

    What it does faster than Twisted, through pyOpenSSL's and Twisted's
    internals, is in :class:`edge.tls.fast_tls.FastTLSProtocol` (each piece
    probed at import and switchable).

    Closing: Twisted sends ``close_notify`` and then waits for the peer's
    before it closes the socket, so a client that never answers holds the
    connection for as long as it likes.  With the ``tls_close`` fast path
    the socket is closed once the ``close_notify`` is out; without it, a
    close still waiting after :data:`TLS_CLOSE_GRACE` seconds is aborted.
    A TLS close that cannot start (writes queued behind a handshake that
    never ends, a producer that never finishes) is aborted after
    :data:`TLS_CLOSE_GRACE` seconds; once the socket itself is closing, its
    transport's :class:`CloseWatch` bounds the rest.
    """

    close_watch: CloseWatch | None = None
    transport: tcp.Connection  # the client's, handed over by the dispatcher

    def __init__(self, factory: Any, wrapped: Any, info: ConnectionInfo, reactor: Any) -> None:
        super().__init__(factory, wrapped)
        self.info = info
        self.reactor = reactor

    def loseConnection(self) -> None:
        if not self.disconnecting:
            # Twisted's HTTP/2 channel stays registered as this connection's producer; its TLS close would
            # wait for it for ever (HTTPChannel unregisters itself first, H2Connection does not).  Twisted's
            # unregisterProducer does nothing when no producer is registered.
            self.unregisterProducer()
        super().loseConnection()
        if self.close_watch is None and self.transport is not None and self.transport.connected \
                and not self.transport.disconnecting:
            self.close_watch = CloseWatch(self.reactor, self.queued_tls, self._stuck, TLS_CLOSE_GRACE)

    def queued_for_peer(self) -> int:
        """Bytes written and not yet taken by the client: queued behind the handshake, and in the socket's buffer."""
        below = self.transport
        return self.queued_tls() + (below.queued_for_peer() if isinstance(below, QuickClose)
                                    else queued_for_peer(below))

    def _stuck(self) -> None:
        self.close_watch = None
        if not self.transport.disconnecting:  # the TLS close never began
            self.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.close_watch is not None:
            self.close_watch.cancel()
            self.close_watch = None
        try:
            super().connectionLost(reason)
        finally:
            self.info.finish(self.info.ended or CLOSED)


@implementer(IHandshakeListener)
class AlpnSwitch(Protocol):
    """Waits for the handshake, then gives the connection to the protocol ALPN chose.

    ``choose(negotiated)`` builds it (HTTP/2 for ``h2``, HTTP/1.1 otherwise).
    A handshake not done within ``timeout`` seconds is cut.
    """

    transport: TLSMemoryBIOProtocol  # the TLS connection whose handshake this waits for

    def __init__(self, choose: Callable[[bytes | None], Protocol], info: ConnectionInfo,
                 reactor: Any, timeout: float) -> None:
        self.choose = choose
        self.info = info
        self.reactor = reactor
        self.timeout = timeout
        self.timer: Any = None

    def connectionMade(self) -> None:
        self.timer = self.reactor.callLater(self.timeout, self._too_slow)

    def _too_slow(self) -> None:
        self.timer = None
        self.info.ended = Outcome.TIMEOUT.because("TLS handshake")
        self.transport.abortConnection()

    def handshakeCompleted(self) -> None:
        self._cancel()
        protocol = self.choose(self.transport.negotiatedProtocol)
        self.transport.wrappedProtocol = protocol
        protocol.makeConnection(self.transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel()

    def _cancel(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()


class ValidationAnswered(Protocol):
    """Inside a TLS-ALPN-01 validation's connection (RFC 8737): the handshake with the challenge certificate
    is the whole answer, so nothing is read.  Its end is logged like any connection's, and a validator (or
    anyone sending ``acme-tls/1``) that keeps it open is cut after ``timeout``."""

    transport: TLSMemoryBIOProtocol  # the validation's TLS connection

    def __init__(self, info: ConnectionInfo, reactor: Any, timeout: float) -> None:
        self.info, self.reactor, self.timeout = info, reactor, timeout
        self.timer: Any = None

    def connectionMade(self) -> None:
        self.timer = self.reactor.callLater(self.timeout, self._too_long)

    def _too_long(self) -> None:
        self.timer = None
        self.info.ended = Outcome.TIMEOUT.because("validation connection")
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.info.finish(self.info.ended or CLOSED)
