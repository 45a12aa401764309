# -*- test-case-name: tests.unit.http.test_fields, tests.e2e.test_h1_to_h2 -*-
"""HTTP/1.1 clients of an HTTP/2 backend (``protocol = "h2"``): one request on one backend stream.

Two parts, as everywhere in :mod:`edge.http`:

- :class:`H1Response`, sans-IO: an HTTP/2 response (status, fields, DATA,
  trailers) written as HTTP/1.1 bytes.  The backend's Content-Length is
  kept; without one the body is chunked for an HTTP/1.1 client and ends
  with the connection for an HTTP/1.0 one.  Trailers become chunked
  trailers when the client sent ``TE: trailers`` (and the body is chunked),
  else they are dropped.  HEAD, 204 and 304 have no body.
- :class:`H2Relay`, the stream's owner for :class:`edge.http.h2_client.H2BackendConnection`
  (:class:`~edge.http.h2_client.StreamOwner`) and the producer the client's
  socket pauses.  Flow control carries back-pressure both ways: request
  body bytes wait (at most :data:`MAX_PENDING`, then the client is not
  read) for the stream's window; response bytes are acknowledged to the
  backend only once the client's socket takes them, so a slow client
  closes its stream's window and edge holds at most one window of it.

The HTTP/1.1 connection (:class:`edge.http.h1_server.Http1Proxy`) keeps
what it does for every request: parsing, routing, timers, keep-alive,
answers and the access log; the relay tells it what happened.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Protocol as TypingProtocol

from h2.errors import ErrorCodes
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from edge.http.fields import response_fields
from edge.http.framing import chunk
from edge.http.h2_client import H2BackendConnection
from edge.http.transform import Compressor, ResponsePolicy, compressor



class RelayOwner(TypingProtocol):
    """What :class:`H2Relay` calls back on the HTTP/1.1 connection it serves (``Http1Proxy`` is one): the
    contract, so this module does not import the server that imports it."""

    close_after: bool

    def relay_ready(self, relay: "H2Relay") -> None: ...

    def upstream_unavailable(self, status: int, reason: str) -> None: ...

    def relay_response(self, relay: "H2Relay", status: int, head: bytes, ended: bool) -> None: ...

    def relay_body(self, data: bytes) -> None: ...

    def relay_end(self, tail: bytes) -> None: ...

    def relay_failed(self, reason: str, again: bool, unprocessed: bool) -> None: ...

    def body_room(self, room: bool) -> None: ...

# Request body bytes held for a stream whose window is closed, past which the client is not read.
MAX_PENDING = 65536
_REASONS = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}
# Fields a trailer section may not carry (RFC 9110 6.5.1): framing, routing, and what describes the content.
_TRAILER_SKIP = frozenset((b"content-length", b"host", b"content-type", b"content-encoding", b"content-range"))


class H1Response:
    """An HTTP/2 response as HTTP/1.1 bytes, for a client that sent ``method`` over HTTP/``version``."""

    def __init__(self, method: str, version: str, te_trailers: bool, policy: ResponsePolicy | None = None) -> None:
        self.head_only = method == "HEAD"
        self.http10 = version == "1.0"
        self.te_trailers = te_trailers
        self.policy = policy  # the route's response rules, HSTS and compression
        self.mode = "none"  # how the body is framed: "none", "length", "chunked" or "close"
        self.close = False  # the connection must end after this response
        self.compressor: Compressor | None = None

    def head(self, status: int, fields: list[tuple[bytes, bytes]], ended: bool, close: bool) -> bytes:
        """The status line and header block; ``ended``: the backend said no body follows; ``close``: the
        connection ends after this response anyway."""
        fields = response_fields(fields)
        policy = self.policy
        if policy is not None and ended:  # no body: nothing to compress
            fields = policy.fields(fields)
        elif policy is not None:
            fields, encoding = policy.backend(status, fields)
            if encoding is not None:
                self.compressor = compressor(encoding)
        has_length = any(name == b"content-length" for name, _ in fields)
        extra = b""
        if self.head_only or status in (204, 304) or status < 200:
            self.mode = "none"
        elif ended:
            self.mode = "none"
            if not has_length:
                extra = b"\r\ncontent-length: 0"
        elif has_length:
            self.mode = "length"
        elif self.http10:
            self.mode, close = "close", True  # no length to tell the end by: the close does
        else:
            self.mode = "chunked"
            extra = b"\r\ntransfer-encoding: chunked"
        self.close = close
        if close:
            extra += b"\r\nconnection: close"
        elif self.http10:
            extra += b"\r\nconnection: keep-alive"
        lines = b"".join(b"\r\n%s: %s" % field for field in fields)
        return b"HTTP/1.1 %d %s%s%s\r\n\r\n" % (status, _REASONS.get(status, b""), lines, extra)

    def body(self, data: bytes) -> bytes:
        """Response body bytes as the client gets them."""
        mode = self.mode
        if mode == "none":
            return b""
        if self.compressor is not None:
            data = self.compressor.feed(data)
        if mode == "chunked":
            return chunk(data)
        return data

    def end(self, trailers: list[tuple[bytes, bytes]] | None) -> bytes:
        """The end of the body: the last chunk, with the trailers if the client takes them."""
        tail = self.compressor.finish() if self.compressor is not None and self.mode != "none" else b""
        if self.mode != "chunked":
            return tail
        return chunk(tail) + self._last(trailers)

    def _last(self, trailers: list[tuple[bytes, bytes]] | None) -> bytes:
        if not trailers or not self.te_trailers:
            return b"0\r\n\r\n"
        kept = [field for field in response_fields(trailers) if field[0] not in _TRAILER_SKIP]
        return b"0" + b"".join(b"\r\n%s: %s" % field for field in kept) + b"\r\n\r\n"


@implementer(IPushProducer)
class H2Relay:
    """One HTTP/1.1 request on a stream of an HTTP/2 backend connection."""

    def __init__(self, proxy: RelayOwner, pool: Any, fields: list[tuple[bytes, bytes]], has_body: bool,
                 response: H1Response) -> None:
        self.proxy = proxy
        self.pool = pool
        self.fields = fields
        self.has_body = has_body
        self.response = response
        self.closed = False  # released: the request is over for this stream
        self.connection: H2BackendConnection | None = None  # while the connection reports this stream to us
        self.ack_conn: H2BackendConnection | None = None  # where response bytes are acknowledged (stays after the end)
        self.stream = 0
        self.out: list[bytes] = []  # request body bytes the stream's window has not taken yet
        self.out_size = 0
        self.client_done = not has_body
        self.request_ended = False  # END_STREAM went to the backend
        self.response_ended = False  # the backend's END_STREAM came
        self.started = False  # the response head came
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.write_paused = False  # the client's socket is full: acknowledge nothing more to the backend
        self.unacked = 0

    # -- the backend stream (StreamOwner) --------------------------------------------------------

    def stream_ready(self, connection: H2BackendConnection) -> None:
        if self.closed:
            return
        self.connection = self.ack_conn = connection
        end = self.client_done and not self.out
        self.stream = connection.open_stream(self, self.fields, end)
        self.request_ended = end
        self.proxy.relay_ready(self)
        self._send()

    def upstream_unavailable(self, status: int, reason: str) -> None:
        if not self.closed:
            self.proxy.upstream_unavailable(status, reason)

    def stream_response(self, status: int, fields: list[tuple[bytes, bytes]], ended: bool) -> None:
        if self.closed:
            return
        self.started = True
        self.proxy.relay_response(self, status, self.response.head(status, fields, ended, self.proxy.close_after),
                                  ended)

    def stream_body(self, data: bytes, size: int) -> None:
        connection = self.ack_conn
        if self.closed or connection is None:
            if connection is not None:
                connection.ack(self.stream, size)
            return
        if size > len(data):  # padding: acknowledged at once
            connection.ack(self.stream, size - len(data))
        if not data:
            return
        self.proxy.relay_body(self.response.body(data))
        if self.write_paused and not self.closed:  # the client's socket took these bytes but is full now
            self.unacked += len(data)
        else:
            connection.ack(self.stream, len(data))

    def stream_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        self.trailers = fields

    def stream_end(self) -> None:
        self.connection = None  # the connection is done with this stream
        self.response_ended = True
        if not self.request_ended and self.ack_conn is not None:  # answered before the request body ended
            self.request_ended = True
            self.ack_conn.codec.reset(self.stream, ErrorCodes.CANCEL)
            self.ack_conn.flush()
        if not self.closed:
            self.proxy.relay_end(self.response.end(self.trailers))

    def stream_window(self) -> None:
        if not self.closed and (self.out or (self.client_done and not self.request_ended)):
            self._send()

    def stream_failed(self, reason: str, before_response: bool, unprocessed: bool = False) -> None:
        """The stream failed; ``unprocessed``: the server did nothing with it (REFUSED_STREAM, GOAWAY
        below it).  The exchange decides: :meth:`again`, or edge's answer, or the response cut short."""
        self.connection = None
        if not self.closed:
            self.proxy.relay_failed(reason, before_response and not self.started, unprocessed)

    def again(self, fresh: bool) -> None:
        """The request goes once more, on another stream (``fresh``: of a new connection)."""
        self.request_ended = False
        self.pool.acquire(self, fresh=fresh)

    # -- the request body ------------------------------------------------------------------------

    def body_data(self, data: bytes, done: bool) -> None:
        """Request body bytes from the client; ``done``: the body is complete."""
        if data:
            self.out.append(data)
            self.out_size += len(data)
        if done:
            self.client_done = True
        self._send()

    def _send(self) -> None:
        """Body bytes to the stream as its window allows; the client is read only while few wait."""
        connection = self.connection
        if connection is None or self.closed or self.request_ended:
            return
        codec = connection.codec
        out = self.out
        while out:
            data = out[0]
            last = len(out) == 1 and self.client_done
            sent = codec.send(self.stream, data, last)
            if sent < 0:  # the stream is gone: its Aborted event follows
                out.clear()
                self.out_size = 0
                break
            self.out_size -= sent
            if sent < len(data):
                out[0] = data[sent:]
                break
            out.pop(0)
            if last:
                self.request_ended = True
        if not out and self.client_done and not self.request_ended:
            codec.end(self.stream)
            self.request_ended = True
        connection.flush()
        self.proxy.body_room(self.out_size < MAX_PENDING)

    # -- the client's socket (IPushProducer) ---------------------------------------------------

    def pauseProducing(self) -> None:
        self.write_paused = True

    def resumeProducing(self) -> None:
        self.write_paused = False
        if self.unacked and self.ack_conn is not None and not self.closed:
            unacked, self.unacked = self.unacked, 0
            self.ack_conn.ack(self.stream, unacked)

    def stopProducing(self) -> None:
        pass

    # -- the end -----------------------------------------------------------------------------------

    def release(self) -> None:
        """The request is over for edge: reset the stream unless both sides ended (a client that left,
        a timeout, an error), and give the backend back the window of bytes the client never took."""
        if self.closed:
            return
        self.closed = True
        self.out = []
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.close_stream(self.stream, reset=not (self.request_ended and self.response_ended))
        if self.unacked and self.ack_conn is not None:
            unacked, self.unacked = self.unacked, 0
            self.ack_conn.ack(self.stream, unacked)
