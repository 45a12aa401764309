# -*- test-case-name: tests.e2e.test_http1_proxy, tests.e2e.test_hostile_http, tests.e2e.test_http_proxy -*-
"""The HTTP/1.1 reverse proxy for terminated routes (and ``http = "allow"`` on port 80).

A lean relay in the manner of HAProxy's HTTP mode rather than a web
framework's request objects: the request head is parsed and rewritten
(forwarding headers in, hop-by-hop headers out), then the head and the body
bytes go to a pooled keep-alive connection to the backend exactly as they
arrived (a chunked body stays chunked); the response head is rewritten the
same way and the response body relayed as it comes, with back-pressure
both ways.  Framing is followed only to find where each message ends
(:mod:`edge.http.framing`).  A response that arrives in one read is
written to the client in one write, so TLS makes one record of it.

Keep-alive and pipelining: one request is handled at a time; bytes of the
next one wait (at most 64 KiB, then reading pauses) until the response to
this one is complete.  Errors are one-line HTTP answers as the README lists
them.  HTTP/2 clients are served by :mod:`edge.http.h2_server`.  A backend
with ``protocol = "h2"`` gets each request on a stream of its HTTP/2 pool
instead (:mod:`edge.http.h1_to_h2`); everything else here stays the same.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from edge.config import Route
from edge.http.answers import DISCARD_LIMIT, REASON_TEXT, error_response, h1_message, own_answer
from edge.ops.access_log import ConnectionInfo
from edge.ops.outcomes import CLIENT_CLOSED, CLOSED, Outcome
from edge.net.eager import write_now
from edge.net.transports import QUEUE_KNOWN, queued_for_peer
from edge.http.h1_client import Discard, UpstreamConnection
from edge.http.fields import (admitted_fields, block_fields, edit_fields, h2_request_fields, names_pattern,
                              sort_fields)
from edge.http.forwarded import forwarded_block
from edge.http.forward_auth import ask_auth, relay_response
from edge.http.h1_to_h2 import H1Response, H2Relay
from edge.http.exchange import Cut, Exchange, Reply, Retry
from edge.http.policy import (Admission, Admitted, Answer, Ask, Forward, Passed, Refusal, body_limit,
                              is_websocket)
from edge.http.relay import log_exchange, warn
from edge.http.snapshot import HttpSnapshot
from edge.sniff import NEED_MORE, Malformed
from edge.http.h1 import (
    HOP_BY_HOP, PROTECTED_FIELDS, BadRequest, RequestHead, connection_tokens, drop_fields, field_list,
    field_pattern, field_values, parse_request_head,
)
from edge.http.framing import ChunkedReader, LengthReader, ResponseHead
from edge.http.transform import BodyCoder, ResponsePolicy, edits_request, forwarding, response_policy

log = Logger()

MAX_HEAD = 65536
# Transfer-Encoding is kept: a body is relayed in the framing it came in (Content-Length or chunked).
REQUEST_DROP = field_pattern(
    HOP_BY_HOP - {b"transfer-encoding"}
    | {b"expect", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-for", b"forwarded"})
RESPONSE_DROP = field_pattern(HOP_BY_HOP - {b"transfer-encoding"})
RESPONSE_DROP_TE = field_pattern(HOP_BY_HOP)  # to an HTTP/1.0 client (de-chunked)
_PLAIN_CONNECTION = frozenset((b"keep-alive", b"Keep-Alive", b"close", b"Close"))
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# Answers a client has not read yet, past which its next pipelined request waits: a client that sends
# requests but reads nothing would otherwise have every answer kept in memory (1.5 GB in 15 s was seen).
MAX_UNREAD = 262144
DRAIN_CHECK = 0.05  # seconds between looks at a client that is behind


@implementer(IPushProducer)
class Backlog:
    """Whether a client is behind on its answers, told by Twisted's producer API.

    Without the ``write_buffer`` fast path (edge.net.fastpath) a transport cannot say how many bytes it
    still holds.  Registered as the client transport's producer between responses, this is paused when
    the transport's buffer passes Twisted's ``bufferSize`` and resumed once it has drained, so the
    pipelining bound holds on Twisted's public path too (at Twisted's threshold rather than MAX_UNREAD).
    """

    __slots__ = ("behind", "registered")

    def __init__(self) -> None:
        self.behind = False
        self.registered = False

    def pauseProducing(self) -> None:
        self.behind = True

    def resumeProducing(self) -> None:
        self.behind = False

    def stopProducing(self) -> None:
        self.behind = False


def _drop_listed(fields: bytes, connection: bytes) -> bytes:
    """Remove the headers a Connection header names (they are hop-by-hop too), never the ones that
    frame or route the message (a request naming those was refused; a response keeps them)."""
    if connection in _PLAIN_CONNECTION:
        return fields
    names = frozenset(token.strip().lower() for token in connection.split(b",")) \
        - {b"close", b"keep-alive", b""} - PROTECTED_FIELDS
    if not names:
        return fields
    return drop_fields(fields, fields.lower(), names_pattern(names))[0]


@implementer(IHalfCloseableProtocol)
class Http1Proxy(Protocol):
    """One client connection speaking HTTP/1.x to the edge.

    A client that shuts down its sending side after a complete request
    (``printf 'GET / ...' | nc -N``) still gets its answer, as HAProxy gives
    it; then the connection closes.  (Plain HTTP only: Twisted's TLS layer
    ends the whole connection on the client's EOF.)
    """

    backlog: Backlog | None = None  # set when connected, if the transport cannot count what it holds
    transport: tcp.Connection | TLSMemoryBIOProtocol  # the client's (plain, or TLS terminated here)

    def __init__(self, runtime: HttpSnapshot, info: ConnectionInfo, scheme: str) -> None:
        self.runtime = runtime
        self.info = info
        self.scheme = scheme  # "https" when terminated here, "http" for http = "allow"
        self.plain = scheme == "http"
        self.buffer = b""
        self.closed = False
        self.paused = False
        self.deadline: float | None = None  # request head, keep-alive or response deadline (monotonic)
        self.deadline_kind = "head"
        self.timer: Any = None  # one lazy timer checks the deadline: moving it costs nothing per request
        self.timer_at = 0.0
        # the request in progress
        self.head: RequestHead | None = None
        self.ex = Exchange(b"-", "-", "-", "HTTP/1.1", 0.0)  # the request's exchange (its decisions, its log line)
        # The admission step (Host, route, access rules); it keeps the last Host: keep-alive requests repeat it.
        self.admission = Admission(runtime.routes, runtime.guards, scheme, info.sni, info.client[0],
                                   runtime.https_port, runtime.reactor.seconds)
        self.forwarded_host: bytes | None = None
        self.forwarded_tail = b""
        self.admitted: Admitted | None = None  # what a guarded route's access rules said
        self.auth: Any = None  # the forward_auth question in flight
        self.pool: Any = None
        self.upstream: UpstreamConnection | None = None
        self.upstream_head = b""
        self.relay: H2Relay | None = None  # the request's stream to an HTTP/2 backend (instead of ``upstream``)
        self.body: Any = None  # framing of the request body still to come from the client
        self.transform: BodyCoder | None = None  # the response body's way to the client, when not as it came
        self.policy: ResponsePolicy | None = None  # what the route does to this request's responses
        self.close_after = False
        self.producing = False  # the client feeds the upstream connection (request body)
        self.streaming = False  # the upstream connection feeds the client (response body)
        self.looping = False
        self.drain_call: Any = None  # a look at whether a client that is behind has read its answers
        self.upgrade: bytes | None = None  # the Upgrade header of a WebSocket request in progress
        self.tunnel = False  # the backend answered 101: bytes now pass both ways unparsed
        self.client_eof = False  # the client shut down its sending side

    # -- client side ------------------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        own = getattr(transport, "queued_for_peer", None)  # edge's transports answer it themselves, cheaply
        self.queued = own if own is not None else (lambda: queued_for_peer(transport))
        self.backlog = None if QUEUE_KNOWN else Backlog()
        self._arm(self.runtime.config.timeouts.inspect, "head")

    def dataReceived(self, data: bytes) -> None:
        if self.plain:  # plain HTTP: the connection's bytes are counted here (TLS counts its own)
            self.info.bytes_in += len(data)
        if self.closed:
            return
        if self.head is None:
            self.buffer = self.buffer + data if self.buffer else data
            self._next_request()
        elif self.body is not None and (self.upstream is not None or (self.relay is not None and self.relay.stream)):
            self._relay_body(data)
        elif self.tunnel:
            self._tunnel_out(data)
        else:  # the next request (pipelined), or body bytes while we connect: kept for later, bounded
            self.buffer += data
            if len(self.buffer) > MAX_HEAD and not self.paused:
                self.paused = True
                self.transport.pauseProducing()

    def _next_request(self) -> None:
        if self.looping:  # answered at once from inside the loop below: it carries on
            return
        self.looping = True
        try:
            while self.head is None and self.buffer and not self.closed and self.drain_call is None:
                try:
                    head = parse_request_head(self.buffer, MAX_HEAD)
                except BadRequest as e:
                    self._answer_and_close(e.status, str(e))
                    return
                if head is NEED_MORE:
                    if self.client_eof:  # the rest of this head will never come
                        self._close()
                        return
                    if self.deadline_kind != "head" or self.deadline is None:
                        self._arm(self.runtime.config.timeouts.inspect, "head")
                    return
                self.buffer = self.buffer[head.length :]
                self.deadline = None
                self._start(head)
        finally:
            self.looping = False

    def _start(self, head: RequestHead) -> None:
        self.head = head
        self.ex = ex = Exchange(head.method.encode("latin-1"), "-", head.target,
                                "HTTP/1.1" if head.version == "1.1" else f"HTTP/{head.version}", time.monotonic())
        self.admitted = self.policy = None
        self.transform = self.body = self.upgrade = None
        self.close_after = not head.keep_alive
        raw_host = head.get(b"host")
        path = head.path
        admission = self.admission
        decision = admission.admit(raw_host, ex.method, path, head.pairs)
        if raw_host is not None and raw_host == admission.last_host:
            ex.host = admission.host
        if type(decision) is Answer:
            self._refuse(head, decision)
            return
        assert raw_host is not None  # a request without Host was answered 400 by the admission step
        if type(decision) is Ask:  # the auth server (or the password hashing) first
            ask = decision
            self._ready(ask.route)
            self.admitted, ex.user = ask.admitted, ask.admitted.user
            runtime = self.runtime
            self.auth = ask_auth(runtime.auth_upstreams, runtime.reactor, ask.question,
                                 lambda result: self._auth_answered(result, head, ask, raw_host, path))
            return
        if type(decision) is Forward:
            self._ready(decision.route)
            self.admitted, ex.user = decision.admitted, decision.admitted.user
            self._proceed(head, decision.route, raw_host, path)
            return
        self._ready(decision)
        self._proceed(head, decision, raw_host, path)

    def _ready(self, route: Route) -> None:
        """The request is for ``route``: its response rules apply from here on (to edge's answers too)."""
        self.ex.route = route
        head = self.head
        assert head is not None  # set by _start before the admission step
        self.policy = response_policy(route, self.scheme, self.ex.method,
                                      field_values(head.fields, head.lower, b"accept-encoding")
                                      if route.compress else ())

    def _refuse(self, head: RequestHead, answer: Answer) -> None:
        """Edge's own answer of the admission step: 404, 421, 308, an access rule's 401 / 403 / 429, or a 400."""
        if answer.close:
            self._answer_and_close(answer.status, answer.text)
            return
        if answer.route is not None:
            self._ready(answer.route)
        self._answer(answer.status, answer.text, close=head.has_body, location=answer.location,
                     headers=answer.headers)

    def _auth_answered(self, result: Passed | Refusal | None, head: RequestHead, ask: Ask, raw_host: bytes,
                       path: str) -> None:
        """The forward_auth server's word (or the password's, hashed off the reactor): go on with its headers,
        relay its answer, or 503 (fail closed)."""
        self.auth = None
        if self.closed or self.head is not head:
            return
        ex = self.ex
        decision = ask.answered(result)
        if decision is None:
            reply = ex.auth_failed()
            ex.outcome = reply.outcome
            self._answer(reply.status, reply.text, close=head.has_body)
        elif type(decision) is Refusal:
            close = head.has_body or self.close_after
            ex.status = decision.status
            message = relay_response(decision, close, head.method == "HEAD")
            ex.sent = len(message)
            self._write(message)
            ex.outcome = "answered"
            self._log()
            if close:
                self._close()
            else:
                self._await_next()
        else:
            self.admitted, ex.user = decision.admitted, decision.admitted.user
            self._proceed(head, decision.route, raw_host, path)

    def _proceed(self, head: RequestHead, route: Any, raw_host: bytes, path: str) -> None:
        """The request may go on to ``route``'s backend: its body framing, its head for the backend, a connection."""
        runtime = self.runtime
        lower = head.lower
        upstream = runtime.upstreams[route.backend]
        limit = route.max_body
        if lower.find(b"\r\ntransfer-encoding:") >= 0 or lower.find(b"\r\ncontent-length:") >= 0:
            try:
                length = head.get(b"content-length")
                limit = body_limit(route, int(length) if length is not None else None)
            except BadRequest as e:
                self._answer_and_close(e.status, str(e))
                return
            # DATA frames carry the payload only: a chunked body is de-chunked for an HTTP/2 backend.
            self.body = self._request_framing(head, collect=upstream.h2 is not None)
        self.ex.forward(route, self.body is not None, limit)
        if upstream.h2 is not None:
            self._proceed_h2(head, route, raw_host, path, upstream)
            return
        self.upstream_head = self._upstream_head(head, raw_host, path)
        self.pool = upstream.http1
        if lower.find(b"\r\nupgrade:") >= 0 and is_websocket(head.version, self.body is not None,
                                                             connection_tokens(head.fields, lower),
                                                             head.get(b"upgrade")):
            # Asked for, not granted: the connection stays HTTP unless the backend answers 101.
            self.upgrade = upgrade = head.get(b"upgrade")
            self.upstream_head = self.upstream_head[:-2] + b"connection: Upgrade\r\nupgrade: %s\r\n\r\n" % upgrade
        if self.body is not None and not self.paused:  # read no body until a server is there to take it
            self.paused = True
            self.transport.pauseProducing()
        self.pool.acquire(self)

    def _proceed_h2(self, head: RequestHead, route: Any, raw_host: bytes, path: str, upstream: Any) -> None:
        """The request goes on a stream of the HTTP/2 backend's pool (:mod:`edge.http.h1_to_h2`): the same
        head an HTTP/2 client's request would get, hop-by-hop headers (and those Connection lists) left out."""
        lower = head.lower
        tokens = connection_tokens(head.fields, lower)
        if lower.find(b"\r\nupgrade:") >= 0 and is_websocket(head.version, self.body is not None, tokens,
                                                             head.get(b"upgrade")):
            log.warn("{client}: 501 WebSocket to backend {backend}, which has protocol = \"h2\": extended CONNECT "
                     "(RFC 8441) to backends is not supported", client=self.info.client[0], backend=route.backend)
            self._answer(501, "WebSocket is not supported by this service", close=head.has_body)
            return
        fields = field_list(head.fields, lower)
        admitted = self.admitted
        if admitted is not None and (admitted.drop or admitted.add):
            fields = admitted_fields(fields, admitted.drop, admitted.add)
        sorted_ = sort_fields(fields, tokens)  # Content-Length was checked by parse_request_head
        method = self.ex.method
        rules = None
        if edits_request(route):
            path, rules = forwarding(route, path)
        request = h2_request_fields(sorted_, method, upstream.h2_scheme, raw_host,
                                    path.encode("latin-1"), self.info.client[0], self.scheme)
        if rules:  # after edge's forwarding headers: a rule may change those too
            request = rules.apply(request)
        self.relay = H2Relay(self, upstream.h2, request, self.body is not None,
                             H1Response(head.method, head.version, sorted_.te_trailers, self.policy))
        if self.body is not None and not self.paused:  # read no body until a stream is there to take it
            self.paused = True
            self.transport.pauseProducing()
        self._arm(self.runtime.config.timeouts.response, "response")  # also bounds the wait for a stream
        upstream.h2.acquire(self.relay)

    @staticmethod
    def _request_framing(head: RequestHead, collect: bool = False) -> Any:
        """The request body's reader (the exchange counts it against ``max_body``), or None without a body."""
        if head.lower.find(b"\r\ntransfer-encoding:") >= 0:  # chunked, last and once: parse_request_head checked
            return ChunkedReader(None, collect)
        length = head.get(b"content-length")  # ASCII digits: parse_request_head checked them
        if length is None or length == b"0":
            return None
        return LengthReader(int(length))

    def _upstream_head(self, head: RequestHead, host: bytes, path: str) -> bytes:
        fields, removed = drop_fields(head.fields, head.lower, REQUEST_DROP)
        admitted = self.admitted
        if admitted is not None and removed:  # what the client's Connection lists goes before edge adds its
            for name, value in removed:       # own: Connection: Remote-User must not strip the user it adds
                if name == b"connection":
                    fields = _drop_listed(fields, value)
        if admitted is not None and (admitted.drop or admitted.add):
            fields = edit_fields(fields, admitted.drop, admitted.add)
        rules = None
        route = self.ex.route
        if edits_request(route):
            path, rules = forwarding(route, path)
        line = head.line if path is head.target else b"%s %s" % (self.ex.method,
                                                                  path.encode("latin-1"))
        if not removed or (len(removed) == 1 and removed[0][0] == b"connection" and removed[0][1] in _PLAIN_CONNECTION):
            # The usual request: no forwarding headers of its own, so the ones we add depend on the Host only.
            if host != self.forwarded_host:
                self.forwarded_host, self.forwarded_tail = host, self._forwarded_tail(host, [], [])
            tail = self.forwarded_tail
        else:
            forwarded_for, forwarded = [], []
            for name, value in removed:
                if name == b"x-forwarded-for":
                    forwarded_for.append(value)
                elif name == b"forwarded":
                    forwarded.append(value)
                elif name == b"connection" and admitted is None:
                    fields = _drop_listed(fields, value)
            tail = self._forwarded_tail(host, forwarded_for, forwarded)
        if rules:  # after edge's forwarding headers: a rule may change those too
            block = edit_fields(fields + tail[:-4], rules.gone, rules.set)
            return b"%s HTTP/1.1%s\r\n\r\n" % (line, block)
        return b"%s HTTP/1.1%s%s" % (line, fields, tail)

    def _forwarded_tail(self, host: bytes, forwarded_for: list[bytes], forwarded: list[bytes]) -> bytes:
        """The forwarding headers edge adds (after those the client sent), and the blank line."""
        return forwarded_block(self.info.client[0], self.scheme, host, forwarded_for, forwarded) + b"\r\n\r\n"

    # -- the upstream connection ----------------------------------------------------------

    def upstream_ready(self, connection: UpstreamConnection) -> None:
        if self.closed or self.head is None:
            self.pool.release(connection, reusable=True)  # nothing was sent on it
            return
        self.upstream = connection
        connection.start(self, self.ex.method, self.upgrade is not None)
        out = [self.upstream_head]
        body = self.body
        if body is not None:
            if (self.head.header("expect") or "").lower() == "100-continue":
                self._write(CONTINUE)
            if self.buffer:
                if not self._take_body(out):
                    return
        write_now(connection.transport, b"".join(out) if len(out) > 1 else out[0])
        if self.body is None:
            self._arm(self.runtime.config.timeouts.response, "response")
        else:  # the response deadline starts once the body is sent; until then the client must keep sending
            self._arm(self.runtime.config.timeouts.idle, "body")
            connection.transport.registerProducer(self.transport, True)
            self.producing = True
        if self.paused and (self.body is not None or len(self.buffer) <= MAX_HEAD):
            self.paused = False
            self.transport.resumeProducing()

    def _take_body(self, out: list[bytes]) -> bool:
        """Move the request body bytes in the buffer to ``out``; False if the request was refused."""
        data = self.buffer
        body = self.body
        counted = body.total if type(body) is ChunkedReader else 0
        try:
            used, done = body.feed(data)
        except Malformed as e:
            self._refuse_body(400, str(e))
            return False
        # counted against max_body: a chunked body's payload (as its size lines announce it), else the bytes
        action = self.ex.body(body.total - counted if type(body) is ChunkedReader else used)
        if action is not None:
            self._act(action)
            return False
        self.buffer = data[used:]
        relay = self.relay
        if relay is None:
            out.append(data if used == len(data) else data[:used])
        else:
            pieces = getattr(body, "pieces", None)  # a chunked body's payload
            if pieces is not None:
                payload = b"".join(pieces)
                pieces.clear()
            else:
                payload = data if used == len(data) else data[:used]
            relay.body_data(payload, done)
        if done:
            self._body_done()
        return True

    def _relay_body(self, data: bytes) -> None:
        if self.deadline_kind == "body":
            self.deadline = time.monotonic() + self.runtime.config.timeouts.idle
        self.buffer = data
        out: list[bytes] = []
        if self._take_body(out) and out and out[0]:
            assert self.upstream is not None  # the body goes to the upstream connection: no relay took it
            self.upstream.transport.write(out[0])

    def _body_done(self) -> None:
        self.body = None
        if self.relay is not None and self.paused and len(self.buffer) <= MAX_HEAD and not self.closed:
            self.paused = False  # read on: a pipelined request, or the client's close
            self.transport.resumeProducing()
        if self.producing:
            self.producing = False
            if self.upstream is not None:
                self.upstream.transport.unregisterProducer()
            if not self.paused and not self.closed:
                self.transport.resumeProducing()  # the server may have paused us just before the end
        if self.deadline_kind == "body" and (self.upstream is not None or self.relay is not None) \
                and not self.ex.response_started:
            self._arm(self.runtime.config.timeouts.response, "response")

    def _drop_upstream(self, reusable: bool = False) -> None:
        """Done with the upstream connection: back to the pool if ``reusable``, else closed (or the HTTP/2
        backend's stream released: reset unless it ended)."""
        self._cancel_response_timer()
        relay, self.relay = self.relay, None
        if relay is not None:
            self._stop_streaming()
            relay.release()
        connection, self.upstream = self.upstream, None
        if connection is None:
            return
        if self.producing:
            self.producing = False
            connection.transport.unregisterProducer()
        connection.owner = None
        self.pool.release(connection, reusable)

    def _refuse_body(self, status: int, reason: str) -> None:
        self._drop_upstream()
        self.body = None
        self._answer_and_close(status, reason)

    def _act(self, action: Reply | Cut | Retry) -> None:
        """Carry out what the exchange decided: the request again (on a stream or connection of the same
        backend), edge's answer instead of the backend's, or the response cut short."""
        warn(self.info, action)
        if isinstance(action, Retry):
            relay = self.relay
            if relay is not None:
                relay.again(action.fresh)
            else:
                self._drop_upstream()
                self.pool.acquire(self, fresh=action.fresh)
            return
        self._drop_upstream()
        if self.closed:
            return
        ex = self.ex
        if isinstance(action, Reply):
            ex.outcome = action.outcome
            self._answer(action.status, action.text, close=self.body is not None)
            return
        # Cut: the client sees the response end early
        ex.end(action.outcome, action.status)
        timeout = action.outcome == "timeout"
        self.info.ended = Outcome.TIMEOUT.because("idle") if timeout else self.info.ended or Outcome.ERROR.because(
            "backend response cut short" if action.outcome == "backend_failed" else action.outcome)
        self._log()
        self._close(abort=timeout)  # what is queued for a client that took nothing all this time is not waited for

    def upstream_unavailable(self, status: int, reason: str) -> None:
        if not self.closed:
            self._act(self.ex.unavailable(status, reason))

    def upstream_response(self, connection: UpstreamConnection, head: ResponseHead, body: bytes, done: bool) -> None:
        self._cancel_response_timer()
        ex = self.ex
        ex.connected(connection.state.name)
        self.info.server = ex.server
        reply = ex.response(head.status, time.monotonic(), self.runtime.config.error_pages)
        if reply is not None:
            self._intercept(reply, connection, done)
            return
        if head.status == 101:  # only ever reported for a request that asked to upgrade
            self._open_tunnel(connection, head, body)
            return
        out = self._response_head(head, connection, done)
        if body or done:
            out += self._encode(body, done)
        self._write(out)
        if done:
            self._finish(connection.reusable)
        elif not self.closed:
            if self.backlog is not None:
                self._watch_backlog(False)
            self.streaming = connection.streamed = True
            self.transport.registerProducer(connection.transport, True)
            # A client that stops reading pauses the backend, and a backend that stops sending leaves the
            # client waiting: either way nothing moves, and the idle timeout ends it.
            self._arm(self.runtime.config.timeouts.idle, "idle")

    def _intercept(self, reply: Reply, connection: UpstreamConnection | None, done: bool) -> None:
        """The backend answered an error edge has a page for, on a route with ``intercept_errors``: the client
        gets edge's answer with that page (only the status is kept, as nginx's ``proxy_intercept_errors``).
        The rest of the backend's body is read and dropped, bounded (:class:`Discard`); an HTTP/2 backend's
        stream is reset unless it ended."""
        self.ex.outcome = reply.outcome
        if connection is not None:
            self.upstream = None
            if self.producing:  # the request body was still going: that connection cannot be reused
                self.producing = False
                connection.transport.unregisterProducer()
            connection.owner = None
            if done or self.body is not None:
                self.pool.release(connection, done and self.body is None and connection.reusable)
            else:
                runtime = self.runtime
                Discard(self.pool, connection, DISCARD_LIMIT, runtime.reactor, runtime.config.timeouts.response)
        self._drop_upstream()  # an HTTP/2 backend's stream
        if self.body is not None:  # the rest of the request body is unread: this connection cannot go on
            self.body = None
            self.close_after = True
        self._answer(reply.status, reply.text, close=self.close_after)

    def upstream_body(self, data: bytes, done: bool) -> None:
        if self.deadline_kind == "idle":  # a streamed response or a tunnel: it moves
            self.deadline = time.monotonic() + self.runtime.config.timeouts.idle
        encoded = self._encode(data, done)
        if encoded:
            self._write(encoded)
        if done:
            self._stop_streaming()
            self._finish(self.upstream.reusable if self.upstream is not None else False)

    def _stop_streaming(self) -> None:
        if self.streaming:
            self.streaming = False
            self.transport.unregisterProducer()

    def upstream_failed(self, connection: UpstreamConnection, reason: str) -> None:
        if self.closed:
            self._drop_upstream()
            return
        # a kept-alive connection the server had just closed: the request may go once more on a new one
        self._act(self.ex.failed(reason, again=connection.reused))

    # -- an HTTP/2 backend's stream (edge.http.h1_to_h2) -------------------------------------

    def relay_ready(self, relay: H2Relay) -> None:
        """The request's stream is open: the body the client sent so far goes on it, the rest as it comes."""
        if self.closed or self.relay is not relay:
            return
        runtime = self.runtime
        assert relay.connection is not None and self.head is not None  # a stream is open for this request
        self.info.server = self.ex.server = relay.connection.state.name
        if self.body is None:
            self._arm(runtime.config.timeouts.response, "response")
            if self.paused and len(self.buffer) <= MAX_HEAD:
                self.paused = False
                self.transport.resumeProducing()
            return
        if (self.head.header("expect") or "").lower() == "100-continue":
            self._write(CONTINUE)
        # the response deadline starts once the body is sent; until then the client must keep sending
        self._arm(runtime.config.timeouts.idle, "body")
        if self.buffer and not self._take_body([]):
            return
        if self.body is not None:
            relay.body_data(b"", False)  # reading the client resumes unless as much of its body waits already

    def body_room(self, room: bool) -> None:
        """Read the client's body only while little of it waits for the backend stream's window."""
        if self.body is None or self.closed:
            return
        if room and self.paused:
            self.paused = False
            self.transport.resumeProducing()
        elif not room and not self.paused:
            self.paused = True
            self.transport.pauseProducing()

    def relay_response(self, relay: H2Relay, status: int, head: bytes, ended: bool) -> None:
        """The backend's response head, written as HTTP/1.1; its body streams with the client's socket as
        the producer's pace (the relay acknowledges the backend only what that socket took)."""
        self._cancel_response_timer()
        reply = self.ex.response(status, time.monotonic(), self.runtime.config.error_pages)
        if reply is not None:
            self._intercept(reply, None, ended)
            return
        if relay.response.close:
            self.close_after = True
        self._write(head)
        if not ended and not self.closed:
            if self.backlog is not None:
                self._watch_backlog(False)
            self.streaming = True
            self.transport.registerProducer(relay, True)
            self._arm(self.runtime.config.timeouts.idle, "idle")

    def relay_body(self, data: bytes) -> None:
        if self.deadline_kind == "idle":
            self.deadline = time.monotonic() + self.runtime.config.timeouts.idle
        if data:
            self.ex.sent += len(data)
            self._write(data)

    def relay_end(self, tail: bytes) -> None:
        """The backend's response is complete (``tail``: the last chunk and trailers, if chunked)."""
        if tail:
            self.ex.sent += len(tail)
            self._write(tail)
        self._stop_streaming()
        self._finish(False)

    def relay_failed(self, reason: str, again: bool, unprocessed: bool) -> None:
        """The backend's stream failed (before its response: ``again``; unprocessed by the server: ``unprocessed``)."""
        if self.closed:
            self._drop_upstream()
            return
        self._act(self.ex.failed(reason, again, unprocessed))

    def _response_timeout(self) -> None:
        relay = self.relay
        if relay is not None and relay.connection is not None:
            relay.connection.check()  # a connection gone silent is dropped, not kept for the next request
        if self.closed or self.ex.response_started:
            self._drop_upstream()
            return
        self._act(self.ex.expired("response", self.runtime.config.timeouts.response))

    def _cancel_response_timer(self) -> None:
        if self.deadline_kind == "response":
            self.deadline = None

    def _response_head(self, head: ResponseHead, connection: UpstreamConnection, done: bool) -> bytes:
        assert self.head is not None  # the request this answers
        http10 = self.head.version == "1.0"
        fields, removed = drop_fields(head.fields, head.lower, RESPONSE_DROP_TE if http10 else RESPONSE_DROP)
        for name, value in removed:
            if name == b"connection":
                fields = _drop_listed(fields, value)
        extra = b""
        chunked = head.lower.find(b"\r\ntransfer-encoding:") >= 0
        reader = connection.reader
        encoding = None
        policy = self.policy
        if policy is not None:  # the route's response rules, HSTS, compression
            listed, encoding = policy.backend(head.status, field_list(fields, fields.lower()))
            if encoding is not None:
                listed = [field for field in listed if field[0] != b"transfer-encoding"]
            fields = block_fields(listed)
        if encoding is not None:  # compressed: no length, so chunked (HTTP/1.0: ended by the close)
            self.transform = BodyCoder(chunked, encoding, not http10)
            if http10:
                self.close_after = True
            else:
                extra = b"\r\nTransfer-Encoding: chunked"
        elif http10:
            if chunked:
                self.transform = BodyCoder(True, None, False)
            if chunked or (reader is not None and not isinstance(reader, (LengthReader, ChunkedReader))):
                self.close_after = True  # no length to tell the end by: the close does
        elif not done and reader is not None and not chunked and not isinstance(reader, LengthReader):
            extra = b"\r\nTransfer-Encoding: chunked"  # the server delimits by closing: we chunk instead
            self.transform = BodyCoder(False, None, True)
        if self.close_after:
            extra += b"\r\nConnection: close"
        elif http10:
            extra += b"\r\nConnection: keep-alive"
        return b"HTTP/1.1 %d %s%s%s\r\n\r\n" % (head.status, head.reason, fields, extra)

    def _encode(self, data: bytes, done: bool) -> bytes:
        transform = self.transform
        if transform is None:
            self.ex.sent += len(data)
            return data
        out = transform.feed(data, done)
        self.ex.sent += len(out)
        return out

    def _finish(self, reusable: bool) -> None:
        """The response is complete: log it, keep or close both connections, start on the next request."""
        if self.body is not None:
            reusable = False  # the server answered before the whole body was sent
            self._body_done()
            self.close_after = True  # the rest of the body is unread: this connection cannot go on
        self._drop_upstream(reusable)
        if self.closed:
            return
        self._log()
        if self.close_after:
            self._close()
            return
        self._await_next()

    def _await_next(self) -> None:
        """This request is done and the connection stays: wait for (or start on) the next one."""
        self.head = None
        self.body = None
        self.policy = None
        self._arm(self.runtime.config.timeouts.idle, "idle")
        if self.backlog is not None:
            self._watch_backlog(True)
        self._go_on()

    def _watch_backlog(self, on: bool) -> None:
        """Register (or unregister) :class:`Backlog` as the client transport's producer, when it is used:
        only while no response feeds the client, and never across a close (Twisted would resume it
        rather than close)."""
        backlog = self.backlog
        if backlog is None or backlog.registered == on or (on and (self.closed or self.streaming)):
            return
        backlog.registered = on
        backlog.behind = False
        if on:
            self.transport.registerProducer(backlog, True)
        else:
            self.transport.unregisterProducer()

    def _go_on(self) -> None:
        if self.queued() > MAX_UNREAD or (self.backlog is not None and self.backlog.behind):
            # The client is behind on its answers: start nothing more (and read nothing) until it catches up;
            # if it never does, the idle deadline closes the connection.
            if not self.paused:
                self.paused = True
                self.transport.pauseProducing()
            if self.drain_call is None:
                self.drain_call = self.runtime.reactor.callLater(DRAIN_CHECK, self._drain_check)
            return
        if self.paused:
            self.paused = False
            self.transport.resumeProducing()
        if self.buffer:
            self._next_request()
        elif self.client_eof:
            self._close()

    def _drain_check(self) -> None:
        self.drain_call = None
        if not self.closed and self.head is None:
            self._go_on()

    def _write(self, data: bytes) -> None:
        if self.plain:
            self.info.bytes_out += len(data)
        self.transport.write(data)

    # -- answers the edge gives itself --------------------------------------------------

    def _answer(self, status: int, text: str, close: bool = False, location: str | None = None,
                headers: tuple[tuple[str, str], ...] = ()) -> None:
        head = self.head
        close = close or self.close_after
        fields, payload = own_answer(status, f"{text}\n", self.runtime.config.error_pages, location, headers)
        if self.policy is not None:  # an answer on a route: its response rules and HSTS
            fields = self.policy.fields(fields)
        message = h1_message(status, fields, payload, close, head is not None and head.method == "HEAD")
        self._write(message)
        if head is not None:
            ex = self.ex
            ex.status, ex.sent = status, len(message)
            ex.outcome = ex.outcome or "answered"
            self._log()
        if close:
            self.info.ended = self.info.ended or Outcome.ERROR.because(text) if status >= 400 else self.info.ended
            self._close()
            return
        self._await_next()

    def _answer_and_close(self, status: int, text: str) -> None:
        self.info.ended = Outcome.ERROR.because(REASON_TEXT.get(status, text))
        self._answer(status, text, close=True)

    def _close(self, abort: bool = False) -> None:
        self.closed = True
        self._cancel_wait()
        if self.backlog is not None:
            self._watch_backlog(False)
        self._stop_streaming()
        self._drop_upstream()  # not kept while a slow client takes the last bytes
        if abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    def _log(self) -> None:
        if self.head is not None:
            log_exchange(self.info, self.ex)

    # -- timers ---------------------------------------------------------------------------

    def _arm(self, seconds: float, kind: str) -> None:
        """Set this connection's one deadline: for its request head, its keep-alive or its response."""
        deadline = time.monotonic() + seconds
        self.deadline, self.deadline_kind = deadline, kind
        if self.timer is None:
            self._schedule(seconds)
        elif self.timer_at > deadline:
            self.timer.reset(seconds)
            self.timer_at = deadline

    def _schedule(self, seconds: float) -> None:
        # Never further ahead than a response deadline, so arming one never has to move the timer.
        seconds = min(seconds, self.runtime.config.timeouts.response)
        self.timer = self.runtime.reactor.callLater(seconds, self._tick)
        self.timer_at = time.monotonic() + seconds

    def _tick(self) -> None:
        self.timer = None
        if self.closed or self.deadline is None:
            return
        remaining = self.deadline - time.monotonic()
        if remaining > 0:
            self._schedule(remaining)
            return
        self.deadline = None
        kind = self.deadline_kind
        if kind == "response":
            self._response_timeout()
            return
        if kind == "body":
            self.info.ended = Outcome.TIMEOUT.because("request body")
            self._act(self.ex.expired("body", self.runtime.config.timeouts.idle))
            return
        if kind == "head":
            self.info.ended = Outcome.TIMEOUT.because("request head")
            self._write(error_response(408, self.runtime.config.error_pages))
            self._close()
            return
        if self.head is not None:  # idle in the middle of a response or a tunnel
            self._act(self.ex.expired(kind, self.runtime.config.timeouts.idle))
            return
        self.info.ended = Outcome.TIMEOUT.because("idle")
        # Behind on its answers: what is queued for a client that took nothing all this time is not waited for.
        self._close(abort=self.drain_call is not None)

    def _cancel_wait(self) -> None:
        self.deadline = None
        auth, self.auth = self.auth, None
        if auth is not None:
            auth.cancel()
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()
        call, self.drain_call = self.drain_call, None
        if call is not None and call.active():
            call.cancel()

    # -- WebSocket --------------------------------------------------------------------------

    def _open_tunnel(self, connection: UpstreamConnection, head: ResponseHead, body: bytes) -> None:
        """The backend switched protocols (101): relay its answer, then bytes both ways until either side closes."""
        fields, removed = drop_fields(head.fields, head.lower, RESPONSE_DROP_TE)
        upgrade = next((value for name, value in removed if name == b"upgrade"), self.upgrade)
        self.tunnel = True
        self.close_after = True
        self.info.protocol = "websocket"
        self.ex.sent += len(body)
        self._write(b"HTTP/1.1 101 %s%s\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n%s"
                             % (head.reason, fields, upgrade, body))
        if self.closed:
            return
        self._arm(self.runtime.config.timeouts.idle, "idle")
        if self.backlog is not None:
            self._watch_backlog(False)
        self.streaming = connection.streamed = True
        self.transport.registerProducer(connection.transport, True)
        self.producing = True
        connection.transport.registerProducer(self.transport, True)
        if self.paused:
            self.paused = False
            self.transport.resumeProducing()
        if self.buffer:  # sent by the client right behind its request
            leftover, self.buffer = self.buffer, b""
            self._tunnel_out(leftover)

    def _tunnel_out(self, data: bytes) -> None:
        self.deadline = time.monotonic() + self.runtime.config.timeouts.idle
        assert self.upstream is not None  # the tunnel's other end
        self.upstream.transport.write(data)

    def readConnectionLost(self) -> None:
        """The client sent its last byte (a TCP half-close)."""
        if self.closed:
            return
        self.client_eof = True
        if self.body is not None or self.tunnel or (self.head is None and self.drain_call is None):
            # A body that can no longer arrive, a tunnel's client that left, or nothing complete to answer
            # (a complete request in the buffer would have been started already).
            self.info.ended = self.info.ended or CLIENT_CLOSED
            if self.head is not None:
                self.ex.client_gone("client_closed")
                self._log()
            self._close()
        # else: the requests it sent are answered, then the connection closes (_go_on)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure | None = None) -> None:
        was_closed, self.closed = self.closed, True
        self._cancel_wait()
        self.streaming = False
        self._drop_upstream()
        if not was_closed and self.head is not None:
            self.ex.client_gone("client_closed")
            self._log()
        self.info.finish(self.info.ended or CLOSED)
