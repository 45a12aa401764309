# -*- test-case-name: tests.e2e.test_redirect -*-
"""Port 80 (and plain HTTP arriving on 443): redirect to HTTPS.

Every request gets a 308 to ``https://`` on the same host and path, except
what :func:`edge.http.policy.port80` decides otherwise: ACME HTTP-01
challenge paths for hosts whose route names an ``acme_backend`` (that
connection is handed, bytes and all, to a TCP forwarder for the cluster's
own ACME client, cert-manager), ``http = "forward"`` (the same, to the
route's ``http_backend``), ``http = "allow"`` (edge's plain-HTTP proxy) and
``http = "deny"`` (404).  Challenges edge answers itself come first.
Keep-alive is honoured for bodiless requests, up to a bounded number per
connection.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol as TypingProtocol

from twisted.internet import tcp
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from edge.acme.responders import ChallengeResponders
from edge.config import Config
from edge.config.access import Gates
from edge.http.answers import error_response, plain_response
from edge.config.routes import RouteTable
from edge.ops.access_log import ConnectionInfo, log_request
from edge.ops.outcomes import CLIENT_CLOSED, Outcome
from edge.sniff import NEED_MORE
from edge.http.h1 import BadRequest, RequestHead, parse_request_head
from edge.http.policy import ACME_PREFIX, HandOver, port80



class RedirectSnapshot(TypingProtocol):
    """What the redirector reads of its connection's config snapshot (``edge.app.runtime.Runtime`` is one):
    data only, so this module needs nothing of the app layer."""

    reactor: Any
    config: Config
    acme_responders: ChallengeResponders
    routes: RouteTable
    https_port: int
    gates: Gates


class HandOvers(TypingProtocol):
    """The hand-overs port 80 makes (``edge.app.handlers.Handlers`` builds them, for the same snapshot)."""

    def forward(self, backend: str, info: ConnectionInfo) -> Protocol: ...

    def plain_http(self, info: ConnectionInfo, hand_over: Callable[[Protocol, bytes], None]) -> Protocol: ...


MAX_HEAD = 65536
MAX_REQUESTS = 100


class Redirector(Protocol):
    transport: tcp.Connection  # the client's, handed over by the dispatcher

    def __init__(self, runtime: RedirectSnapshot, handlers: HandOvers, info: ConnectionInfo,
                 hand_over: Callable[[Protocol, bytes], None]) -> None:
        self.runtime = runtime
        self.handlers = handlers
        self.info = info
        self.hand_over = hand_over
        self.buffer = b""
        self.served = 0
        self.timer: IDelayedCall | None = None
        self.closing = False
        self.looking_up = False  # an HTTP-01 answer is being looked up in the shared ACME storage
        self.looked_up: tuple[tuple[str, str], str | None] | None = None  # ((host, token), answer)

    def connectionMade(self) -> None:
        self._arm()

    def _arm(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = self.runtime.reactor.callLater(self.runtime.config.timeouts.inspect, self._timeout)

    def _timeout(self) -> None:
        self.timer = None
        self.info.ended = Outcome.TIMEOUT.because("request head" if self.buffer else "idle")
        if self.buffer:  # a head begun and never finished gets its 408, as on 443
            self._write(error_response(408, self.runtime.config.error_pages))
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        self.info.bytes_in += len(data)
        if self.closing:
            return
        self.buffer += data
        self._process()

    def _process(self) -> None:
        while self.buffer and not self.closing and not self.looking_up:
            try:
                head = parse_request_head(self.buffer, MAX_HEAD)
                if head is NEED_MORE:
                    return
                host = head.host
                if host is None:
                    raise BadRequest(400, "missing Host header")
            except BadRequest as e:
                self._respond(e.status, f"{e}\n", None, close=True)
                self.info.ended = Outcome.ERROR.because(str(e))
                return
            if self._answer(head, host):
                return

    def _answer(self, head: RequestHead, host: str) -> bool:
        """Answer one request; True if the connection was handed over."""
        if head.path.startswith(ACME_PREFIX):
            token = head.path[len(ACME_PREFIX):]
            answer = self.runtime.acme_responders.http01(host, token)
            if answer is None and self.looked_up is not None and self.looked_up[0] == (host, token):
                answer = self.looked_up[1]
            elif answer is None and self._look_up(host, token):
                return True  # carried on when the answer comes
            if answer is not None:  # a pending HTTP-01 challenge: ours, or another edge's
                self.buffer = self.buffer[head.length :]
                sent = self._respond(200, answer, None, not head.keep_alive, head)
                self._log(head, host, 200, sent)
                return False
        decision = port80(self.runtime.routes.lookup(host), head.header("host") or "", head.path,
                          self.runtime.https_port, self.info.listener == "http")
        route = decision.route
        if route is not None:
            self.info.route = route.name
        if type(decision) is HandOver:
            if decision.backend is None:  # http = "allow": edge's plain-HTTP proxy takes the connection
                self._cancel_timer()
                self.info.bytes_in -= len(self.buffer)  # counted again by the proxy it is handed to
                self.hand_over(self.handlers.plain_http(self.info, self.hand_over), self.buffer)
                return True
            why = self.runtime.gates.refused(f"route:{route.name}", self.info.client[0],
                                             self.runtime.reactor.seconds()) if decision.gated and route else None
            if why is not None:  # the route's allow/deny and conn_limit hold on port 80 too
                self.info.ended = Outcome.REFUSED.because(why)
                sent = self._respond(403, "access denied\n", None, True, head)
                self._log(head, host, 403, sent)
                return True
            self._forward(decision.backend, head, host)
            return True
        self.buffer = self.buffer[head.length :]
        self.served += 1
        close = head.has_body or not head.keep_alive or self.served >= MAX_REQUESTS
        sent = self._respond(decision.status, f"{decision.text}\n", decision.location, close, head)
        self._log(head, host, decision.status, sent)
        if not close:
            self._arm()
        return False

    def _look_up(self, host: str, token: str) -> bool:
        """Ask the shared ACME storage for another edge's answer; True if a lookup was started (requests
        wait in the buffer until it ends)."""
        lookup = self.runtime.acme_responders.shared_http01(host, token)
        if lookup is None:
            return False
        self.looking_up = True

        def answered(answer: str | None) -> None:
            self.looking_up = False
            self.looked_up = ((host, token), answer)
            if not self.closing and self.transport is not None and self.transport.connected:
                self._process()

        lookup.addCallback(answered)
        return True

    def _respond(
        self, status: int, body: str, location: str | None, close: bool, head: RequestHead | None = None
    ) -> int:
        """Send edge's answer; the bytes sent."""
        head_only = head is not None and head.method == "HEAD"
        answer = plain_response(status, body, close, head_only, location, pages=self.runtime.config.error_pages)
        self._write(answer)
        if close:
            self.closing = True
            self._cancel_timer()
            self.transport.loseConnection()
        return len(answer)

    def _forward(self, backend: str, head: RequestHead, host: str) -> None:
        """Hand the connection, bytes and all, to a TCP forwarder for ``backend``: its byte counts go to
        the connection's log line, and this request gets a ``forwarded`` line here."""
        self._cancel_timer()
        self.info.backend = backend
        self.info.bytes_in -= len(self.buffer)  # counted again by the forwarder it is handed to
        log_request(self.info, head.method, host, head.path, 0, 0, self.info.route, backend, None, None, 0.0,
                    "HTTP/1.1", "forwarded", count=False)
        self.hand_over(self.handlers.forward(backend, self.info), self.buffer)

    def _log(self, head: RequestHead, host: str, status: int, sent: int) -> None:
        log_request(self.info, head.method, host, head.path, status, sent, self.info.route, None, None, None,
                    0.0, "HTTP/1.1", "answered")

    def _write(self, data: bytes) -> None:
        self.info.bytes_out += len(data)
        self.transport.write(data)

    def _cancel_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timer()
        self.info.finish(self.info.ended or CLIENT_CLOSED)
