"""The HTTP reverse proxy for terminated routes (HTTP/1.1 and HTTP/2 to clients).

Twisted's HTTP channel (switching to HTTP/2 when ALPN chose ``h2``) parses
requests; :class:`ProxyRequest` routes each one by Host and path, adds the
forwarding headers, and sends it to the route's backend through
:class:`edge.http.upstream.Upstream`.  Response bodies stream back with
back-pressure: the upstream connection is the producer for the client's
request, so a slow client pauses the backend instead of filling memory.
Only HTTP/2 clients come here (ALPN ``h2``); HTTP/1.x ones, WebSocket
upgrades included, are served by :mod:`edge.http.h1_server`.
"""

from __future__ import annotations

import time
from typing import Any

import h2.connection
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.protocols.basic import FileSender
from twisted.web.http import HTTPChannel, HTTPFactory, Request, _GenericHTTPChannelProtocol
from twisted.web.http_headers import Headers

from edge.http.answers import REASON_TEXT, error_response
from edge.connection import ConnectionInfo, log_request
from edge.eager import write_now
from edge.http.h1_client import UpstreamConnection
from edge.http.policy import https_location
from edge.http.h1 import HOP_BY_HOP, BadRequest, drop_fields, field_list, field_pattern, request_line_ok, split_host
from edge.http.framing import ChunkedReader, ResponseHead

log = Logger()

# h2 remembers up to 65,536 closed streams per connection (so that a late frame for one is told from a
# protocol error), about 100 bytes each: a browser's connection that lives for hours grows by 6 MB.  A
# thousand is plenty for frames still in flight; a frame for a stream forgotten earlier is answered
# with RST_STREAM.  (h2 reads this class attribute when a connection is made; Twisted makes them.)
h2.connection.H2Connection.MAX_CLOSED_STREAMS = 1000

# Framing the edge redoes itself towards the backend (Content-Length of the spooled body; 100-continue was answered).
REQUEST_FRAMING = frozenset((b"content-length", b"expect"))
RESPONSE_DROP_ALL = field_pattern(HOP_BY_HOP)  # HTTP/2 has no connection-level headers at all

class HttpConnection:
    """Per-connection facts the requests need (Twisted calls it the 'site')."""

    __slots__ = ("runtime", "info", "scheme")

    def __init__(self, runtime: Any, info: ConnectionInfo, scheme: str) -> None:
        self.runtime = runtime
        self.info = info
        self.scheme = scheme  # "https" when terminated here, "http" for http = "allow"


class EdgeChannel(HTTPChannel):
    """HTTP/1.1 channel with the edge's limits: 64 KiB of head (431) and a head timeout."""

    totalHeadersSize = 65536
    MAX_LENGTH = 65536  # one header line may use the whole budget
    header_timer: Any = None
    wrapper: Any = None  # the _GenericHTTPChannelProtocol that may swap this channel for HTTP/2

    def lineLengthExceeded(self, line: bytes) -> None:
        self._receivedHeaderSize = self.totalHeadersSize + 1
        self._respondToBadRequestAndDisconnect()

    def connectionMade(self) -> None:
        super().connectionMade()
        self._arm_header_timer()

    def dataReceived(self, data: bytes) -> None:
        if self.header_timer is None and not self.requests:
            self._arm_header_timer()
        super().dataReceived(data)

    def _arm_header_timer(self) -> None:
        timeout = self.site.runtime.config.timeouts.inspect
        self.header_timer = self.callLater(timeout, self._header_timeout)

    def _header_timeout(self) -> None:
        self.header_timer = None
        if self.wrapper is not None and self.wrapper._channel is not self:
            return  # ALPN chose h2: this HTTP/1.1 channel was replaced before it read anything
        self.site.info.ended = "timeout: request head"
        self.transport.write(error_response(408))
        self.loseConnection()

    def allHeadersReceived(self) -> None:
        self._cancel_header_timer()
        super().allHeadersReceived()

    def _cancel_header_timer(self) -> None:
        if self.header_timer is not None and self.header_timer.active():
            self.header_timer.cancel()
        self.header_timer = None

    def connectionLost(self, reason: Failure) -> None:
        self._cancel_header_timer()
        super().connectionLost(reason)

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted answers every bad head with 400; an oversized one deserves 431.
        status = 431 if self._receivedHeaderSize > self.totalHeadersSize else 400
        self._cancel_header_timer()
        self.site.info.ended = f"error: {REASON_TEXT[status]}"
        self.transport.write(error_response(status))
        self.loseConnection()


