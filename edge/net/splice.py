# -*- test-case-name: tests.unit.net.test_fastpath, tests.e2e.test_observability -*-
"""Zero-copy forwarding on Linux: ``os.splice`` through a pipe per direction.

Once a forwarded TCP connection has written its replayed prefix (and PROXY
header), the two sockets are taken away from Twisted's reading and writing
and bytes move socket → pipe → socket inside the kernel, driven by the
reactor's readiness events: Python runs once per readiness event, never per
byte.  Back-pressure is the pipe: when the destination cannot take more,
the source is no longer read until the pipe drains.  An EOF becomes a
write shutdown of the other socket (half-close); when both directions are
done, or either side fails, the sockets go back to Twisted to be closed,
so the normal ``connectionLost`` path runs.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
from typing import Any, Callable

from twisted.internet import tcp
from twisted.python.failure import Failure

from edge.net import fastpath

# Splicing starts once Twisted's write buffer is known to be empty: that reads its internals (fast path ``splice``).
HAVE_SPLICE = hasattr(os, "splice") and hasattr(os, "SPLICE_F_NONBLOCK") and not os.environ.get("EDGE_NO_SPLICE") \
    and fastpath.SPLICE
CHUNK = 1 << 20
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
FLAGS = (getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)) if HAVE_SPLICE else 0


def _no_splice(*args: object) -> int:
    raise OSError(errno.ENOSYS, "os.splice is missing")  # never called: HAVE_SPLICE is False


_splice = getattr(os, "splice", _no_splice)
EPOLLIN, EPOLLOUT = getattr(select, "EPOLLIN", 1), getattr(select, "EPOLLOUT", 4)
_TROUBLE = getattr(select, "EPOLLERR", 8) | getattr(select, "EPOLLHUP", 16)


def eligible(transport: Any) -> bool:
    """A plain TCP transport of Twisted's whose socket we can take (not TLS: wrappers delegate attributes)."""
    return HAVE_SPLICE and isinstance(transport, tcp.Connection) and bool(transport.connected) \
        and not transport.disconnecting


flushed = fastpath.flushed  # Twisted has no bytes waiting to be written on a transport


_SPARE_PIPES: list[tuple[int, int]] = []
MAX_SPARE_PIPES = 64


