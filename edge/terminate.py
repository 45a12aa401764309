"""TLS termination at the dispatcher's hand-over point.

The dispatcher already has the ClientHello and its SNI; it picks the
certificate, builds a TLS server protocol around an HTTP channel, and
replays the buffered hello into it.  A name with no certificate gets a
fatal ``unrecognized_name`` alert rather than somebody else's certificate.
"""

from __future__ import annotations

from typing import Any, Callable

from OpenSSL.SSL import WantReadError
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from edge.connection import ConnectionInfo
from edge.eager import write_now

# A TLS record: alert (21), version 3.3, length 2, level fatal (2), unrecognized_name (112).
UNRECOGNIZED_NAME_ALERT = b"\x15\x03\x03\x00\x02\x02\x70"


class EdgeTLSProtocol(TLSMemoryBIOProtocol):
    """A TLS server connection that logs its access-log line when it ends."""

    def __init__(self, factory: Any, wrapped: Any, info: ConnectionInfo) -> None:
        super().__init__(factory, wrapped)
        self.info = info

    def dataReceived(self, data: bytes) -> None:
        self.info.bytes_in += len(data)
        super().dataReceived(data)

    def _flushSendBIO(self) -> None:
        # As Twisted's, but the TLS records go out in this reactor turn (edge.eager).
        try:
            data = self._tlsConnection.bio_read(2**15)
        except WantReadError:
            return
        write_now(self.transport, data)

    def connectionLost(self, reason: Failure) -> None:
        try:
            super().connectionLost(reason)
        finally:
            self.info.finish(self.info.ended or "closed")

    def switch(self, protocol: Any, data: bytes) -> None:
        """Give the decrypted stream to ``protocol`` (a WebSocket tunnel)."""
        self.wrappedProtocol = protocol
        protocol.makeConnection(self)
        if data:
            protocol.dataReceived(data)


@implementer(IHandshakeListener)
class AlpnSwitch(Protocol):
    """Waits for the handshake, then gives the connection to the protocol ALPN chose.

    ``choose(negotiated)`` builds it (HTTP/2 for ``h2``, HTTP/1.1 otherwise).
    A handshake not done within ``timeout`` seconds is cut.
    """

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
        self.info.ended = "timeout: TLS handshake"
        self.transport.abortConnection()

    def handshakeCompleted(self) -> None:
        self._cancel()
        protocol = self.choose(self.transport.negotiatedProtocol)
        self.transport.wrappedProtocol = protocol
        protocol.makeConnection(self.transport)

    def connectionLost(self, reason: Failure = None) -> None:
        self._cancel()

    def _cancel(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()
