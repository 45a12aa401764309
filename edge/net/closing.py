# -*- test-case-name: tests.e2e.test_transports, tests.e2e.test_hostile_h2 -*-
"""Bounded and lingering closes, on Twisted's public API.

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
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from typing import Any, Callable

from twisted.internet import main
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

DONE = Failure(main.CONNECTION_DONE)  # one instance for every clean close, as Twisted's reactor does
CLOSE_STALL = 30.0  # seconds a closing TCP connection's peer may take no bytes before it is aborted
LINGER = 2.0  # seconds a closed client connection's socket keeps reading what the client still sends
LINGER_TIME = 30.0  # seconds a closed client connection lingers at most, however slowly it reads (nginx lingering_time)


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


def unread_bytes(sock: socket.socket) -> int:
    """Bytes received on ``sock`` and not read yet (FIONREAD)."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    except OSError:
        return 0


def queued_output(sock: socket.socket) -> int:
    """Bytes written to ``sock`` that the peer has not acknowledged yet (TIOCOUTQ: unsent and unacknowledged)."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except OSError:
        return 0


def keep_lingering(before: int, now: int, elapsed: float) -> bool:
    """Whether a lingering socket lingers one more :data:`LINGER` period: the client has taken some of the
    output queued for it since the last look (``before`` bytes then, ``now`` bytes now; its last bytes
    too, so that it has a period to read them and answer), and :data:`LINGER_TIME` has not passed."""
    return now < before and elapsed + LINGER <= LINGER_TIME


class Linger(FileDescriptor):
    """A closed client connection's socket, its FIN sent, reading and discarding until the client closes
    too, or until :data:`LINGER` seconds have passed with the client taking none of the output still queued
    for it (:func:`keep_lingering`); then closed.

    Closing a socket that receives bytes after the close makes Linux reset the connection and drop what it
    still had to send: an HTTP/2 client answers each DATA frame it reads with WINDOW_UPDATE, so closing
    under a queued download tail would cut it (a test failed 1 run in 10 that way)."""

    def __init__(self, sock: socket.socket, reactor: Any, queued: Callable[[], int] | None = None) -> None:
        FileDescriptor.__init__(self, reactor)
        self.clock: IReactorTime = reactor
        self.socket = sock
        self.connected = 1
        self.queued = queued or (lambda: queued_output(sock))
        self.left = self.queued()
        self.since = reactor.seconds()
        self.timer: IDelayedCall | None = reactor.callLater(LINGER, self._check)
        self.startReading()

    def fileno(self) -> int:
        return self.socket.fileno()

    def _check(self) -> None:
        self.timer = None
        left = self.queued()
        if keep_lingering(self.left, left, self.clock.seconds() - self.since):
            self.left = left
            self.timer = self.clock.callLater(LINGER, self._check)
            return
        self.connectionLost(DONE)

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
