# -*- test-case-name: tests.e2e.test_h1_to_h2, tests.e2e.test_grpc -*-
"""HTTP/2 to a backend's servers (``protocol = "h2"``): a few connections per server, streams multiplexed.

The Twisted shell around :class:`edge.http.h2.H2ClientCodec`.  An
:class:`H2Pool` finds a request a connection with a free stream (opening
one when every connection of the chosen server is full); the request's
exchange owns its stream and hears of it through :class:`StreamOwner`.
``http://`` servers are spoken to in h2c with prior knowledge, ``https://``
ones with ALPN ``h2`` (a server that does not choose it fails the
connection).  Trailers pass both ways, so gRPC works through edge.

Flow control carries back-pressure: the exchange acknowledges response
bytes only as its client takes them, so a slow client closes its stream's
window at the backend and nothing else waits.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol as TypingProtocol

from twisted.internet.interfaces import ITransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from edge.tcp.backends import Backend, ServerAttempt, ServerState, unavailable
from edge.net.event_loop import after_events
from edge.http.events import Aborted, Body, BodyEnd, Draining, Ended, Response, Trailers, WindowOpened
from edge.http.h2 import H2ClientCodec
from edge.net.timers import coarse

log = Logger()

MAX_CONNECTIONS_PER_SERVER = 8
MAX_WAITING = 1024  # requests waiting for a stream of a connection being opened


class StreamOwner(TypingProtocol):
    """What a request offers the HTTP/2 backend connection carrying it."""

    closed: bool

    def stream_ready(self, connection: "H2BackendConnection") -> None: ...
    def upstream_unavailable(self, status: int, reason: str) -> None: ...
    def stream_response(self, status: int, fields: list[tuple[bytes, bytes]], ended: bool) -> None: ...
    def stream_body(self, data: bytes, size: int) -> None: ...
    def stream_trailers(self, fields: list[tuple[bytes, bytes]]) -> None: ...
    def stream_end(self) -> None: ...
    def stream_window(self) -> None: ...
    def stream_failed(self, reason: str, before_response: bool, unprocessed: bool = False) -> None: ...


class H2BackendConnection(Protocol):
    """One HTTP/2 connection to one server."""

    transport: ITransport  # connected (a TCP connection, or TLS over one)

    def __init__(self, pool: "H2Pool", state: ServerState, tls: bool) -> None:
        self.pool = pool
        self.state = state
        self.tls = tls
        self.codec = H2ClientCodec()
        self.owners: dict[int, StreamOwner] = {}
        self.lost = False
        self.checked = not tls  # ALPN checked (TLS) once the handshake is done
        self.flush_pending = False
        self.reactor = pool.reactor
        self.served = 0
        self.timer: Any = None

    def connectionMade(self) -> None:
        self.transport.write(self.codec.data_to_send())
        # The server's SETTINGS (after a TLS handshake) must come within the connect timeout.
        self.timer = coarse(self.reactor).later(self.pool.backend_timeout, self._settings_late)

    def _settings_late(self) -> None:
        self.timer = None
        if self.lost:
            return
        if not self.codec.settings_seen:
            self._fail(f"no HTTP/2 SETTINGS from the server within {self.pool.backend_timeout:g}s")
        elif self.codec.pinged:  # a check began while this timer ran
            self.timer = coarse(self.reactor).later(self.pool.backend_timeout, self._pong_late)

    def check(self) -> None:
        """A request on this connection timed out: a PING tells a server that is slow from a connection
        that carries nothing any more (a peer gone without a FIN); the latter is dropped."""
        if self.lost or self.codec.pinged:
            return
        self.codec.ping()
        self.flush()
        if self.timer is None:
            self.timer = coarse(self.reactor).later(self.pool.backend_timeout, self._pong_late)

    def _pong_late(self) -> None:
        self.timer = None
        if self.codec.pinged and not self.lost:
            self._fail(f"no answer to a PING within {self.pool.backend_timeout:g}s")

    def has_room(self) -> bool:
        return not self.lost and self.codec.room() > 0

    def open_stream(self, owner: StreamOwner, fields: list[tuple[bytes, bytes]], end: bool) -> int:
        stream = self.codec.request(fields, end)
        self.owners[stream] = owner
        self.state.active += 1
        self.served += 1
        self.flush()
        return stream

    def close_stream(self, stream: int, reset: bool) -> None:
        """The exchange is done with ``stream`` (reset it if it is still open)."""
        if self.owners.pop(stream, None) is not None:
            self.pool.backend.release(self.state)
        if reset:
            self.codec.reset(stream)
            self.flush()
        if self.codec.draining and not self.owners:
            self.flush_now()
            self.transport.loseConnection()
            return
        self.pool.freed(self)

    def flush(self) -> None:
        if not self.flush_pending:
            self.flush_pending = True
            after_events(self.reactor, self.flush_now)

    def flush_now(self) -> None:
        self.flush_pending = False
        data = self.codec.data_to_send()
        if data and not self.lost:
            self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        if not self.checked:
            self.checked = True
            if getattr(self.transport, "negotiatedProtocol", None) != b"h2":
                self._fail("the server did not agree to HTTP/2 (ALPN h2)")
                return
        owners = self.owners
        for event in self.codec.receive(data):
            kind = type(event)
            owner = owners.get(getattr(event, "stream", 0))
            if kind is Body:
                if owner is not None:
                    owner.stream_body(event.data, event.size)
                else:
                    self.codec.ack(event.stream, event.size)
            elif kind is Response:
                if owner is not None:
                    owner.stream_response(event.status, event.fields, event.ended)
            elif kind is BodyEnd:
                if owner is not None:
                    del owners[event.stream]
                    self.pool.backend.release(self.state)
                    owner.stream_end()
                    self.pool.freed(self)
            elif kind is Trailers:
                if owner is not None:
                    owner.stream_trailers(event.fields)
            elif kind is WindowOpened:
                if event.stream == 0:
                    for each in list(owners.values()):
                        each.stream_window()
                    self.pool.freed(self)  # the server may allow more streams now
                elif owner is not None:
                    owner.stream_window()
            elif kind is Aborted:
                if owner is not None:
                    del owners[event.stream]
                    self.pool.backend.release(self.state)
                    # REFUSED_STREAM: the server did nothing with it, so it may go again (RFC 9113 8.7)
                    refused = event.code == 7  # REFUSED_STREAM
                    owner.stream_failed(f"the server reset the stream ({event.code})", refused, refused)
                    self.pool.freed(self)
            elif kind is Draining:  # graceful GOAWAY: finish what the server took, send the rest elsewhere
                self.pool.forget(self)
                for stream in [stream for stream in owners if stream > event.last_stream]:
                    owner = owners.pop(stream)
                    self.pool.backend.release(self.state)
                    owner.stream_failed("the server sent GOAWAY before this request", True, True)
            elif kind is Ended:
                self._fail(event.reason)
                return
        if self.codec.draining and not owners:
            self.transport.loseConnection()
        self.flush_now()

    def ack(self, stream: int, size: int) -> None:
        self.codec.ack(stream, size)
        self.flush()

    def _fail(self, reason: str) -> None:
        self.flush_now()  # a GOAWAY the codec queued
        self._drop(reason)  # first: the close below may report connectionLost at once
        self.transport.loseConnection()

    def _drop(self, reason: str) -> None:
        if self.lost:
            return
        self.lost = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.pool.forget(self)
        owners, self.owners = self.owners, {}
        for owner in owners.values():
            self.pool.backend.release(self.state)
            owner.stream_failed(reason, True)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._drop(f"connection closed ({reason.getErrorMessage() if reason is not None else 'closed'})")


class _StreamAcquire(ServerAttempt):
    """A stream for one request: on a connection of the chosen server with room, or on one being opened
    (waiting for it), else on a new connection (``fresh``: always a new one).  The server's ``active``
    counts streams, not connects (``hold`` off)."""

    __slots__ = ("pool", "owner", "fresh")

    def __init__(self, pool: "H2Pool", owner: StreamOwner, fresh: bool) -> None:
        super().__init__(pool.backend, hold=False)
        self.pool, self.owner, self.fresh = pool, owner, fresh

    def serve(self, state: ServerState) -> bool:
        pool, owner = self.pool, self.owner
        connections = pool.connections.setdefault(state, [])
        if not self.fresh:
            for connection in connections:
                if connection.has_room():
                    owner.stream_ready(connection)
                    return True
            if pool.opening and len(pool.waiting) < MAX_WAITING:
                pool.waiting.append(owner)  # a connection on its way takes it
                return True
            if len(connections) >= MAX_CONNECTIONS_PER_SERVER:
                if len(pool.waiting) < MAX_WAITING:
                    pool.waiting.append(owner)
                else:
                    owner.upstream_unavailable(503, f"backend {pool.backend.name}: every HTTP/2 stream is busy")
                return True
        pool.opening += 1
        return False

    def build(self, state: ServerState) -> "H2BackendConnection":
        return H2BackendConnection(self.pool, state, self.pool.tls)

    def endpoint(self, state: ServerState) -> Any:
        return self.pool.endpoint_for(state)

    def opened(self, state: ServerState, connection: "H2BackendConnection") -> None:
        pool, owner = self.pool, self.owner
        pool.opening -= 1
        if pool.closed:
            connection.transport.loseConnection()
            if not owner.closed:
                owner.upstream_unavailable(503, f"backend {pool.backend.name} was reloaded")
            return
        pool.connections.setdefault(state, []).append(connection)
        if not owner.closed:
            owner.stream_ready(connection)
        pool.freed(connection)

    def go_on(self) -> bool:
        self.pool.opening -= 1
        return not self.owner.closed

    def settled(self) -> None:
        self.pool._serve_waiting()

    def given_up(self, last_error: Exception | None) -> None:
        self.owner.upstream_unavailable(*unavailable(self.backend, last_error))


class H2Pool:
    """The HTTP/2 connections to each server of one backend."""

    def __init__(self, backend: Backend, endpoint_for: Callable[[ServerState], Any], reactor: Any, tls: bool,
                 backend_timeout: float = 5.0) -> None:
        self.backend = backend
        self.backend_timeout = backend_timeout  # timeouts.connect: for SETTINGS, and for a PING's ACK
        self.endpoint_for = endpoint_for
        self.reactor = reactor
        self.tls = tls
        self.connections: dict[ServerState, list[H2BackendConnection]] = {}
        self.waiting: list[StreamOwner] = []  # requests waiting for a connection being opened
        self.opening = 0
        self.closed = False

    def acquire(self, owner: StreamOwner, fresh: bool = False) -> None:
        """``owner.stream_ready(connection)`` (then it opens its stream) or ``owner.upstream_unavailable``."""
        _StreamAcquire(self, owner, fresh).start()  # the backend's failover loop

    def freed(self, connection: H2BackendConnection) -> None:
        """``connection`` may take more streams: give them to waiting requests."""
        if self.closed and not connection.owners:
            connection.transport.loseConnection()
            return
        waiting = self.waiting
        while waiting and connection.has_room() and self.backend.has_room(connection.state):
            owner = waiting.pop(0)
            if not owner.closed:
                owner.stream_ready(connection)

    def _serve_waiting(self) -> None:
        if self.opening:
            return
        waiting, self.waiting = self.waiting, []
        for owner in waiting:
            if not owner.closed:
                self.acquire(owner)

    def forget(self, connection: H2BackendConnection) -> None:
        connections = self.connections.get(connection.state)
        if connections and connection in connections:
            connections.remove(connection)

    def close(self) -> None:
        """Retired by a reload: close connections once their streams are done (now, if idle)."""
        self.closed = True
        waiting, self.waiting = self.waiting, []
        for owner in waiting:
            if not owner.closed:
                owner.upstream_unavailable(503, f"backend {self.backend.name} was reloaded")
        for connections in self.connections.values():
            for connection in list(connections):
                if not connection.owners:
                    connection.transport.loseConnection()
