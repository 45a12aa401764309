# -*- test-case-name: tests.unit.http.test_exchange, tests.e2e.test_http1_proxy, tests.e2e.test_h2_server -*-
"""One request relayed to a backend, for HTTP/1.1 and HTTP/2 clients alike: the exchange's decisions.

An :class:`Exchange` is told what happens to its request (body bytes and
their end, the backend's response, a backend failure, a deadline, the
client leaving) and answers with what to do, as a value:

- :class:`Reply`: edge answers instead of the backend (nothing of a
  response was sent yet): 413 past ``max_body``, 502 for a failed backend,
  503 / 502 when no server could be reached, 504 / 408 for a deadline, an
  intercepted error's page;
- :class:`Cut`: the response had begun, so it ends early (an HTTP/1.1
  connection closes, an HTTP/2 stream is reset);
- :class:`Retry`: the request goes again on another backend connection:
  once, before any response, and only a bodiless request that is
  idempotent (RFC 9110 9.2.2) or that the server said it never processed.

It keeps what the access log says of the request (status, bytes sent,
who ended it, the server and its time).  The servers (``h1_server``,
``h2_server``) keep their codec, bytes, flow control and timers, and carry
out these actions; :func:`edge.http.relay.log_exchange` writes the line.
No sockets, no Twisted, no clock: times are passed in.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from edge.http.answers import PUBLIC_TEXT, REASON_TEXT, ErrorPages, failure_hint, intercepts
from edge.http.policy import IDEMPOTENT


class Reply(NamedTuple):
    """Edge's own answer ``status`` with ``text``, instead of the backend's; ``warning``: the log's detail."""

    status: int
    text: str
    outcome: str
    warning: str | None = None


class Cut(NamedTuple):
    """The response had begun: it ends early (HTTP/1.1: the connection closes; HTTP/2: the stream is reset).
    ``status``: what the log says if no response head was sent."""

    outcome: str
    status: int
    warning: str | None = None


class Retry(NamedTuple):
    """Send the request again on another backend connection (``fresh``: a new one, not a kept one)."""

    fresh: bool


Action = Reply | Cut | Retry
BODY_TOO_LARGE = "body_too_large"
REQUEST_BODY_LATE = "request body took too long"