def _acquire_pipe() -> tuple[int, int]:
    """An empty pipe: pipes are held only while bytes are in flight, so idle connections cost no descriptors."""
    if _SPARE_PIPES:
        return _SPARE_PIPES.pop()
    read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.fcntl(write_fd, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # the default 64 KiB pipe works too
    return read_fd, write_fd


def _release_pipe(fds: tuple[int, int], empty: bool) -> None:
    if empty and len(_SPARE_PIPES) < MAX_SPARE_PIPES:
        _SPARE_PIPES.append(fds)
        return
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class _Pipe:
    """One direction: what ``src`` sends goes to ``dst`` through a kernel pipe.

    This runs once per readiness event of a busy connection, so it keeps to
    local variables and skips the epoll calls whose state is already right.
    """

    __slots__ = ("src", "dst", "read_fd", "write_fd", "pending", "eof", "done", "moved")

    def __init__(self, src: "_End", dst: "_End") -> None:
        self.src, self.dst = src, dst
        self.read_fd = self.write_fd = -1  # no pipe while nothing is in flight
        self.pending = 0  # bytes in the pipe
        self.moved = 0  # bytes taken from src so far
        self.eof = False
        self.done = False

    def pull(self) -> None:
        """``src`` is readable: move what it has into the pipe, then on to ``dst``."""
        if self.read_fd < 0:
            self.read_fd, self.write_fd = _SPARE_PIPES.pop() if _SPARE_PIPES else _acquire_pipe()
        try:
            n = _splice(self.src.fd, self.write_fd, CHUNK, None, None, FLAGS)  # positional: keywords cost a parse
        except BlockingIOError:  # a spurious wake-up, or the pipe is full: push() will resume us
            if not self.pending:
                _release_pipe((self.read_fd, self.write_fd), empty=True)
                self.read_fd = self.write_fd = -1
            return
        if n:
            self.pending += n
            self.moved += n
        else:
            self.eof = True
            self.src.want_read(False)
        self.push()

    def push(self) -> None:
        """Drain the pipe into ``dst``; pause ``src`` while ``dst`` is full."""
        pending, dst = self.pending, self.dst
        while pending:
            try:
                pending -= _splice(self.read_fd, dst.fd, pending, None, None, FLAGS)
            except BlockingIOError:
                self.pending = pending
                self.src.want_read(False)
                dst.want_write(True)
                return
        self.pending = 0
        if self.read_fd >= 0:
            if len(_SPARE_PIPES) < MAX_SPARE_PIPES:
                _SPARE_PIPES.append((self.read_fd, self.write_fd))
            else:
                _release_pipe((self.read_fd, self.write_fd), empty=False)
            self.read_fd = self.write_fd = -1
        if dst.writing:
            dst.want_write(False)
        if self.eof:
            if not self.done:
                self.done = True
                try:
                    dst.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
        elif not self.src.reading:
            self.src.want_read(True)

    def close(self) -> None:
        if self.read_fd >= 0:
            _release_pipe((self.read_fd, self.write_fd), empty=self.pending == 0)
            self.read_fd = self.write_fd = -1


class _End:
    """One socket as the reactor sees it while spliced: readable feeds out, writable drains in."""

    __slots__ = ("splicer", "transport", "sock", "fd", "outgoing", "incoming", "reading", "writing")
    outgoing: _Pipe  # what this socket sends, and what it receives: set by the Splicer that made both ends
    incoming: _Pipe

    def __init__(self, splicer: "Splicer", transport: Any) -> None:
        self.splicer = splicer
        self.transport = transport
        self.sock = transport.socket
        self.fd = self.sock.fileno()
        self.reading = False
        self.writing = False

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "splice"

    def want_read(self, on: bool) -> None:
        if on != self.reading and self.splicer.active:
            self.reading = on
            (self.splicer.reactor.addReader if on else self.splicer.reactor.removeReader)(self)

    def want_write(self, on: bool) -> None:
        if on != self.writing and self.splicer.active:
            self.writing = on
            (self.splicer.reactor.addWriter if on else self.splicer.reactor.removeWriter)(self)

    def on_event(self, event: int) -> None:
        """The epoll event mask, straight from the lightened event loop (edge.net.fastpath.DIRECT)."""
        if event & EPOLLIN or (event & _TROUBLE and self.reading):
            pipe = self.outgoing  # an error or hang-up shows as a failing or empty splice
            try:
                pipe.pull()
            except OSError as e:
                self.splicer.failed(e)
                return
            if pipe.done:
                self.splicer.check_done()
        if (event & EPOLLOUT or event & _TROUBLE) and self.writing and self.splicer.active:
            self.doWrite()

    def doRead(self) -> None:  # from Twisted's event dispatch (any reactor other than the lightened epoll one)
        self.on_event(EPOLLIN)

    def doWrite(self) -> None:
        pipe = self.incoming
        try:
            pipe.push()
        except OSError as e:
            self.splicer.failed(e)
            return
        if pipe.done:
            self.splicer.check_done()

    def connectionLost(self, reason: Failure) -> None:
        self.splicer.finish(reason)


fastpath.DIRECT.add(_End)


class Splicer:
    """Splices a client and a backend TCP transport until both directions end.

    ``moved()`` tells the bytes carried each way so far; ``on_done(failed)``
    is called once, before the transports are handed back to be closed.
    """

    def __init__(self, reactor: Any, client: Any, backend: Any, on_done: Callable[[bool], None]) -> None:
        self.reactor = reactor
        self.active = True
        self.on_done = on_done
        self.client, self.backend = _End(self, client), _End(self, backend)
        self.upstream = _Pipe(self.client, self.backend)
        self.downstream = _Pipe(self.backend, self.client)
        _release_pipe(_acquire_pipe(), empty=True)  # fail here (EMFILE), before the sockets are taken
        for transport in (client, backend):
            transport.unregisterProducer()
            transport.stopReading()
            transport.stopWriting()
        self.client.outgoing = self.backend.incoming = self.upstream
        self.backend.outgoing = self.client.incoming = self.downstream
        self.client.want_read(True)
        self.backend.want_read(True)

    def moved(self) -> tuple[int, int]:
        """Bytes spliced (from the client, from the backend) so far."""
        return self.upstream.moved, self.downstream.moved

    def failed(self, error: OSError) -> None:
        self.finish(Failure(error), reset=error.errno in (errno.ECONNRESET, errno.EPIPE))

    def check_done(self) -> None:
        if self.upstream.done and self.downstream.done:
            self.finish(None)

    def finish(self, reason: Failure | None, reset: bool = False) -> None:
        """Hand both sockets back to Twisted, which closes them and reports connectionLost."""
        if not self.active:
            return
        for end in (self.client, self.backend):
            end.want_read(False)
            end.want_write(False)
        self.active = False
        for pipe in (self.upstream, self.downstream):
            pipe.close()
        self.on_done(reason is not None)
        for end in (self.client, self.backend):
            if reason is not None:
                end.transport.abortConnection()
            else:
                end.transport.loseConnection()
