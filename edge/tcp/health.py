# -*- test-case-name: tests.e2e.test_health -*-
"""Active health checks: each server of a backend with ``check`` is probed every ``check_interval``.

``check = "tcp"`` connects, ``"tls"`` completes a TLS handshake, and
``"http GET /path"`` expects a 2xx or 3xx answer.  A server goes down after
``fall`` failures in a row and up again after ``rise`` successes (HAProxy's
semantics); a down server gets no new connections, and a backend with no
server up answers 503 (HTTP) or refuses (TCP).  Changes are logged.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener, ITransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from zope.interface import implementer

from edge.config.model import HealthCheck
from edge.tcp.backends import Backend, ServerState
from edge.tls.backend import BackendTLSPolicy, Unverified

log = Logger()


@implementer(IHandshakeListener)
class _HandshakeProbe(Protocol):
    transport: ITransport  # connected: the handshake is on it

    def __init__(self, done: Deferred) -> None:
        self.done = done

    def handshakeCompleted(self) -> None:
        if not self.done.called:
            self.done.callback(None)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.done.called:
            self.done.errback(reason)


class BackendChecker:
    """Probes the servers of one backend and keeps their ``checked_up`` flags."""

    def __init__(self, backend: Backend, check: HealthCheck, reactor: Any, timeout: float) -> None:
        """``check`` is the backend's, parsed by the config."""
        self.backend = backend
        self.config = backend.config
        self.reactor = reactor
        self.timeout = timeout
        self.kind, self.method, self.path = check.kind, check.method, check.path
        if self.kind == "http":
            policy = BackendTLSPolicy(self.config) if self.config.servers[0].scheme == "https" else None
            kwargs = {"contextFactory": policy} if policy else {}
            self.agent = Agent(reactor, connectTimeout=timeout, **kwargs)
        self.loop = LoopingCall(self.check_all)
        self.loop.clock = reactor

    def start(self) -> None:
        self.loop.start(self.config.check_interval, now=True)

    def stop(self) -> None:
        if self.loop.running:
            self.loop.stop()

    def check_all(self) -> None:
        for state in self.backend.servers:
            self.check(state)

    @inlineCallbacks
    def check(self, state: ServerState):
        if state.checking:
            return
        state.checking = True
        try:
            yield self.probe(state).addTimeout(self.timeout, self.reactor)
        except Exception as e:
            self._result(state, False, _reason(e))
        else:
            self._result(state, True, "")
        finally:
            state.checking = False

    def probe(self, state: ServerState) -> Deferred:
        if self.kind == "tcp":
            return state.endpoint.connect(Factory.forProtocol(Protocol)).addCallback(
                lambda protocol: protocol.transport.loseConnection())
        if self.kind == "tls":
            done: Deferred = Deferred()
            name = self.config.server_name or state.server.host
            endpoint = wrapClientTLS(Unverified(name, [b"h2", b"http/1.1"]), state.endpoint)
            endpoint.connect(Factory.forProtocol(lambda: _HandshakeProbe(done))).addErrback(done.errback)
            return done
        scheme = "https" if state.server.scheme == "https" else "http"
        host = f"[{state.server.host}]" if ":" in state.server.host else state.server.host
        url = f"{scheme}://{host}:{state.server.port}{self.path}".encode("ascii")
        headers = Headers({b"user-agent": [b"edge-health-check"], b"connection": [b"close"]})
        return self.agent.request(self.method.encode("ascii"), url, headers).addCallback(self._http_answer)

    @staticmethod
    def _http_answer(response: Any) -> Deferred:
        def judge(_body: bytes) -> None:
            if not 200 <= response.code < 400:
                raise ValueError(f"HTTP {response.code}")
        return readBody(response).addCallback(judge)

    def _result(self, state: ServerState, ok: bool, reason: str) -> None:
        if ok:
            state.check_fails = 0
            state.check_passes += 1
            if not state.checked_up and state.check_passes >= self.config.rise:
                state.checked_up = True
                log.info("backend {backend} server {server} is UP (check passed {n} times)",
                         backend=self.backend.name, server=str(state), n=state.check_passes)
        else:
            state.check_passes = 0
            state.check_fails += 1
            state.last_check_error = reason
            if state.checked_up and state.check_fails >= self.config.fall:
                state.checked_up = False
                log.warn("backend {backend} server {server} is DOWN (check failed {n} times: {reason})",
                         backend=self.backend.name, server=str(state), n=state.check_fails, reason=reason)


def _reason(error: Exception) -> str:
    text = str(error).strip().rstrip(".")
    if "TimeoutError" in type(error).__name__ or "Cancelled" in type(error).__name__:
        return "timed out"
    reasons = getattr(error, "reasons", None)
    if reasons:
        return "; ".join(r.getErrorMessage() for r in reasons)
    return text or type(error).__name__


class HealthService(Service):
    """Runs the checkers of one runtime; replaced on reload."""

    name = "health"

    def __init__(self, backends: dict[str, Backend], reactor: Any, timeout: float) -> None:
        self.checkers = [BackendChecker(b, b.config.check, reactor, min(timeout, b.config.check_interval))
                         for b in backends.values() if b.config.check]

    def startService(self) -> None:
        super().startService()
        for checker in self.checkers:
            checker.start()

    def stopService(self):
        super().stopService()
        for checker in self.checkers:
            checker.stop()