class EdgeHTTPFactory(HTTPFactory):
    """Builds client-side HTTP channels and writes one access-log event per request."""

    noisy = False

    def __init__(self, runtime: Any) -> None:
        super().__init__(timeout=runtime.config.timeouts.idle, reactor=runtime.reactor)
        self.runtime = runtime

    def channel(self, info: ConnectionInfo, scheme: str) -> _GenericHTTPChannelProtocol:
        channel = EdgeChannel()
        protocol = _GenericHTTPChannelProtocol(channel)
        channel.wrapper = protocol
        protocol.factory = self
        protocol.callLater = self.reactor.callLater
        protocol.timeOut = self.timeOut
        protocol.requestFactory = ProxyRequest
        protocol.site = HttpConnection(self.runtime, info, scheme)
        return protocol

    def log(self, request: "ProxyRequest") -> None:
        site = request.channel.site if request.channel is not None else None
        started = getattr(request, "edge_started", None)
        log_request(
            site.info if site is not None else None, request.method.decode("latin-1"),
            (request.getHeader(b"host") or b"-").decode("latin-1"), request.uri.decode("latin-1"),
            request.code, request.sentLength, getattr(request, "edge_route", None),
            getattr(request, "edge_backend", None), getattr(request, "edge_server", None),
            getattr(request, "edge_upstream_time", None), (time.monotonic() - started) if started else 0.0,
            request.clientproto.decode("latin-1"))


def _request_path(request: Request) -> bytes:
    """The request target, known before the body arrives (HTTP/1.1 and HTTP/2)."""
    channel = request.channel
    return getattr(channel, "path", None) or getattr(channel, "_path", None) or b"/"


