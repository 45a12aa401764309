# -*- test-case-name: tests.e2e.test_http1_proxy, tests.e2e.test_http_proxy, tests.e2e.test_error_pages -*-
"""HTTP/1.1 connections to a backend's servers, kept alive in a pool per server.

The HTTP/1.1 proxy (:mod:`edge.http.h1_server`) writes a request head and body
bytes straight to an :class:`UpstreamConnection`; the connection parses the
response head, follows the body's framing, and reports to its current
*owner* (the client connection) with three calls: the response head with
the first body bytes, further body bytes, and the end of the response.
When the response is complete and both ends allow it, the connection goes
back to its server's idle list for the next request.  No Deferred, no
object per request: at thousands of requests a second those are what cost.

Server selection is the backend's (balance, ``max_conn`` counting requests
in flight, passive health); a server that refuses or times out on connect
is skipped and the next one tried, since nothing was sent yet.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol as TypingProtocol

from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure

from edge.tcp.backends import Backend, ServerAttempt, ServerState, first_choice, unavailable
from edge.sniff import NEED_MORE, Malformed
from edge.http.framing import ResponseHead, UntilClose, parse_response_head, response_reader

MAX_RESPONSE_HEAD = 65536
MAX_IDLE_PER_SERVER = 256  # an HTTP/2 client alone may keep 100 requests in flight, each on its own connection


class Owner(TypingProtocol):
    """What a client connection offers the upstream connection serving its request."""

    closed: bool  # the client has gone: a connection made for it is kept for the next one

    def upstream_ready(self, connection: "UpstreamConnection") -> None: ...
    def upstream_unavailable(self, status: int, reason: str) -> None: ...
    def upstream_response(self, connection: "UpstreamConnection", head: ResponseHead, body: bytes,
                          done: bool) -> None: ...
    def upstream_body(self, data: bytes, done: bool) -> None: ...
    def upstream_failed(self, connection: "UpstreamConnection", reason: str) -> None: ...


class UpstreamConnection(Protocol):
    """One connection to one server; serves one request at a time."""

    transport: tcp.Connection | TLSMemoryBIOProtocol  # connected (TLS to an https:// server)

    def __init__(self, pool: "Http1Pool", state: ServerState) -> None:
        self.pool = pool
        self.state = state
        self.owner: Owner | None = None
        self.method = b"GET"
        self.buffer = b""
        self.reader: Any = None
        self.head_done = False
        self.reusable = False  # the last response left the connection clean for another request
        self.reused = False  # this request runs on a connection that served one before
        self.lost = False
        self.upgrade = False  # the request asked to switch protocols: a 101 is its answer, then raw bytes
        # Its transport was a client's producer (a streamed response): the client may have paused it.
        self.streamed = False

    def start(self, owner: Owner, method: bytes, upgrade: bool = False) -> None:
        self.owner = owner
        self.method = method
        self.upgrade = upgrade
        self.buffer = b""
        self.reader = None
        self.head_done = False
        self.reusable = False

    def dataReceived(self, data: bytes) -> None:
        owner = self.owner
        if owner is None:  # nothing was asked: a server talking out of turn is not reused
            self.transport.loseConnection()
            return
        if self.head_done:
            reader = self.reader
            used, done = reader.feed(data)
            if done:
                self.reusable = self.reusable and used == len(data)
                self.reader = None
            owner.upstream_body(data if used == len(data) else data[:used], done)
            return
        self.buffer += data
        try:
            while True:
                head = parse_response_head(self.buffer, MAX_RESPONSE_HEAD)
                if head is NEED_MORE:
                    return
                if head.status >= 200:
                    break
                if head.status == 101:
                    if self.upgrade:
                        break
                    raise Malformed("unexpected 101 Switching Protocols")
                self.buffer = self.buffer[head.length :]  # 100 Continue, 103 Early Hints: the final answer follows
            # After a 101 the connection carries another protocol until it closes.
            reader = UntilClose() if head.status == 101 else response_reader(head, self.method)
        except Malformed as e:
            self._fail(f"invalid response: {e}")
            return
        rest, self.buffer = self.buffer[head.length :], b""
        self.head_done = True
        self.reusable = head.keep_alive and not isinstance(reader, UntilClose)
        if reader is None:
            done, body = True, b""
            self.reusable = self.reusable and not rest
        else:
            try:
                used, done = reader.feed(rest)
            except Malformed as e:
                self._fail(f"invalid response body: {e}")
                return
            body = rest if used == len(rest) else rest[:used]
            if done:
                self.reusable = self.reusable and used == len(rest)
            else:
                self.reader = reader
        owner.upstream_response(self, head, body, done)

    def _fail(self, reason: str) -> None:
        owner, self.owner = self.owner, None
        self.reusable = False
        self.transport.abortConnection()
        if owner is not None:
            owner.upstream_failed(self, reason)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = True
        owner, self.owner = self.owner, None
        if owner is None:
            self.pool.forget(self)
            return
        if self.head_done and isinstance(self.reader, UntilClose):
            self.reader = None
            owner.upstream_body(b"", True)  # the server's close ends this body
            return
        why = "connection closed before the response was complete" if self.head_done \
            else f"connection closed before a response ({reason.getErrorMessage() if reason else 'closed'})"
        owner.upstream_failed(self, why)


class Http1Pool:
    """Idle keep-alive connections per server of one HTTP backend, and connecting new ones."""

    def __init__(self, backend: Backend, endpoint_for: Callable[[ServerState], Any]) -> None:
        self.backend = backend
        self.endpoint_for = endpoint_for
        self.idle: dict[ServerState, list[UpstreamConnection]] = {}
        self.closed = False

    def acquire(self, owner: Owner, fresh: bool = False) -> None:
        """Find ``owner`` a connection: ``owner.upstream_ready(connection)`` or ``owner.upstream_unavailable``.

        May call back before it returns (an idle connection was at hand).
        """
        first = first_choice(self.backend)
        candidates, index = first
        if not fresh and index < len(candidates):
            state = candidates[index]
            connection = self.idle_connection(state)
            if connection is not None:  # the loop's first step served it: no loop to run
                state.active += 1
                owner.upstream_ready(connection)
                return
        _Acquire(self, owner, fresh, first).start()  # the backend's failover loop; it skips servers at max_conn

    def idle_connection(self, state: ServerState) -> UpstreamConnection | None:
        """A kept-alive connection to ``state`` that is still open, if there is one."""
        idle = self.idle.get(state)
        while idle:
            connection = idle.pop()
            if not connection.lost and connection.transport.connected:
                connection.reused = True
                return connection
        return None

    def release(self, connection: UpstreamConnection, reusable: bool) -> None:
        """The request on ``connection`` is over: keep the connection for the next one, or close it."""
        connection.owner = None
        self.backend.release(connection.state)
        if reusable and not self.closed and not connection.lost and connection.transport.connected:
            idle = self.idle.setdefault(connection.state, [])
            if len(idle) < MAX_IDLE_PER_SERVER:
                if connection.streamed:  # a slow client may have paused it near the end
                    connection.streamed = False
                    connection.transport.resumeProducing()
                idle.append(connection)
                return
        if not connection.lost:
            connection.transport.loseConnection()

    def forget(self, connection: UpstreamConnection) -> None:
        """An idle connection was closed by its server."""
        idle = self.idle.get(connection.state)
        if idle and connection in idle:
            idle.remove(connection)

    def close(self) -> None:
        """This pool is retired (a reload changed its backend): close idle connections, keep no more."""
        self.closed = True
        for idle in self.idle.values():
            for connection in list(idle):
                connection.transport.loseConnection()
        self.idle.clear()



class _Acquire(ServerAttempt):
    """A connection for one request: an idle one of the chosen server (unless ``fresh``), else a new one."""

    __slots__ = ("pool", "owner", "fresh")

    def __init__(self, pool: Http1Pool, owner: Owner, fresh: bool, first: tuple[list[ServerState], int]) -> None:
        super().__init__(pool.backend, first=first)
        self.pool, self.owner, self.fresh = pool, owner, fresh

    def serve(self, state: ServerState) -> bool:
        connection = None if self.fresh else self.pool.idle_connection(state)
        if connection is None:
            return False
        self.owner.upstream_ready(connection)
        return True

    def build(self, state: ServerState) -> UpstreamConnection:
        return UpstreamConnection(self.pool, state)

    def endpoint(self, state: ServerState) -> Any:
        return self.pool.endpoint_for(state)

    def opened(self, state: ServerState, connection: UpstreamConnection) -> None:
        if self.owner.closed:  # the client left while we connected: keep it for the next one
            self.pool.release(connection, reusable=True)
            return
        self.owner.upstream_ready(connection)

    def go_on(self) -> bool:
        return not self.owner.closed

    def given_up(self, last_error: Exception | None) -> None:
        self.owner.upstream_unavailable(*unavailable(self.backend, last_error))


class Discard:
    """The rest of a response no client will read (a backend error edge replaced by its page): read and
    dropped, at most ``limit`` bytes within ``seconds``.  The connection goes back to the pool only if the
    response ended in time; otherwise it is closed, as nginx closes it after ``proxy_intercept_errors``."""

    closed = False  # an Owner's: never a client that left

    def __init__(self, pool: Http1Pool, connection: UpstreamConnection, limit: int, reactor: Any,
                 seconds: float) -> None:
        self.pool = pool
        self.connection: UpstreamConnection | None = connection
        self.left = limit
        connection.owner = self
        self.timer = reactor.callLater(seconds, self._release, False)

    def upstream_body(self, data: bytes, done: bool) -> None:
        connection = self.connection
        if connection is None:
            return
        self.left -= len(data)
        if done:
            self._release(connection.reusable)
        elif self.left < 0:
            self._release(False)

    def upstream_failed(self, connection: UpstreamConnection, reason: str) -> None:
        self._release(False)

    def _release(self, reusable: bool) -> None:
        connection, self.connection = self.connection, None
        if connection is None:
            return
        if self.timer.active():
            self.timer.cancel()
        self.pool.release(connection, reusable)

    # The request was sent and answered before this took over: these are never called.
    def upstream_ready(self, connection: UpstreamConnection) -> None:
        self.pool.release(connection, reusable=True)

    def upstream_unavailable(self, status: int, reason: str) -> None:
        pass

    def upstream_response(self, connection: UpstreamConnection, head: ResponseHead, body: bytes,
                          done: bool) -> None:
        self._release(False)
