"""TLS termination at the dispatcher's hand-over point.

The dispatcher already has the ClientHello and its SNI; it picks the
certificate, builds a TLS server protocol around an HTTP channel, and
replays the buffered hello into it.  A name with no certificate gets a
fatal ``unrecognized_name`` alert rather than somebody else's certificate.
"""

from __future__ import annotations

from typing import Any, Callable

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from edge.connection import ConnectionInfo
from edge.eager import write_now
from edge.transports import CloseWatch, QuickClose, queued_for_peer

TLS_CLOSE_GRACE = 2.0

# A TLS record: alert (21), version 3.3, length 2, level fatal (2), unrecognized_name (112).
UNRECOGNIZED_NAME_ALERT = b"\x15\x03\x03\x00\x02\x02\x70"


try:  # pyOpenSSL's own binding of BIO_get_mem_data: how many bytes a memory BIO holds
    from OpenSSL.SSL import _ffi, _lib

    _MEM_DATA: Any = _lib.BIO_get_mem_data
except (ImportError, AttributeError):  # another pyOpenSSL: Twisted's way (ask, and catch WantReadError)
    _MEM_DATA = None


def _held(connection: Any, bio_name: str) -> int:
    """Bytes waiting in one of ``connection``'s memory BIOs; -1 if that cannot be known."""
    bio = getattr(connection, bio_name, None) if _MEM_DATA is not None else None
    return -1 if bio is None else _MEM_DATA(bio, _ffi.NULL)


class EdgeTLSProtocol(TLSMemoryBIOProtocol):
    """A TLS server connection that logs its access-log line when it ends.

    Twisted's TLS layer learns that a memory BIO is empty by asking it and
    catching ``WantReadError``: two failed pyOpenSSL calls (each allocating a
    32 KiB buffer and raising) per request on a kept-alive connection.  Here
    the BIOs are asked how much they hold instead, when pyOpenSSL says so.

    Closing: Twisted sends ``close_notify`` and then waits for the peer's
    before it closes the socket, so a client that never answers holds the
    connection for as long as it likes.  Here the socket is closed once the
    ``close_notify`` is out (as HAProxy and nginx do; TLS 1.2 and 1.3 allow
    it).  A TLS close that cannot start (writes queued behind a handshake
    that never ends, a producer that never finishes) is aborted after
    :data:`TLS_CLOSE_GRACE` seconds; once the socket itself is closing, its
    transport's :class:`CloseWatch` bounds the rest.
    """

    close_watch: CloseWatch | None = None

    def __init__(self, factory: Any, wrapped: Any, info: ConnectionInfo, reactor: Any) -> None:
        super().__init__(factory, wrapped)
        self.info = info
        self.reactor = reactor

    def dataReceived(self, data: bytes) -> None:
        self.info.bytes_in += len(data)
        if self._handshakeDone and not self._appSendBuffer:  # the steady state: Twisted's steps, inline
            self._tlsConnection.bio_write(data)
            self._flushReceiveBIO()
            return
        super().dataReceived(data)

    def write(self, data: bytes) -> None:
        # One record's worth with nothing queued before it (a response head, a small body): straight to
        # OpenSSL and out.  A memory BIO never makes SSL_write wait, so this is Twisted's _write minus its loop.
        if self._handshakeDone and not self.disconnecting and not self._appSendBuffer \
                and not self._lostTLSConnection and len(data) <= 16384 and type(data) is bytes and data:
            try:
                self._tlsConnection.send(data)
            except WantReadError:
                self._bufferedWrite(data)
                return
            except Error:
                self._tlsShutdownFinished(Failure())
                return
            self._flushSendBIO()
            return
        super().write(data)

    def _flushSendBIO(self) -> None:
        # As Twisted's, but the TLS records go out in this reactor turn (edge.eager).
        connection = self._tlsConnection
        held = _held(connection, "_from_ssl")
        if held == 0:
            return
        try:
            data = connection.bio_read(held if held > 0 else 2**15)
        except WantReadError:
            return
        self.info.bytes_out += len(data)
        write_now(self.transport, data)

    def _flushReceiveBIO(self) -> None:
        # Twisted's loop, except that it stops once OpenSSL and its input BIO hold nothing more,
        # rather than after a last recv that can only raise WantReadError.
        connection = self._tlsConnection
        while not self._lostTLSConnection:
            try:
                data = connection.recv(2**15)
            except WantReadError:
                break
            except ZeroReturnError:  # the client's close_notify
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except Error:
                self._tlsShutdownFinished(Failure())
            else:
                if not self._aborted:
                    ProtocolWrapper.dataReceived(self, data)
                if connection is self._tlsConnection and not connection.pending() \
                        and _held(connection, "_into_ssl") == 0:
                    break
        self._flushSendBIO()

    def loseConnection(self) -> None:
        if getattr(self, "_producer", None) is not None and not self.disconnecting:
            # Twisted's HTTP/2 channel stays registered as this connection's producer; its TLS close would
            # wait for it for ever (HTTPChannel unregisters itself first, H2Connection does not).
            self.unregisterProducer()
        super().loseConnection()
        if self.close_watch is None and self.transport is not None and self.transport.connected \
                and not self.transport.disconnecting:
            self.close_watch = CloseWatch(self.reactor, self._pending, self._stuck, TLS_CLOSE_GRACE)

    def queued_for_peer(self) -> int:
        """Bytes written and not yet taken by the client: queued behind the handshake, and in the socket's buffer."""
        waiting = self._appSendBuffer
        below = self.transport
        return (sum(map(len, waiting)) if waiting else 0) + (
            below.queued_for_peer() if isinstance(below, QuickClose) else queued_for_peer(below))

    def _pending(self) -> int:
        return sum(map(len, getattr(self, "_appSendBuffer", ())))

    def _stuck(self) -> None:
        self.close_watch = None
        if not self.transport.disconnecting:  # the TLS close never began
            self.abortConnection()

    def _shutdownTLS(self) -> None:
        super()._shutdownTLS()
        if not self.transport.disconnecting:  # close_notify is on its way: the peer's is not awaited
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        if self.close_watch is not None:
            self.close_watch.cancel()
            self.close_watch = None
        try:
            super().connectionLost(reason)
        finally:
            self.info.finish(self.info.ended or "closed")


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