class Exchange:
    """One request, from its head to the end of its response (or edge's answer)."""

    __slots__ = ("method", "host", "target", "protocol", "started", "route", "limit", "has_body", "user",
                 "received", "response_started", "retried", "status", "sent", "outcome",
                 "server", "upstream_time")

    def __init__(self, method: bytes, host: str, target: str, protocol: str, started: float) -> None:
        self.method = method
        self.host = host  # the Host header or :authority as sent
        self.target = target
        self.protocol = protocol  # "HTTP/1.1", "HTTP/1.0", "HTTP/2"
        self.started = started
        self.route: Any = None  # the route it goes to, once decided
        self.limit: int | None = None  # the route's max_body
        self.has_body = False  # the request announced a body
        self.user: str | None = None  # who basic auth (or the auth server) admitted
        self.received = 0  # request body bytes (payload) counted against the limit
        self.response_started = False  # the backend's response head went to the client
        self.retried = False
        self.status = 0
        self.sent = 0  # response bytes sent to the client
        self.outcome: str | None = None  # who ended it, when not a completed exchange
        self.server: str | None = None
        self.upstream_time: float | None = None

    def forward(self, route: Any, has_body: bool, limit: int | None) -> None:
        """The request goes to ``route``'s backend; ``has_body``: a body follows its head."""
        self.route = route
        self.has_body = has_body
        self.limit = limit

    # -- the client's side ------------------------------------------------------------------------

    def body(self, size: int) -> Reply | Cut | None:
        """``size`` more bytes of the request body: past the route's ``max_body``, 413 (or the response
        that began is cut); the caller relays nothing more of the body."""
        self.received += size
        limit = self.limit
        if limit is None or self.received <= limit:
            return None
        if self.response_started:
            return Cut(BODY_TOO_LARGE, 413)
        return Reply(413, REASON_TEXT[413], BODY_TOO_LARGE)

    def client_gone(self, outcome: str) -> None:
        """The client reset the request or left (``client_aborted``, ``client_closed``, ...)."""
        self.end(self.outcome or outcome, 499)

    # -- the backend's side ------------------------------------------------------------------------

    def connected(self, server: str) -> None:
        self.server = server

    def response(self, status: int, now: float, pages: ErrorPages | None) -> Reply | None:
        """The backend's response head: relayed (None), or replaced by edge's page (``intercept_errors``)."""
        self.upstream_time = now - self.started
        if intercepts(self.route.intercept_errors, status, pages):
            return Reply(status, PUBLIC_TEXT.get(status) or REASON_TEXT.get(status) or "error", "intercepted")
        self.response_started = True
        self.status = status
        return None

    def not_upgraded(self, status: int, now: float) -> Reply:
        """A WebSocket request's backend answered with a success that is no 101: it would look like an open
        tunnel, so 502."""
        self.upstream_time = now - self.started
        return Reply(502, PUBLIC_TEXT[502], "backend_failed",
                     f"502 backend {self.route.backend} answered a WebSocket upgrade with {status}")

    def failed(self, reason: str, again: bool = True, unprocessed: bool = False) -> Action:
        """The backend failed this request: ``again``: a new connection may do better (a kept-alive
        connection its server closed; any HTTP/2 stream that failed before its response); ``unprocessed``:
        the server said it did nothing with it (REFUSED_STREAM, GOAWAY below it)."""
        if self.response_started:
            return Cut("backend_failed", 502, f"backend response cut short: {reason}")
        if again and not self.retried and not self.has_body and (unprocessed or self.method in IDEMPOTENT):
            self.retried = True
            return Retry(not unprocessed)
        backend = self.route.backend if self.route is not None else "-"
        return Reply(502, PUBLIC_TEXT[502], "backend_failed",
                     f"502 backend {backend} failed: {reason}{failure_hint(reason)}")

    def unavailable(self, status: int, reason: str) -> Reply:
        """No server could take the request (503: none available; 502: every one tried refused)."""
        return Reply(status, PUBLIC_TEXT[status], "backend_failed", f"{status} {reason}")

    def auth_failed(self) -> Reply:
        """The forward_auth server (or the password check) did not answer: 503, failing closed."""
        return Reply(503, "the authentication service did not answer", "auth_failed")

    # -- deadlines ---------------------------------------------------------------------------------

    def expired(self, kind: str, seconds: float) -> Reply | Cut:
        """A deadline of ``seconds`` passed: ``response`` (no response head in time), ``body`` (the request
        body stopped), ``idle`` (a response or tunnel that stopped moving)."""
        if not self.response_started:
            if kind == "response":
                backend = self.route.backend if self.route is not None else "-"
                return Reply(504, PUBLIC_TEXT[504], "timeout",
                             f"504 backend {backend} did not answer within {seconds:g}s")
            if kind == "body":
                return Reply(408, REQUEST_BODY_LATE, "timeout")
        return Cut("timeout", 504)

    # -- the end -----------------------------------------------------------------------------------

    def end(self, outcome: str, status: int = 0) -> None:
        """It is over: ``outcome`` says who ended it; ``status`` stands when none was sent."""
        self.outcome = outcome
        self.status = self.status or status

    def log_fields(self, now: float) -> tuple[str, str, str, int, int, str | None, str | None, str | None,
                                            float | None, float, str, str, str | None]:
        """The access log's fields of this request (as :func:`edge.ops.access_log.log_request` takes them)."""
        route = self.route
        return (self.method.decode("latin-1"), self.host, self.target, self.status, self.sent,
                route.name if route is not None else None, route.backend if route is not None else None,
                self.server, self.upstream_time,
                now - self.started, self.protocol, self.outcome or "completed", self.user)
