"""Twisted's TCP transports, with less system-call work per connection.

A proxy closes two sockets per forwarded connection.  Twisted's
``loseConnection`` stops reading, registers the socket for writing, waits a
reactor turn to find its buffer empty, unregisters it, then calls
``shutdown(2)`` and ``close``: three ``epoll_ctl`` calls, a ``shutdown``
that mostly fails (the peer has already closed) and a loop turn per socket.
:class:`QuickClose` closes at once when nothing is left to write, with one
``epoll_ctl`` and a plain ``close`` (the process holds no other copy of the
descriptor, so ``close`` sends the FIN; Twisted's own comment calls the
``shutdown`` unnecessary).  With data still queued it behaves exactly as
Twisted does, so nothing written is lost.

:class:`AcceptedTransport` is the transport edge's listening ports build for
each client: Twisted's ``tcp.Server`` with that close and without the log
prefix strings it formats for every connection.

:class:`CloseWatch` bounds every close: ``loseConnection`` waits until the
peer has taken every queued byte, so a peer that never reads would hold the
socket (and what it references) for ever.  Once a close is asked, a peer
that takes nothing for a grace period is aborted; one that is still reading
keeps its connection until its data is out.  An answer of the edge's own
fits in the kernel's socket buffer and closes at once; what can be left
queued is the tail of a relayed response, so the TCP grace is that of
HAProxy's usual ``timeout client`` (:data:`CLOSE_STALL`).

:class:`Linger` is nginx's ``lingering_close``: closing a socket that still
holds bytes the client sent makes the kernel reset the connection, and a
reset can destroy the answer the client has not read yet (a 413 to an
upload still under way).  When the edge closes a client connection with
unread input, it sends its FIN and reads and discards for at most
:data:`LINGER` seconds before the socket is closed.

This is the TCP layer's one fast-path module: it reads Twisted's private
write buffer (``dataBuffer``, ``offset``, ``_tempDataLen``).  Whether they
are there is checked once, at import (:data:`FAST`); without them, or with
``EDGE_FAST_PATHS=0`` in the environment, closing is Twisted's own and the
bytes queued for a peer count as unknown (0): a close then ends after
:data:`CLOSE_STALL` at most, and a warning says so once.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import termios
from typing import Any, Callable

from twisted.internet import error, main, tcp
from twisted.internet.abstract import FileDescriptor
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

_PRIVATE = ("dataBuffer", "offset", "_tempDataLen")  # Twisted's write buffer, as FileDescriptor keeps it


def _internals_present() -> bool:
    """Whether this Twisted keeps its write buffer where this module reads it."""
    probe = FileDescriptor.__new__(FileDescriptor)
    try:
        FileDescriptor.__init__(probe, reactor=object())
    except Exception:
        return False
    return all(hasattr(probe, name) for name in _PRIVATE)


FAST = os.environ.get("EDGE_FAST_PATHS", "1") != "0" and _internals_present()
_WARNED = [False]

_DONE = Failure(main.CONNECTION_DONE)  # one instance for every clean close, as Twisted's reactor does
CLOSE_STALL = 30.0  # seconds a closing TCP connection's peer may take no bytes before it is aborted
LINGER = 2.0  # seconds a closed client connection's socket keeps reading what the client still sends


def pending_bytes(transport: Any) -> int:
    """Bytes a Twisted TCP transport still holds for its peer (0 for a transport that is not one)."""
    if not FAST:
        return 0
    try:
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    except AttributeError:
        return 0


def queued_for_peer(transport: Any) -> int:
    """Bytes written to ``transport`` that its peer has not taken yet: the TLS layer's own queue (while
    a handshake is pending) and the TCP transport's buffer beneath it.  Edge's own transports answer
    this themselves (``transport.queued_for_peer()``); this walk serves any other."""
    own = getattr(transport, "queued_for_peer", None)
    if own is not None:
        return own()
    total = 0
    while transport is not None:
        if getattr(transport, "dataBuffer", None) is not None:  # no exception raised per call: it runs per request
            total += pending_bytes(transport)
        waiting = getattr(transport, "_appSendBuffer", None)
        if waiting:
            total += sum(map(len, waiting))
        transport = getattr(transport, "transport", None)
    return total


class CloseWatch:
    """Calls ``abort()`` once a closing connection's peer has taken no bytes for ``grace`` seconds.

    ``pending()`` says how many bytes still wait for the peer; ``abort()`` ends the connection
    (Twisted's ``abortConnection``: nothing more is written, ``connectionLost`` follows).
    """

    __slots__ = ("reactor", "pending", "abort", "grace", "left", "call")

    def __init__(self, reactor: Any, pending: Callable[[], int], abort: Callable[[], None], grace: float) -> None:
        self.reactor = reactor
        self.pending = pending
        self.abort = abort
        self.grace = grace
        self.left = pending()
        self.call: Any = reactor.callLater(grace, self._check)

    def _check(self) -> None:
        left = self.pending()
        if 0 < left < self.left:  # the peer is reading: give it another grace period
            self.left = left
            self.call = self.reactor.callLater(self.grace, self._check)
            return
        self.call = None
        self.abort()

    def cancel(self) -> None:
        call, self.call = self.call, None
        if call is not None and call.active():
            call.cancel()


class QuickClose:
    """``loseConnection`` that closes in this turn when the write buffer is empty."""

    _shouldShutdown = False  # close() alone ends the connection: no other process holds the socket
    # Twisted's TLS protocol is not written for a transport that reports connectionLost from inside
    # its own loseConnection call (it carries on using the TLS state it has just torn down); under
    # TLS the close waits for the next turn, as Twisted does it (see :func:`under_tls`).
    close_at_once = True
    close_watch: CloseWatch | None = None

    def loseConnection(self) -> None:
        # Twisted would close at its next write turn unless that turn resumes a producer instead.
        if FAST and self.close_at_once and self.connected and not self.disconnecting and not self._tempDataLen \
                and len(self.dataBuffer) == self.offset \
                and (self.producer is None or (self.streamingProducer and not self.producerPaused)):
            self.disconnecting = 1
            self.stopReading()
            self.stopWriting()
            self.connectionLost(_DONE)
            return
        FileDescriptor.loseConnection(self)
        if self.connected and self.close_watch is None:
            self.close_watch = CloseWatch(self.reactor, lambda: pending_bytes(self), self.abortConnection, CLOSE_STALL)

    def queued_for_peer(self) -> int:
        """Bytes written and not yet taken by the peer (a method, so that asking costs no failed lookups)."""
        if not FAST:
            return 0
        return len(self.dataBuffer) - self.offset + self._tempDataLen

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


class AcceptedTransport(QuickClose, tcp.Server):
    """A client connection accepted on one of edge's doors."""

    def __init__(self, sock: socket.socket, protocol: Any, client: tuple, server: Any, sessionno: int,
                 reactor: Any) -> None:
        tcp.Connection.__init__(self, sock, protocol, reactor)
        if len(client) != 2:
            self._addressType = tcp.address.IPv6Address
        self.server = server
        self.client = client
        self.sessionno = sessionno
        self.hostname = client[0]
        self.logstr = "edge"
        self.startReading()
        self.connected = 1

    def __repr__(self) -> str:
        return f"<{type(self.protocol).__name__} #{self.sessionno} from {self.hostname}>"

    def _closeSocket(self, orderly: bool) -> None:
        # The edge closes (``disconnecting``) while the client's bytes wait unread: linger, do not reset.
        if orderly and self.disconnecting and unread_bytes(self.socket):
            try:
                self.socket.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            else:
                Linger(self.socket, self.reactor)
                return
        super()._closeSocket(orderly)


def unread_bytes(sock: socket.socket) -> int:
    """Bytes received on ``sock`` and not read yet (FIONREAD)."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    except OSError:
        return 0


class Linger(FileDescriptor):
    """A closed client connection's socket, its FIN sent, reading and discarding until the client closes
    too or :data:`LINGER` seconds have passed; then closed."""

    def __init__(self, sock: socket.socket, reactor: Any) -> None:
        FileDescriptor.__init__(self, reactor)
        self.socket = sock
        self.fileno = sock.fileno
        self.connected = 1
        self.timer: Any = reactor.callLater(LINGER, self.connectionLost, _DONE)
        self.startReading()

    def doRead(self) -> Any:
        try:
            while self.socket.recv(65536):
                pass
        except BlockingIOError:
            return None
        except OSError:
            pass
        return main.CONNECTION_DONE  # the client's EOF (or an error): done

    def connectionLost(self, reason: Failure) -> None:
        if not self.connected:
            return
        self.connected = 0
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self.stopReading()
        try:
            self.socket.close()
        except OSError:
            pass

    def logPrefix(self) -> str:
        return "linger"


def under_tls(transport: Any, protocol: Any) -> None:
    """``protocol`` is about to run on ``transport``: if it is a TLS layer, close the Twisted way."""
    if isinstance(protocol, TLSMemoryBIOProtocol) and isinstance(transport, QuickClose):
        transport.close_at_once = False


def use_for(port: Any) -> None:
    """Make the listening ``port`` build :class:`AcceptedTransport` (TCP ports only)."""
    if not FAST and not _WARNED[0]:
        _WARNED[0] = True
        log.warn("Twisted's TCP write buffer is not where edge reads it ({names}), or EDGE_FAST_PATHS=0: "
                 "closing is Twisted's own, and the pipelining bound does not see queued answers",
                 names=", ".join(_PRIVATE))
    if isinstance(port, tcp.Port):
        port.transport = AcceptedTransport
