# -*- test-case-name: tests.e2e.test_h2_server, tests.e2e.test_hostile_h2, tests.e2e.test_grpc -*-
"""HTTP/2 clients of terminated routes: the Twisted shell around :class:`edge.http.h2.H2Codec`.

:class:`H2Server` moves bytes between the TLS connection and the codec and
owns the connection's timers; each request is an :class:`H2Exchange`
relayed to the route's backend over its HTTP/1.1 keep-alive pool
(:mod:`edge.http.h1_client`), the same pool the HTTP/1.1 front end uses,
with the same routing decision (:mod:`edge.http.policy`), forwarding
headers (:mod:`edge.http.forwarded`) and answers (:mod:`edge.http.answers`).

Streaming both ways, memory bounded per stream:

- a response body is sent as the client's windows and the connection's
  socket allow; bytes the client cannot take yet stay with the exchange and
  its backend connection is paused until a WINDOW_UPDATE (or the socket
  draining) resumes it: at most one read of the backend is held;
- a request body goes to the backend as DATA frames arrive (chunked when the
  client gave no length), and is acknowledged to the client (WINDOW_UPDATE)
  only once the backend connection has taken it: a backend that does not
  read leaves the client with a closed window, not edge with the bytes.

Timers: a request must get its response head within ``timeouts.response``
of its body's end; a request or response body, or a WebSocket, that stops
moving for ``timeouts.idle`` is reset; a connection with no request for
``timeouts.idle``, whose first request has not come within
``timeouts.inspect`` (as an HTTP/1.1 connection's first head), or whose
header block has not completed within ``timeouts.inspect``, gets GOAWAY and
is closed.  Streams the client opens and resets in the same read are never
started (rapid reset).
"""

from __future__ import annotations

import base64
import os
import time
from typing import Any

from h2.errors import ErrorCodes
from twisted.internet import tcp
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from edge.config import Route
from edge.ops.access_log import ConnectionInfo
from edge.ops.outcomes import CLIENT_CLOSED, CLOSED, Outcome
from edge.net.eager import write_now
from edge.net.event_loop import after_events
from edge.http.answers import DISCARD_LIMIT, REASON_TEXT, own_answer
from edge.http.events import Aborted, Body, BodyEnd, Draining, Ended, Request, Trailers, WindowOpened
from edge.http.fields import RESPONSE_SKIP, admitted_fields, edit_fields, h2_request_fields, sort_fields
from edge.http.forwarded import forwarded_block
from edge.http.framing import LAST_CHUNK, ResponseHead, chunk
from edge.http.h1 import HOP_BY_HOP, BadRequest, field_list, request_line_ok
from edge.http.h1_client import Discard, UpstreamConnection
from edge.http.h2_client import H2BackendConnection
from edge.http import h2_lean
from edge.http.h2 import H2Codec
from edge.http.exchange import Cut, Exchange, Reply, Retry
from edge.http.policy import Admission, Admitted, Answer, Ask, Forward, Refusal, body_limit
from edge.http.forward_auth import ask_auth
from edge.http.relay import log_exchange, warn
from edge.http.snapshot import HttpSnapshot
from edge.http.transform import BodyCoder, HeaderRules, ResponsePolicy, edits_request, forwarding, response_policy
from edge.net import fastpath
from edge.net.timers import coarse

log = Logger()
fastpath.adopt(h2_lean.NAME, h2_lean.ON, h2_lean.SWITCHED_OFF, h2_lean.MISSING)  # the codec's fast path

DISCARD_BODY = 4 * 1024 * 1024
_NONE: frozenset[int] = frozenset()
# Headers of a backend's 101 that belong to the HTTP/1.1 upgrade only (RFC 8441 5: the answer is a 200).
_TUNNEL_SKIP = HOP_BY_HOP | {b"sec-websocket-accept"}


