# -*- test-case-name: tests.e2e.test_passthrough, tests.e2e.test_backends -*-
"""Outgoing TCP connections to backend servers named by an IP address, without a connector.

Twisted's ``connectTCP`` (and the endpoints over it) builds a connector and
a client transport that starts its connect in a later reactor turn, fires
two Deferreds, puts a wrapping protocol between the transport and ours, and
registers the socket with epoll three times.  A proxy opens one backend
connection per client connection, so that machinery was a large part of
what a forwarded connection cost.  A server named by an IP address needs
none of it: :class:`TCPEndpoint` starts a non-blocking ``connect``, waits
once for the socket to become writable, and gives the protocol a
:class:`BackendTransport` (in :mod:`edge.net.fastpath`: it is built
from Twisted's ``tcp.Connection``), so back-pressure, half-close, eager
writes and splicing work on it as on Twisted's own transports.

:meth:`TCPEndpoint.open` reports through plain callbacks (no Deferred per
connection); :meth:`TCPEndpoint.connect` offers the usual endpoint interface
on top of it, so TLS wrappers and health checks use the same endpoint.
"""

from __future__ import annotations

import os
import socket
import _socket
from errno import ECONNREFUSED, EINPROGRESS, EWOULDBLOCK
from typing import Any, Callable, Generic, TypeVar

from twisted.internet import error, tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamClientEndpoint, ITransport
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from zope.interface import implementer

from edge.net.fastpath import BackendTransport, backend_address, writer_to_reader
from edge.net.timers import coarse
from edge.net.transports import under_tls

P = TypeVar("P", bound=Protocol)  # the protocol a connect builds, and hands to its on_open
Failed = Callable[[Exception], None]

__all__ = ["BackendTransport", "Connecting", "TCPEndpoint", "open_endpoint"]


class Connecting(Generic[P]):
    """One connect in progress: registered with the reactor until the socket is writable."""

    __slots__ = ("reactor", "sock", "fd", "peer", "build", "on_open", "on_fail", "timer")

    def __init__(self, reactor: Any, peer: tuple[str, int], family: int, timeout: float,
                 build: Callable[[], P], on_open: Callable[[P], None], on_fail: Failed) -> None:
        self.reactor, self.peer = reactor, peer
        self.build: Callable[[], P] | None = build  # the three are dropped once one of the ends is reported
        self.on_open: Callable[[P], None] | None = on_open
        self.on_fail: Failed | None = on_fail
        self.timer: Any = None
        self.sock: _socket.socket | None = None
        try:  # the C-level socket type: the Python wrapper class adds nothing a transport uses, and costs a call
            sock = _socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as e:  # out of descriptors, say
            self._report(error.getConnectError((e.errno, e.strerror)))
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            result = sock.connect_ex(peer)
        except OSError as e:
            sock.close()
            self._report(error.getConnectError((e.errno, e.strerror)))
            return
        if result and result not in (EINPROGRESS, EWOULDBLOCK):
            sock.close()
            self._report(error.getConnectError((result, os.strerror(result))))
            return
        self.sock, self.fd = sock, sock.fileno()
        reactor.addWriter(self)
        if timeout:
            self.timer = coarse(reactor).later(timeout, self._timed_out)

    # what the reactor calls
    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "connecting"

    def doRead(self) -> None:
        self.doWrite()

    def doWrite(self) -> None:
        sock, build, on_open = self.sock, self.build, self.on_open
        if sock is None or build is None or on_open is None:  # all set while connecting
            return
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._stop()
            sock.close()
            self._report(error.getConnectError((err, os.strerror(err))))
            return
        self.sock = None
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()
        try:
            protocol = build()
            # Twisted types a transport's socket as socket.socket; it calls only what the C-level one has
            transport = BackendTransport(sock, protocol, self.reactor, self.peer)  # type: ignore[arg-type]
            under_tls(transport, protocol)
            writer_to_reader(self.reactor, self, transport)
            protocol.makeConnection(transport)
        except Exception as e:  # a bug above us: the connection is useless, say so rather than leak it
            self.reactor.removeWriter(self)
            self.reactor.removeReader(self)
            sock.close()
            self._report(e)
            return
        self.on_open = self.on_fail = self.build = None
        on_open(protocol)

    def connectionLost(self, reason: Failure) -> None:
        """epoll reported an error or hang-up on the connecting socket (the reactor dropped it)."""
        sock = self.sock
        if sock is None:
            return
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or ECONNREFUSED
        self._stop()
        sock.close()
        self._report(error.getConnectError((err, os.strerror(err))))

    # the caller's side
    def cancel(self) -> None:
        """Give up: close the socket, report nothing."""
        sock = self.sock
        self.on_open = self.on_fail = self.build = None
        if sock is not None:
            self._stop()
            sock.close()

    def _timed_out(self) -> None:
        self.timer = None
        sock = self.sock
        if sock is None:
            return
        self._stop()
        sock.close()
        self._report(error.TimeoutError())

    def _stop(self) -> None:
        self.reactor.removeWriter(self)
        self.sock = None
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _report(self, exc: Exception) -> None:
        on_fail, self.on_open, self.on_fail, self.build = self.on_fail, None, None, None
        if on_fail is not None:
            on_fail(exc)