class ProxyRequest(Request):
    """One client request, routed and forwarded to a backend."""

    edge_route: str | None = None
    edge_backend: str | None = None
    edge_server: str | None = None
    edge_upstream_time: float | None = None
    edge_error: int | None = None

    def gotLength(self, length: int | None) -> None:
        self.edge_started = time.monotonic()
        super().gotLength(length)
        self.edge_body_seen = 0
        self.edge_limit = None
        route = self._route_or_none(_request_path(self))
        if route is not None and route.max_body is not None:
            self.edge_limit = route.max_body
            if length is not None and length > route.max_body:
                self._too_large()

    def handleContentChunk(self, data: bytes) -> None:
        if self.edge_error is not None:
            return
        self.edge_body_seen += len(data)
        if self.edge_limit is not None and self.edge_body_seen > self.edge_limit:
            self._too_large()
            return
        super().handleContentChunk(data)

    def _too_large(self) -> None:
        self.edge_error = 413
        if isinstance(self.channel, HTTPChannel):
            # Answer now rather than read a body we will not use, then close.
            self.channel.site.info.ended = "error: request body too large"
            self.channel._cancel_header_timer()
            self.channel.transport.write(error_response(413))
            self.channel.transport.loseConnection()

    def _route_or_none(self, path: bytes) -> Any:
        host = self.getHeader(b"host")
        if host is None:
            return None
        try:
            name, _ = split_host(host.decode("latin-1"))
        except BadRequest:
            return None
        entry = self.channel.site.runtime.routes.lookup(name)
        return entry.match(path.decode("latin-1").split("?", 1)[0]) if entry else None

    def process(self) -> None:
        if self.edge_error is not None:
            self.fail(self.edge_error)
            return
        site: HttpConnection = self.channel.site
        try:
            self._forward(site)
        except BadRequest as e:
            self.fail(e.status, str(e))

    def fail(self, status: int, reason: str | None = None) -> None:
        if self.finished or self._disconnected:
            return
        if self.startedWriting:
            self.loseConnection()  # headers already went out: all we can do is cut the body
            return
        body = f"{reason or REASON_TEXT.get(status, 'error')}\n".encode()
        self.setResponseCode(status)
        self.responseHeaders.setRawHeaders(b"content-type", [b"text/plain; charset=utf-8"])
        self.responseHeaders.setRawHeaders(b"content-length", [str(len(body)).encode()])
        if self.method != b"HEAD":
            self.write(body)
        self.finish()

    def _forward(self, site: HttpConnection) -> None:
        runtime = site.runtime
        if not request_line_ok(self.method, self.uri):  # it becomes an HTTP/1.1 request line to the backend
            raise BadRequest(400, "malformed :method or :path")
        host_header = self.getHeader(b"host")
        if host_header is None:
            raise BadRequest(400, "missing Host header")
        host, _ = split_host(host_header.decode("latin-1"))
        sni = site.info.sni
        if site.scheme == "https" and sni is not None and host != sni:
            self.fail(421)
            return
        entry = runtime.routes.lookup(host)
        path = self.uri.decode("latin-1")
        route = entry.match(path.split("?", 1)[0]) if entry else None
        if route is None or not route.terminated:
            self.fail(404)
            return
        self.edge_route = route.name
        if site.scheme == "http" and route.http != "allow":
            self._redirect_or_deny(route, host_header.decode("latin-1"), path, runtime)
            return
        upstream = runtime.upstreams[route.backend]
        self.edge_backend = route.backend
        headers = self._upstream_headers(site, host_header)
        body = None
        if self.edge_body_seen or self.getHeader(b"content-length") not in (None, b"0") \
                or self.getHeader(b"transfer-encoding") is not None:
            body = self.content
            headers.setRawHeaders(b"content-length", [str(body.seek(0, 2)).encode()])
        head = b"%s %s HTTP/1.1\r\n" % (self.method, self.uri) + b"".join(
            b"%s: %s\r\n" % (name, value) for name, values in headers.getAllRawHeaders() for value in values
        ) + b"\r\n"
        UpstreamExchange(self, upstream, head, body).start()

    def _redirect_or_deny(self, route: Any, host: str, path: str, runtime: Any) -> None:
        if route.http == "deny":
            self.fail(404)
            return
        location = https_location(host, path, runtime.https_port)
        self.setResponseCode(308)
        self.setHeader(b"location", location.encode("latin-1"))
        self.setHeader(b"content-type", b"text/plain; charset=utf-8")
        body = f"Redirecting to {location}\n".encode("latin-1")
        self.setHeader(b"content-length", str(len(body)).encode())
        if self.method != b"HEAD":
            self.write(body)
        self.finish()

    def _upstream_headers(self, site: HttpConnection, host: bytes) -> Headers:
        listed = {token.strip().lower() for value in self.requestHeaders.getRawHeaders(b"connection", [])
                  for token in value.split(b",")}
        headers = Headers()
        for name, values in self.requestHeaders.getAllRawHeaders():
            lower = name.lower()
            if lower in HOP_BY_HOP or lower in listed or lower in REQUEST_FRAMING:
                continue
            headers.setRawHeaders(name, values)
        client = site.info.client[0]
        forwarded_for = self.requestHeaders.getRawHeaders(b"x-forwarded-for", [])
        headers.setRawHeaders(b"x-forwarded-for", [b", ".join(forwarded_for + [client.encode()])])
        headers.setRawHeaders(b"x-forwarded-proto", [site.scheme.encode()])
        headers.setRawHeaders(b"x-forwarded-host", [host])
        node = f'"[{client}]"' if ":" in client else client
        element = f'for={node};host="{host.decode("latin-1")}";proto={site.scheme}'.encode("latin-1")
        headers.setRawHeaders(b"forwarded", self.requestHeaders.getRawHeaders(b"forwarded", []) + [element])
        return headers