@implementer(IPushProducer)
class H2Server(Protocol):
    """One HTTP/2 client connection (ALPN ``h2``)."""

    transport: TLSMemoryBIOProtocol | tcp.Connection  # the client's: TLS terminated here (or plain)

    def __init__(self, runtime: HttpSnapshot, info: ConnectionInfo, scheme: str = "https") -> None:
        self.runtime = runtime
        self.info = info
        self.scheme = scheme
        self.codec = H2Codec()
        self.exchanges: dict[int, H2Exchange] = {}
        # Streams answered before the client finished sending: how much more of their body is read and
        # dropped (so that the client reads the answer; curl discards it on a reset) before a reset.
        self.discarding: dict[int, int] = {}
        self.answers: dict[int, bytes] = {}  # the rest of edge's own answers, waiting for the client's window
        self.receiving = False  # inside dataReceived: frames are sent once, at its end
        self.flush_pending = False
        self.aborted: frozenset[int] | set[int] = _NONE  # streams reset in the read being handled
        self.write_paused = False  # the client's socket is full: streams hold their bytes
        self.closed = False
        self.requests = 0
        self.last_activity = time.monotonic()
        self.head_since: float | None = None  # bytes arrived that completed nothing yet (a header block trickling)
        self.timer: Any = None
        # The admission step (Host, route, access rules); it keeps the last :authority: requests repeat it.
        self.admission = Admission(runtime.routes, runtime.guards, scheme, info.sni, info.client[0],
                                   runtime.https_port, runtime.reactor.seconds)
        self.forwarded_for: bytes | None = None  # the :authority the forwarding headers below were made for
        self.forwarded = b""

    # -- the client's bytes -------------------------------------------------------------

    def connectionMade(self) -> None:
        self.info.protocol = "h2"
        self.transport.registerProducer(self, True)
        self.flush()
        self._schedule(min(self.runtime.config.timeouts.inspect, self.runtime.config.timeouts.idle))
        self.head_since = self.last_activity

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return  # after GOAWAY nothing more is read
        now = time.monotonic()
        self.receiving = True
        try:
            codec = self.codec
            events = codec.receive(data, now)
            if codec.progress:  # some frame completed (before the first request, only a request counts)
                if self.requests:
                    self.head_since = None
            elif self.head_since is None:  # part of a frame or of a header block: it must complete in time
                self.head_since = now
            if len(events) > 1 and any(type(event) is Aborted for event in events):
                # Streams opened and reset in the same read (rapid reset) are never started.
                self.aborted = {event.stream for event in events if type(event) is Aborted}
            for event in events:
                self._event(event)
            self.aborted = _NONE
        finally:
            self.receiving = False
        self.flush_now()

    def _event(self, event: Any) -> None:
        kind = type(event)
        if kind is Body:
            exchange = self.exchanges.get(event.stream)
            if exchange is not None:
                exchange.client_body(event.data, event.size)
            else:  # the rest of a body edge no longer wants (answered early): dropped, window given back
                self.codec.ack(event.stream, event.size)
                budget = self.discarding.get(event.stream)
                if budget is not None:
                    if budget < event.size:
                        del self.discarding[event.stream]
                        self.codec.reset(event.stream, ErrorCodes.NO_ERROR)
                    else:
                        self.discarding[event.stream] = budget - event.size
        elif kind is Request:
            self._request(event)
        elif kind is BodyEnd:
            exchange = self.exchanges.get(event.stream)
            if exchange is not None:
                exchange.client_end()
            elif self.discarding:
                self.discarding.pop(event.stream, None)
        elif kind is WindowOpened:
            if self.answers:
                self._send_answers()
            if not self.write_paused:
                if event.stream == 0:
                    for exchange in list(self.exchanges.values()):
                        if exchange.pending:
                            exchange.push()
                else:
                    exchange = self.exchanges.get(event.stream)
                    if exchange is not None and exchange.pending:
                        exchange.push()
        elif kind is Trailers:
            exchange = self.exchanges.get(event.stream)
            if exchange is not None:
                exchange.trailers_in = event.fields  # passed on to an HTTP/2 backend; an HTTP/1.1 one gets none
        elif kind is Aborted:
            exchange = self.exchanges.get(event.stream)
            if exchange is not None:
                exchange.client_gone("client_aborted")
            else:
                if self.discarding:
                    self.discarding.pop(event.stream, None)
                if self.answers:
                    self.answers.pop(event.stream, None)
        elif kind is Draining:  # the client's graceful GOAWAY: its streams finish, then the connection closes
            self.info.ended = CLIENT_CLOSED
            if not self.exchanges and not self.answers:
                self._close()
        elif kind is Ended:
            if event.error:
                log.warn("{client}: {reason}", client=self.info.client[0], reason=event.reason)
                self.info.ended = Outcome.ERROR.because(event.reason)
            else:
                self.info.ended = CLIENT_CLOSED
            self._close()

    def flush(self) -> None:
        """Send the frames the codec has queued: at the end of the received batch, or once the events of
        this reactor turn are handled (responses from several backends then leave in one TLS write)."""
        if self.receiving or self.flush_pending:
            return
        self.flush_pending = True
        after_events(self.runtime.reactor, self.flush_now)

    def flush_now(self) -> None:
        self.flush_pending = False
        data = self.codec.data_to_send()
        if data and self.transport is not None and not self.transport.disconnecting:
            self.transport.write(data)

    # -- requests -------------------------------------------------------------------------

    def _request(self, event: Request) -> None:
        stream = event.stream
        self.requests += 1
        self.head_since = None
        self.last_activity = started = time.monotonic()  # requests, not PINGs, keep a connection
        if stream in self.aborted:
            self._log(event, 499, 0, None, started, "client_aborted")
            return
        if event.oversized:
            self.answer(stream, event, 431, REASON_TEXT[431], started=started)
            return
        if event.malformed is not None:
            self.answer(stream, event, 400, f"malformed request: {event.malformed}", started=started)
            return
        method, target, authority = event.method, event.target, event.authority
        if event.protocol is not None:  # a tunnel (extended CONNECT)
            if method != b"CONNECT" or event.protocol.lower() != b"websocket":
                self.answer(stream, event, 501, "only WebSocket is tunnelled", started=started)
                return
            if not request_line_ok(b"GET", target):  # it becomes a GET request line to the backend
                self.answer(stream, event, 400, "malformed :path", started=started)
                return
        elif not request_line_ok(method, target):  # it becomes an HTTP/1.1 request line to the backend
            self.answer(stream, event, 400, "malformed :method or :path", started=started)
            return
        host_header = None
        for field, value in event.fields:
            if field == b"host":
                if host_header is not None:
                    self.answer(stream, event, 400, "more than one Host header", started=started)
                    return
                host_header = value
        if authority is None:
            authority = host_header
        elif host_header is not None and host_header.lower() != authority.lower():
            self.answer(stream, event, 400, "Host and :authority differ", started=started)  # RFC 9113 8.3.1
            return
        if not authority:
            self.answer(stream, event, 400, "missing :authority", started=started)
            return
        decision = self.admission.admit(authority, method, target.decode("latin-1"), lambda: event.fields)
        if type(decision) is Answer:  # 404, 421, 308, a 400 for an invalid :authority, an access rule's 401 / 403 / 429
            route = decision.route
            self.answer(stream, event, decision.status, decision.text, decision.location, route=route,
                        started=started, headers=decision.headers,
                        policy=None if route is None else self._policy(route, event))
            return
        ask = decision if type(decision) is Ask else None
        if type(decision) is Forward or type(decision) is Ask:
            route, admitted = decision.route, decision.admitted
        else:
            route, admitted = decision, None
        self._proceed(stream, event, authority, route, admitted, started, self._policy(route, event), ask)

    def _policy(self, route: Route, event: Request) -> ResponsePolicy | None:
        """What ``route`` does to this request's responses (edge's answers too): header rules, HSTS, compression."""
        return response_policy(route, self.scheme, event.method,
                               [value for name, value in event.fields if name == b"accept-encoding"]
                               if route.compress else ())

    def _proceed(self, stream: int, event: Request, authority: bytes, route: Any, admitted: Admitted | None,
                 started: float, policy: ResponsePolicy | None, ask: Ask | None) -> None:
        """The request may go on to ``route``'s backend: its head for the backend, then an exchange."""
        runtime = self.runtime
        method, target, tunnel = event.method, event.target, event.protocol is not None
        fields = event.fields
        if admitted is not None and (admitted.drop or admitted.add):
            fields = admitted_fields(fields, admitted.drop, admitted.add)
        rules = None
        if edits_request(route):
            path, rules = forwarding(route, target.decode("latin-1"))
            target = path.encode("latin-1")
        upstream = runtime.upstreams[route.backend]
        head: bytes | list[tuple[bytes, bytes]]  # the request head: HTTP/2 fields, or an HTTP/1.1 head
        try:
            if upstream.h2 is not None:
                if tunnel:
                    raise BadRequest(501, "WebSocket to an HTTP/2 backend is not supported")
                sorted_ = sort_fields(fields)
                head, chunked, length, expect = h2_request_fields(
                    sorted_, method, upstream.h2_scheme, authority, target,
                    self.info.client[0], self.scheme), False, sorted_.length, False
                if rules:  # after edge's forwarding headers: a rule may change those too
                    head = rules.apply(head)
            else:
                head, chunked, length, expect = self._upstream_head(event, fields, method, target, authority, tunnel,
                                                                    rules)
            if event.ended and length:  # a length no DATA will follow: the backend would read the next request
                raise BadRequest(400, "content-length without a body")
            limit = body_limit(route, length)
        except BadRequest as e:
            self.answer(stream, event, e.status, str(e), route=route, started=started, policy=policy)
            return
        ex = request_exchange(event, started)
        ex.forward(route, not event.ended, None if tunnel else limit)
        ex.user = admitted.user if admitted is not None else None
        exchange = H2Exchange(self, stream, event, ex, head, chunked, tunnel, expect)
        exchange.policy = policy
        if ask is not None:  # the auth server (or the password hashing) first; the body waits in the exchange
            self.exchanges[stream] = exchange  # its body, end and reset are its own while the auth server thinks
            exchange.held = []
            exchange.auth = ask_auth(runtime.auth_upstreams, runtime.reactor, ask.question,
                                     lambda result: exchange.auth_answered(ask.answered(result), upstream))
            return
        self.exchanges[stream] = exchange
        exchange.start(upstream)

    def _upstream_head(self, event: Request, fields: list[tuple[bytes, bytes]], method: bytes, target: bytes,
                       authority: bytes, tunnel: bool, rules: HeaderRules | None = None) \
            -> tuple[bytes, bool, int | None, bool]:
        """The HTTP/1.1 request head for the backend; whether its body is chunked; its length; Expect: 100-continue.
        (Names and values were checked by the codec: lower-case tokens, no control characters.)"""
        sorted_ = sort_fields(fields)
        kept = [b"\r\n%s: %s" % field for field in sorted_.kept]
        if sorted_.cookies:  # RFC 9113 8.2.3: one header for HTTP/1.1, its crumbs joined
            kept.append(b"\r\ncookie: %s" % b"; ".join(sorted_.cookies))
        length = sorted_.length
        chunked = False
        if tunnel:  # RFC 8441: the backend gets the HTTP/1.1 WebSocket handshake
            key = base64.b64encode(os.urandom(16))
            line = b"GET %s HTTP/1.1\r\nhost: %s" % (target, authority)
            framing = b"\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-key: %s" % key
        else:
            line = b"%s %s HTTP/1.1\r\nhost: %s" % (method, target, authority)
            if length is not None:
                framing = b"\r\ncontent-length: %d" % length
            elif event.ended:
                framing = b""
            else:
                framing, chunked = b"\r\ntransfer-encoding: chunked", True
        if sorted_.prior_for or sorted_.prior_forwarded:
            forwarded = forwarded_block(self.info.client[0], self.scheme, authority, sorted_.prior_for,
                                        sorted_.prior_forwarded)
        elif authority == self.forwarded_for:  # the usual request: the same :authority as the last one
            forwarded = self.forwarded
        else:
            forwarded = self.forwarded = forwarded_block(self.info.client[0], self.scheme, authority)
            self.forwarded_for = authority
        block = b"".join(kept) + framing + forwarded
        if rules:  # after edge's forwarding headers: a rule may change those too (never the framing: config refuses)
            block = edit_fields(block, rules.gone, rules.set)
        return line + block + b"\r\n\r\n", chunked, length, sorted_.expect

    def answer(self, stream: int, event: Request, status: int, text: str, location: str | None = None,
               route: Any = None, started: float = 0.0, exchange: "H2Exchange | None" = None,
               headers: tuple[tuple[str, str], ...] = (), policy: ResponsePolicy | None = None) -> int:
        """Edge's own answer on ``stream`` (then a reset, if the client was still sending its body); on a
        route, with its response rules and HSTS (``policy``)."""
        fields, body = own_answer(status, f"{text}\n", self.runtime.config.error_pages, location, headers)
        if exchange is not None:
            policy = exchange.policy
        if policy is not None:
            fields = policy.fields(fields)
        head_only = event.method == b"HEAD"
        codec = self.codec
        codec.respond(stream, status, fields, end=head_only)
        if not head_only:
            sent = codec.send(stream, body, True)
            if 0 <= sent < len(body):  # the client's window is closed: the rest waits for its WINDOW_UPDATE
                self.answers[stream] = body[sent:]
        if not event.ended and (exchange is None or not exchange.client_done):
            self.stop_reading(stream)
        self.flush()
        if exchange is None:
            self._log(event, status, len(body), route, started, "answered")
        return 0 if head_only else len(body)

    def relay(self, stream: int, event: Request, refusal: Refusal, exchange: "H2Exchange") -> int:
        """The forward_auth server's answer on ``stream``, as it sent it (its body framed by a length)."""
        body = refusal.body
        fields = list(refusal.fields) + [(b"content-length", str(len(body)).encode("ascii"))]
        head_only = event.method == b"HEAD" or not body
        codec = self.codec
        codec.respond(stream, refusal.status, fields, end=head_only)
        if not head_only:
            sent = codec.send(stream, body, True)
            if 0 <= sent < len(body):
                self.answers[stream] = body[sent:]
        if not event.ended and not exchange.client_done:
            self.stop_reading(stream)
        self.flush()
        return 0 if head_only else len(body)

    def _send_answers(self) -> None:
        codec = self.codec
        for stream, rest in list(self.answers.items()):
            sent = codec.send(stream, rest, True)
            if sent < 0 or sent == len(rest):
                del self.answers[stream]
            else:
                self.answers[stream] = rest[sent:]

    def stop_reading(self, stream: int) -> None:
        """The answer is out before the request body ended: drop the rest of it, up to DISCARD_BODY bytes,
        then reset the stream (RFC 9113 8.1)."""
        self.discarding[stream] = DISCARD_BODY

    def _log(self, event: Request, status: int, sent: int, route: Any, started: float, outcome: str) -> None:
        """The access-log line of a request edge answered itself, before any exchange."""
        exchange = request_exchange(event, started)
        exchange.route = route
        exchange.sent = sent
        exchange.end(outcome, status)
        log_exchange(self.info, exchange)

    def finished(self, stream: int) -> None:
        self.exchanges.pop(stream, None)
        self.last_activity = time.monotonic()
        if self.codec.draining and not self.exchanges and not self.closed:
            self.flush_now()
            self._close()

    # -- the client's socket -------------------------------------------------------------

    def pauseProducing(self) -> None:
        """The client's socket is full: streams hold their bytes, and nothing more is read from it (a
        client that sends requests and reads no answers would otherwise have edge keep them all)."""
        self.write_paused = True
        if not self.closed:
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.write_paused = False
        if not self.closed:
            self.transport.resumeProducing()
        for exchange in list(self.exchanges.values()):
            if exchange.pending:
                exchange.push()
        self.flush()

    def stopProducing(self) -> None:
        pass

    # -- timers and the end -----------------------------------------------------------------

    def _schedule(self, seconds: float) -> None:
        self.timer = coarse(self.runtime.reactor).later(seconds, self._tick)

    def _tick(self) -> None:
        self.timer = None
        if self.closed:
            return
        timeouts = self.runtime.config.timeouts
        now = time.monotonic()
        if self.head_since is not None and now - self.head_since >= timeouts.inspect:
            self.info.ended = Outcome.TIMEOUT.because("request head")
            self._goaway()
            return
        if not self.exchanges and now - self.last_activity >= timeouts.idle:
            self.info.ended = Outcome.TIMEOUT.because("idle")
            self._goaway()
            return
        wait = timeouts.idle - (now - self.last_activity) if not self.exchanges else timeouts.idle
        if self.head_since is not None:
            wait = min(wait, timeouts.inspect - (now - self.head_since))
        self._schedule(max(wait, 0.1))

    def _goaway(self) -> None:
        self.codec.goaway()
        self._close()

    def _close(self) -> None:
        if self.closed:
            return
        for exchange in list(self.exchanges.values()):
            exchange.client_gone("client_closed" if self.info.ended is CLIENT_CLOSED else "connection_closed")
        self.closed = True
        self.receiving = False
        self.flush_now()
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        was_closed, self.closed = self.closed, True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for exchange in list(self.exchanges.values()):
            exchange.client_gone("client_closed")
        if not was_closed and self.info.ended is None:
            self.info.ended = CLIENT_CLOSED
        self.info.finish(self.info.ended or CLOSED)