@implementer(IStreamClientEndpoint)
class TCPEndpoint:
    """A backend server named by an IP address (v4 or v6)."""

    def __init__(self, reactor: Any, host: str, port: int, timeout: float) -> None:
        self.reactor = reactor
        self.peer = (host, port)
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.timeout = timeout

    def open(self, build: Callable[[], P], on_open: Callable[[P], None], on_fail: Failed) -> Connecting[P]:
        """Connect; ``on_open(protocol)`` once ``build()``'s protocol is connected, or ``on_fail(error)``.

        Either may be called before this returns (an immediate failure).
        """
        return Connecting(self.reactor, self.peer, self.family, self.timeout, build, on_open, on_fail)

    def connect(self, factory: Any) -> Deferred:
        """The endpoint interface: a Deferred firing with the connected protocol."""
        peer = self.peer

        def build() -> Protocol:
            protocol = factory.buildProtocol(backend_address(*peer))
            if protocol is None:
                raise error.ConnectError(string="the factory built no protocol")
            return protocol

        attempt: list[Connecting[Protocol]] = []
        result: Deferred = Deferred(lambda _: attempt[0].cancel() if attempt else None)

        def failed(e: Exception) -> None:
            if not result.called:
                result.errback(e)

        attempt.append(self.open(build, result.callback, failed))
        return result


def open_endpoint(endpoint: Any, build: Callable[[], P], on_open: Callable[[P], None], on_fail: Failed) -> Any:
    """Connect through any endpoint with plain callbacks; returns something with ``cancel()``.

    :class:`TCPEndpoint` does it without a Deferred; other endpoints (host
    names, TLS wrappers) go through their own ``connect``.
    """
    if type(endpoint) is TCPEndpoint:
        return endpoint.open(build, on_open, on_fail)
    return _Attempt(endpoint, build, on_open, on_fail)


class _Attempt(Factory, Generic[P]):  # not Factory[Protocol]: Twisted 23.10's Factory is not generic
    """A connect through another endpoint, reported like :class:`Connecting` (nothing after ``cancel``)."""

    noisy = False

    def __init__(self, endpoint: Any, build: Callable[[], P], on_open: Callable[[P], None], on_fail: Failed) -> None:
        self.build: Callable[[], P] | None = build
        self.cancelled = False
        self.attempt = endpoint.connect(self)
        self.attempt.addCallbacks(self._opened, self._failed, callbackArgs=(on_open,), errbackArgs=(on_fail,))

    def buildProtocol(self, addr: Any) -> Protocol:
        build, self.build = self.build, None  # the connector keeps this factory as long as the connection
        return build() if build is not None else _Surplus()

    def _opened(self, protocol: P, on_open: Callable[[P], None]) -> None:
        transport = protocol.transport  # connected: a TCP transport, or a TLS wrapper that passes calls down
        if self.cancelled:
            if transport is not None:
                transport.loseConnection()
            return
        if isinstance(transport, (tcp.Connection, ProtocolWrapper)):  # a TLS wrapper passes it down
            transport.setTcpNoDelay(True)  # as on our own connections
        on_open(protocol)

    def _failed(self, failure: Failure, on_fail: Failed) -> None:
        if not self.cancelled:
            reason = failure.value
            on_fail(reason if isinstance(reason, Exception) else error.ConnectError(string=repr(reason)))

    def cancel(self) -> None:
        self.cancelled = True
        self.attempt.cancel()


class _Surplus(Protocol):
    """A second connection from a racing connect attempt (several addresses for one name): not wanted."""

    transport: ITransport  # connected

    def connectionMade(self) -> None:
        self.transport.loseConnection()