class UpstreamExchange:
    """One request of an HTTP/2 client relayed over the backend's HTTP/1.1 keep-alive pool.

    The owner the pool's connections report to (:mod:`edge.http.h1_client`):
    the spooled request body is sent with a :class:`FileSender`, the response
    head becomes the Twisted response, and its body (de-chunked) streams back
    with the upstream connection as the producer.
    """

    def __init__(self, request: ProxyRequest, upstream: Any, head: bytes, body: Any) -> None:
        self.request = request
        self.upstream = upstream
        self.pool = upstream.http1
        self.head = head
        self.body = body
        self.connection: Any = None
        self.started = time.monotonic()
        self.timer: Any = None
        self.sender: FileSender | None = None
        self.dechunk: ChunkedReader | None = None
        self.response_started = False
        self.streaming = False
        self.retried = False

    @property
    def closed(self) -> bool:
        return self.request._disconnected or self.request.finished

    def start(self) -> None:
        self.request.notifyFinish().addErrback(self._client_gone)
        self.pool.acquire(self)

    def upstream_ready(self, connection: UpstreamConnection) -> None:
        if self.closed:
            self.pool.release(connection, reusable=True)
            return
        self.connection = connection
        connection.start(self, self.request.method)
        write_now(connection.transport, self.head)
        if self.body is not None:
            self.body.seek(0)
            self.sender = FileSender()
            self.sender.beginFileTransfer(self.body, connection.transport).addBoth(self._body_sent)
        reactor, seconds = self.request.channel.site.runtime.reactor, self.upstream.response_timeout
        self.timer = reactor.callLater(seconds, self._timed_out, seconds)

    def _body_sent(self, result: Any) -> None:
        self.sender = None

    def upstream_unavailable(self, status: int, reason: str) -> None:
        self._fail(status, reason)

    def upstream_response(self, connection: UpstreamConnection, head: ResponseHead, body: bytes, done: bool) -> None:
        self._cancel_timer()
        request = self.request
        request.edge_server = str(connection.state)
        request.edge_upstream_time = time.monotonic() - self.started
        self.response_started = True
        request.setResponseCode(head.status, head.reason)
        fields, removed = drop_fields(head.fields, head.lower, RESPONSE_DROP_ALL)
        listed = {token.strip().lower() for name, value in removed if name == b"connection"
                  for token in value.split(b",")}
        for name, value in field_list(fields, fields.lower()):
            if name not in listed:
                request.responseHeaders.addRawHeader(name, value)
        if head.lower.find(b"\r\ntransfer-encoding:") >= 0:
            self.dechunk = ChunkedReader(collect=True)
        self._write(body)
        if done:
            self._done(connection.reusable)
        elif not self.closed:
            self.streaming = True
            request.registerProducer(connection.transport, True)

    def upstream_body(self, data: bytes, done: bool) -> None:
        self._write(data)
        if done:
            self._done(self.connection.reusable if self.connection is not None else False)

    def _write(self, data: bytes) -> None:
        if self.dechunk is not None:
            self.dechunk.feed(data)
            data = b"".join(self.dechunk.pieces)
            self.dechunk.pieces.clear()
        if data and not self.closed:
            self.request.write(data)

    def _done(self, reusable: bool) -> None:
        connection, self.connection = self.connection, None
        if self.streaming:
            self.streaming = False
            self.request.unregisterProducer()
        if connection is not None:
            self.pool.release(connection, reusable and self.sender is None)
        if not self.closed:
            self.request.finish()

    def upstream_failed(self, connection: UpstreamConnection, reason: str) -> None:
        self._drop()
        if self.closed:
            return
        if self.response_started:
            log.warn("backend response cut short: {reason}", reason=reason)
            self.request.loseConnection()
            return
        if connection.reused and not self.retried and self.body is None:
            self.retried = True  # a kept-alive connection the server had just closed: once more on a new one
            self.pool.acquire(self, fresh=True)
            return
        self._fail(502, f"backend {self.upstream.backend.name} failed: {reason}")

    def _timed_out(self, seconds: float) -> None:
        self.timer = None
        self._drop()
        self._fail(504, f"backend {self.upstream.backend.name} did not answer within {seconds:g}s")

    def _client_gone(self, _failure: Failure) -> None:
        self._drop()

    def _drop(self) -> None:
        """Close the upstream connection, if any (a request that failed half-way cannot reuse it)."""
        self._cancel_timer()
        if self.sender is not None:
            self.sender.stopProducing()
            self.sender = None
        connection, self.connection = self.connection, None
        if self.streaming:
            self.streaming = False
            if not self.closed:
                self.request.unregisterProducer()
        if connection is not None:
            connection.owner = None
            self.pool.release(connection, reusable=False)

    def _fail(self, status: int, reason: str) -> None:
        if self.closed:
            return
        log.warn("{client}: {status} {reason}", client=self.request.channel.site.info.client[0]
                 if self.request.channel else "-", status=status, reason=reason)
        self.request.fail(status, reason)

    def _cancel_timer(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()


__all__ = ["EdgeHTTPFactory", "ProxyRequest", "HttpConnection"]