def request_exchange(event: Request, started: float) -> Exchange:
    """The :class:`Exchange` of an HTTP/2 request."""
    return Exchange(event.method, (event.authority or b"-").decode("latin-1"), event.target.decode("latin-1"),
                    "HTTP/2", started)


@implementer(IPushProducer)
class H2Exchange:
    """One HTTP/2 request relayed to an HTTP/1.1 backend: the owner its upstream connection reports to
    (:class:`edge.http.h1_client.Owner`), and the producer of the request body for that connection."""

    def __init__(self, server: H2Server, stream: int, event: Request, ex: Exchange,
                 head: bytes | list[tuple[bytes, bytes]], chunked: bool, tunnel: bool, expect: bool) -> None:
        self.server = server
        self.codec = server.codec
        self.stream = stream
        self.event = event
        self.ex = ex  # the exchange's decisions and what the access log says of it
        self.head = head
        self.chunked = chunked
        self.tunnel = tunnel
        self.expect = expect
        self.closed = False  # the stream is over for edge (answered, reset, or the client left)
        self.pool: Any = None
        self.upstream: UpstreamConnection | None = None
        self.client_done = event.ended  # the client's side (its body) is complete
        self.body_in: list[bytes] = []  # body bytes that came before the backend connection
        self.unacked = 0  # flow-controlled bytes passed on but not yet given back to the client
        self.backend_full = False  # the backend connection's send buffer is full: acknowledge nothing
        self.producing = False
        self.policy: ResponsePolicy | None = None  # what the route does to the response
        self.coder: BodyCoder | None = None  # the response body de-chunked and/or compressed
        self.pending: list[bytes] = []  # response bytes the client's windows could not take yet
        # Compressed pieces of an HTTP/2 backend's body: its bytes each stands for, acknowledged to the backend
        # once the piece is sent (uncompressed, bytes are acknowledged as they are sent).
        self.credits: list[int] = []
        self.upstream_done = False  # the backend's response is complete (all of it is in pending or sent)
        self.backend_paused = False
        self.stream_ended = False  # END_STREAM went out with the last DATA frame
        self.deadline_kind = ""
        self.deadline_at = 0.0
        self.timer: Any = None
        self.timer_at = 0.0
        # An HTTP/2 backend: its connection and stream, request body pieces (bytes, flow-controlled size) its
        # window has not taken yet, trailers both ways, and response bytes not yet acknowledged to it.
        self.backend_conn: H2BackendConnection | None = None
        self.backend_stream = 0
        self.ack_conn: H2BackendConnection | None = None
        self.backend_unacked = 0
        self.out_pending: list[tuple[bytes, int]] = []
        self.trailers_in: list[tuple[bytes, bytes]] | None = None
        self.trailers_out: list[tuple[bytes, bytes]] | None = None
        self.request_ended = False  # END_STREAM went to the HTTP/2 backend
        self.h2_backend = False
        self.auth: Any = None  # the forward_auth question in flight
        self.held: list[tuple[bytes, int]] | None = None  # body pieces (and the end: size -1) while it is asked

    # -- the backend connection ------------------------------------------------------------

    def start(self, upstream: Any) -> None:
        self._arm("response")  # also bounds the wait for a backend connection or stream
        if upstream.h2 is not None:
            self.pool = upstream.h2
            self.h2_backend = True
        else:
            self.pool = upstream.http1
        self.pool.acquire(self)

    # -- an HTTP/2 backend ---------------------------------------------------------------

    def stream_ready(self, connection: H2BackendConnection) -> None:
        if self.closed:
            return
        self.backend_conn = self.ack_conn = connection
        self.ex.connected(connection.state.name)
        end = self.client_done and not self.out_pending and self.trailers_in is None
        assert not isinstance(self.head, bytes)  # an HTTP/2 backend's: fields
        self.backend_stream = connection.open_stream(self, self.head, end)
        self.request_ended = end
        if self.expect and not self.client_done and not self.ex.received:
            self.codec.respond(self.stream, 100, [], end=False)
        self._send_backend()
        self._arm("response" if self.client_done else "body")
        self.server.flush()

    def _send_backend(self) -> None:
        """Request body pieces to the HTTP/2 backend as its windows allow; the client's acknowledged as they go."""
        connection = self.backend_conn
        if connection is None or self.request_ended:
            return
        pending = self.out_pending
        codec = connection.codec
        acked = 0
        while pending:
            data, size = pending[0]
            last = len(pending) == 1 and self.client_done and self.trailers_in is None
            sent = codec.send(self.backend_stream, data, last)
            if sent < 0:  # the backend's stream is gone: what the client sent for it is given back
                acked += sum(size for _, size in pending)
                pending.clear()
                break
            if sent < len(data):
                pending[0] = (data[sent:], size)
                break
            pending.pop(0)
            acked += size
            if last:
                self.request_ended = True
        if acked:
            self.codec.ack(self.stream, acked)
        if not pending and self.client_done and not self.request_ended:
            codec.end(self.backend_stream, self.trailers_in)
            self.request_ended = True
        connection.flush()
        self.server.flush()

    def stream_window(self) -> None:
        if not self.closed and self.out_pending:
            self._send_backend()

    def stream_response(self, status: int, fields: list[tuple[bytes, bytes]], ended: bool) -> None:
        if self.closed:
            return
        reply = self.ex.response(status, time.monotonic(), self.server.runtime.config.error_pages)
        if reply is not None:
            self._intercept(reply, None, ended)
            return
        fields = [(name, value) for name, value in fields if name not in RESPONSE_SKIP]
        policy = self.policy
        if policy is not None:
            if ended:  # no body: nothing to compress
                fields = policy.fields(fields)
            else:
                fields, encoding = policy.backend(status, fields)
                if encoding is not None:
                    self.coder = BodyCoder(False, encoding, False)
        self.codec.respond(self.stream, status, fields, end=ended and self.trailers_out is None)
        self.stream_ended = ended
        self._arm("idle")
        self.server.flush()

    def stream_body(self, data: bytes, size: int) -> None:
        if self.closed:
            if self.ack_conn is not None:
                self.ack_conn.ack(self.backend_stream, size)
            return
        if size > len(data):  # padding: acknowledged at once
            assert self.ack_conn is not None  # the stream's connection
            self.ack_conn.ack(self.backend_stream, size - len(data))
        if data:
            self.backend_unacked += len(data)
            self.deadline_at = time.monotonic() + self.server.runtime.config.timeouts.idle
            coder = self.coder
            if coder is None:
                self.pending.append(data)
            else:
                self._pend_compressed(coder.feed(data), len(data))
            self.push()

    def _pend_compressed(self, data: bytes, credit: int) -> None:
        """A compressed piece for the client, standing for ``credit`` bytes of the HTTP/2 backend's body."""
        if data:
            self.pending.append(data)
            self.credits.append(credit)
        elif credit and self.ack_conn is not None:
            self.backend_unacked -= credit
            self.ack_conn.ack(self.backend_stream, credit)

    def stream_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        self.trailers_out = fields

    def stream_end(self) -> None:
        self.backend_conn = None  # the connection is done with this stream
        if not self.request_ended and self.ack_conn is not None:  # answered before the request ended
            self.request_ended = True
            self.ack_conn.codec.reset(self.backend_stream, ErrorCodes.CANCEL)
            self.ack_conn.flush()
        if self.closed:
            return
        if self.coder is not None:
            self._pend_compressed(self.coder.feed(b"", True), 0)
        self.upstream_done = True
        self.push()

    def stream_failed(self, reason: str, before_response: bool, unprocessed: bool = False) -> None:
        """The backend stream failed; ``unprocessed``: the server said it did nothing with it (GOAWAY
        below it, REFUSED_STREAM), so it may go again whatever its method."""
        self.backend_conn = None
        if not self.closed:
            self._act(self.ex.failed(reason, before_response, unprocessed))

    def upstream_ready(self, connection: UpstreamConnection) -> None:
        if self.closed:
            self.pool.release(connection, reusable=True)  # nothing was sent on it
            return
        self.upstream = connection
        self.ex.connected(connection.state.name)
        connection.start(self, b"GET" if self.tunnel else self.event.method, self.tunnel)
        out = self.head
        assert isinstance(out, bytes)  # an HTTP/1.1 backend's head
        if self.body_in:
            out += b"".join(self.body_in)
            self.body_in = []
        if self.client_done and self.chunked:
            out += LAST_CHUNK
        write_now(connection.transport, out)
        if self.tunnel and self.client_done:  # the client ended its side before the backend was there
            connection.transport.loseWriteConnection()
        if not self.client_done or self.tunnel:
            self.producing = True
            connection.transport.registerProducer(self, True)
            if self.expect and not self.ex.received:
                self.codec.respond(self.stream, 100, [], end=False)
            self._ack()
            self._arm("response" if self.tunnel else "body")
        else:
            self._arm("response")
        self.server.flush()

    def upstream_unavailable(self, status: int, reason: str) -> None:
        if not self.closed:
            self._act(self.ex.unavailable(status, reason))

    def upstream_response(self, connection: UpstreamConnection, head: ResponseHead, body: bytes, done: bool) -> None:
        ex = self.ex
        status = head.status
        skip = RESPONSE_SKIP
        if head.lower.find(b"\r\nconnection:") >= 0:  # the fields it names are hop-by-hop too
            skip = skip | {token.strip(b" \t").lower() for name, value in field_list(head.fields, head.lower)
                           if name == b"connection" for token in value.split(b",")}
        if status == 101:  # the backend took the WebSocket: a 200 on this stream (RFC 8441)
            status = 200
            skip = skip | _TUNNEL_SKIP
        elif self.tunnel and 200 <= status < 300:  # a success that is no upgrade would look like an open tunnel
            self._act(ex.not_upgraded(status, time.monotonic()))
            return
        reply = ex.response(status, time.monotonic(), self.server.runtime.config.error_pages)
        if reply is not None:
            self._intercept(reply, connection, done)
            return
        fields = []
        for line in head.fields.split(b"\r\n")[1:]:  # one pass; names lower-cased one by one
            colon = line.find(b":")
            name = line[:colon].lower()
            if name not in skip:
                fields.append((name, line[colon + 1 :].strip(b" \t")))
        chunked = head.lower.find(b"\r\ntransfer-encoding:") >= 0
        encoding = None
        policy = self.policy
        if policy is not None and not self.tunnel:
            if done and not body:  # no body: nothing to compress
                fields = policy.fields(fields)
            else:
                fields, encoding = policy.backend(status, fields)
        if chunked or encoding is not None:
            self.coder = BodyCoder(chunked, encoding, False)
        self.codec.respond(self.stream, status, fields, end=done and not body)
        if done and not body:
            self.upstream_done = True
            self._release(connection.reusable)
            self._complete()
            return
        self._arm("idle")
        self.upstream_body(body, done)

    def upstream_body(self, data: bytes, done: bool) -> None:
        if self.closed:
            return
        coder = self.coder
        if coder is not None and (data or done):
            data = coder.feed(data, done)
        if data:
            self.pending.append(data)
            self.deadline_at = time.monotonic() + self.server.runtime.config.timeouts.idle
        if done:
            self.upstream_done = True
            self._release(self.upstream.reusable if self.upstream is not None else False)
        self.push()

    def push(self) -> None:
        """Send what the client's windows take; pause the backend while anything is left over."""
        if self.closed:
            return
        server = self.server
        pending = self.pending
        if not server.write_paused or not pending:  # an end with nothing left to send goes out even then
            codec = self.codec
            while pending:
                data = pending[0]
                last = len(pending) == 1 and self.upstream_done and self.trailers_out is None
                sent = codec.send(self.stream, data, last)
                if sent < 0:  # the stream is gone
                    pending.clear()
                    self.credits.clear()  # _end gives the backend its window back
                    break
                self.ex.sent += sent
                if self.ack_conn is not None and sent and self.coder is None:  # an HTTP/2 backend may send as much more
                    self.backend_unacked -= sent
                    self.ack_conn.ack(self.backend_stream, sent)
                if sent < len(data):
                    pending[0] = data[sent:]
                    break
                pending.pop(0)
                if self.credits:  # a compressed piece is out: the backend bytes it stands for are acknowledged
                    credit = self.credits.pop(0)
                    if credit and self.ack_conn is not None:
                        self.backend_unacked -= credit
                        self.ack_conn.ack(self.backend_stream, credit)
                self.stream_ended = last
            else:
                if self.upstream_done:
                    if not self.stream_ended:
                        codec.end(self.stream, self.trailers_out)
                    self._complete()
                    server.flush()
                    return
        upstream = self.upstream
        if pending:
            if upstream is not None and not self.backend_paused:
                self.backend_paused = True
                upstream.transport.pauseProducing()
        elif self.backend_paused and upstream is not None:
            self.backend_paused = False
            upstream.transport.resumeProducing()
        server.flush()

    def upstream_failed(self, connection: UpstreamConnection, reason: str) -> None:
        self._release(False)
        if self.closed:
            return
        if self.tunnel and self.ex.response_started:
            # the backend closed the WebSocket: end the stream once the client has the rest
            self.upstream_done = True
            self.push()
            return
        # a kept-alive connection the server had just closed: the request may go once more on a new one
        self._act(self.ex.failed(reason, again=connection.reused))

    def _release(self, reusable: bool) -> None:
        backend = self.backend_conn
        if backend is not None:
            self.backend_conn = None
            backend.close_stream(self.backend_stream, reset=True)
        connection, self.upstream = self.upstream, None
        if connection is None:
            return
        self._detach(connection)
        # The backend answered before the whole request body was sent: that connection cannot go on.
        self.pool.release(connection, reusable and self.client_done and not self.tunnel)

    def _detach(self, connection: Any) -> None:
        """An HTTP/1.1 backend connection stops being this exchange's: no producer, reading again, no owner."""
        if self.producing:
            self.producing = False
            connection.transport.unregisterProducer()
        if self.backend_paused:
            self.backend_paused = False
            connection.transport.resumeProducing()
        connection.owner = None

    # -- the client's side ---------------------------------------------------------------------

    def client_body(self, data: bytes, size: int) -> None:
        if self.closed:
            self.codec.ack(self.stream, size)
            return
        if self.held is not None:  # forward_auth is asked: kept, unacknowledged (so the stream window bounds it)
            self.held.append((data, size))
            return
        action = self.ex.body(len(data))
        if action is not None:  # past max_body
            self._act(action)
            self.codec.ack(self.stream, size)
            return
        if self.h2_backend:
            self.out_pending.append((data, size))
            self._send_backend()
            self.deadline_at = time.monotonic() + self.server.runtime.config.timeouts.idle
            return
        if self.chunked and data:
            data = chunk(data)
        upstream = self.upstream
        if upstream is None:
            self.body_in.append(data)
            self.unacked += size
            return
        upstream.transport.write(data)
        self.deadline_at = time.monotonic() + self.server.runtime.config.timeouts.idle
        if self.backend_full:
            self.unacked += size
        else:
            self.codec.ack(self.stream, size)

    def client_end(self) -> None:
        if self.closed or self.client_done:
            return
        if self.held is not None:  # forward_auth is asked: the end waits with the body
            self.held.append((b"", -1))
            return
        self.client_done = True
        if self.backend_conn is not None:
            self._send_backend()
            if not self.ex.response_started:
                self._arm("response")
            return
        upstream = self.upstream
        if upstream is None:
            return  # the head and body go out together once connected
        if self.unacked:  # its stream is half closed; what it used of the connection's window comes back
            unacked, self.unacked = self.unacked, 0
            self.codec.ack(self.stream, unacked)
        if self.tunnel:  # the client closed its side of the WebSocket: so does edge towards the backend
            upstream.transport.loseWriteConnection()
            return
        if self.chunked:
            upstream.transport.write(LAST_CHUNK)
        if self.producing:
            self.producing = False
            upstream.transport.unregisterProducer()
        if not self.ex.response_started:
            self._arm("response")

    def _ack(self) -> None:
        if self.unacked and not self.backend_full:
            unacked, self.unacked = self.unacked, 0
            self.codec.ack(self.stream, unacked)

    # IPushProducer, for the backend connection: its send buffer filled (or emptied).
    def pauseProducing(self) -> None:
        self.backend_full = True

    def resumeProducing(self) -> None:
        self.backend_full = False
        if not self.closed:
            self._ack()
            self.server.flush()

    def stopProducing(self) -> None:
        pass

    def client_gone(self, outcome: str) -> None:
        """The client reset the stream or left: drop the backend connection (it cannot be reused)."""
        if self.closed:
            return
        self._release(False)
        self._end(outcome, 499)

    def auth_answered(self, result: Forward | Refusal | None, upstream: Any) -> None:
        """The forward_auth server's word: go on with its headers, relay its answer, or 503 (fail closed)."""
        self.auth = None
        held, self.held = self.held or [], None
        if self.closed:
            return
        if result is None or type(result) is Refusal:  # the held body will never go: its window comes back
            acked = sum(size for _, size in held if size > 0)
            if acked:
                self.codec.ack(self.stream, acked)
        ex = self.ex
        if result is None:
            self._act(ex.auth_failed())
        elif type(result) is Refusal:
            ex.status = result.status
            ex.sent = self.server.relay(self.stream, self.event, result, self)
            self._end("answered", result.status)
        else:
            add = result.admitted.add
            if add:
                if isinstance(self.head, bytes):  # an HTTP/1.1 backend's head: before its blank line
                    self.head = self.head[:-4] + b"".join(b"\r\n%s: %s" % field for field in add) + b"\r\n\r\n"
                else:
                    self.head = self.head + list(add)
            ex.user = result.admitted.user
            self.start(upstream)
            for data, size in held:  # what the client sent meanwhile, in order
                if size < 0:
                    self.client_end()
                else:
                    self.client_body(data, size)

    # -- endings ---------------------------------------------------------------------------------

    def _act(self, action: Reply | Cut | Retry) -> None:
        """Carry out what the exchange decided: the request again (on another backend connection or
        stream), edge's answer instead of the backend's, or the response cut short (a reset)."""
        warn(self.server.info, action)
        if isinstance(action, Retry):
            self._release(False)
            self.request_ended = False
            self.pool.acquire(self, fresh=action.fresh)
        elif isinstance(action, Reply):
            self._answer(action.status, action.outcome, action.text)
        else:
            self._reset(ErrorCodes.INTERNAL_ERROR if action.outcome == "backend_failed" else ErrorCodes.CANCEL,
                        action.outcome, action.status)

    def _intercept(self, reply: Reply, connection: UpstreamConnection | None, done: bool) -> None:
        """The backend answered an error edge has a page for, on a route with ``intercept_errors``: edge's
        answer with that page instead (only the status is kept, as nginx's ``proxy_intercept_errors``).  An
        HTTP/1.1 backend's body is read and dropped, bounded (:class:`Discard`); an HTTP/2 backend's stream is
        reset unless it ended."""
        if connection is not None and connection is self.upstream:
            self.upstream = None
            self._detach(connection)
            if done or not self.client_done:  # a request body still going: that connection cannot go on
                self.pool.release(connection, done and self.client_done and connection.reusable)
            else:
                runtime = self.server.runtime
                Discard(self.pool, connection, DISCARD_LIMIT, runtime.reactor, runtime.config.timeouts.response)
        self._answer(reply.status, reply.outcome, reply.text)

    def _answer(self, status: int, outcome: str, text: str) -> None:
        """Edge's answer instead of the backend's (nothing of a response was sent yet)."""
        self._release(False)
        if self.closed:
            return
        self.ex.sent = self.server.answer(self.stream, self.event, status, text, exchange=self)
        self._end(outcome, status)

    def _reset(self, code: int, outcome: str, status: int) -> None:
        self._release(False)
        self.codec.reset(self.stream, code)
        self.server.flush()
        self._end(outcome, status)

    def _complete(self) -> None:
        if not self.client_done and not self.tunnel:
            self.server.stop_reading(self.stream)
        self._end("completed", 0)

    def _end(self, outcome: str, status: int) -> None:
        self.closed = True
        auth, self.auth = self.auth, None
        if auth is not None:
            auth.cancel()
        self.pending = []
        self.credits = []
        self.body_in = []
        if self.out_pending:  # request body the backend never took: the client's window comes back
            self.unacked += sum(size for _, size in self.out_pending)
            self.out_pending = []
        if self.backend_unacked and self.ack_conn is not None:  # the backend connection's window comes back
            self.ack_conn.ack(self.backend_stream, self.backend_unacked)
            self.backend_unacked = 0
        if self.unacked:
            unacked, self.unacked = self.unacked, 0
            self.codec.ack(self.stream, unacked)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.server.finished(self.stream)
        self.ex.end(outcome, status)
        log_exchange(self.server.info, self.ex)
        self.server.flush()

    # -- timers ----------------------------------------------------------------------------------

    def _arm(self, kind: str) -> None:
        timeouts = self.server.runtime.config.timeouts
        seconds = timeouts.response if kind == "response" else timeouts.idle
        self.deadline_kind = kind
        self.deadline_at = at = time.monotonic() + seconds
        if self.timer is not None and self.timer_at > at:  # due later than this deadline: moved nearer
            self.timer.cancel()
            self.timer = None
        if self.timer is None:
            self.timer = coarse(self.server.runtime.reactor).later(seconds, self._tick)
            self.timer_at = at

    def _tick(self) -> None:
        self.timer = None
        if self.closed:
            return
        remaining = self.deadline_at - time.monotonic()
        if remaining > 0:
            self.timer = coarse(self.server.runtime.reactor).later(remaining, self._tick)
            self.timer_at = self.deadline_at
            return
        kind = self.deadline_kind
        timeouts = self.server.runtime.config.timeouts
        if kind == "response" and not self.ex.response_started and self.backend_conn is not None:
            self.backend_conn.check()  # a connection gone silent is dropped, not kept for the next request
        self._act(self.ex.expired(kind, timeouts.response if kind == "response" else timeouts.idle))
