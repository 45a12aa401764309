"""Backends own server selection: balance, max_conn and passive health.

A connection asks its backend for a server; the backend tries servers in
balance order, skips those at ``max_conn`` or recently failed, moves on to
the next one when a connect is refused or times out, and marks a server
down for ``fail_timeout`` after ``max_fails`` failures in a row (nginx's
``max_fails``/``fail_timeout``).  When every server is down it still tries
them rather than refuse: stale failure state should not cause an outage.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IProtocolFactory, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from edge.config import BackendConfig, Server

log = Logger()


class NoServerAvailable(Exception):
    """Every server is at max_conn (or the backend has none left to try)."""


class BackendUnavailable(Exception):
    """Every server tried refused or timed out."""


class ServerState:
    """Live counters for one server; kept across connections."""

    __slots__ = ("server", "active", "fails", "down_until", "endpoint",
                 "checked_up", "check_fails", "check_passes", "checking", "last_check_error")

    def __init__(self, server: Server, reactor: Any, connect_timeout: float) -> None:
        self.server = server
        self.active = 0
        self.fails = 0  # passive health: failed connects in a row
        self.down_until = 0.0
        self.checked_up = True  # active health (edge.health); servers start up, as in HAProxy
        self.check_fails = 0
        self.check_passes = 0
        self.checking = False
        self.last_check_error = ""
        self.endpoint = _endpoint(reactor, server.host, server.port, connect_timeout)

    def __str__(self) -> str:
        return str(self.server)


def _endpoint(reactor: Any, host: str, port: int, timeout: float) -> Any:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return HostnameEndpoint(reactor, host, port, timeout=timeout)
    endpoint = TCP4ClientEndpoint if ip.version == 4 else TCP6ClientEndpoint
    return endpoint(reactor, host, port, timeout=timeout)


class Backend:
    """A named group of servers and the policy for choosing among them."""

    def __init__(self, config: BackendConfig, reactor: IReactorTime, connect_timeout: float) -> None:
        self.config = config
        self.name = config.name
        self._reactor = reactor
        self.servers = [ServerState(s, reactor, connect_timeout) for s in config.servers]
        self._next = 0

    def ordered(self) -> list[ServerState]:
        """The servers active checks say are up, in the order this connection should try them."""
        n = len(self.servers)
        if n == 1:
            only = self.servers[0]
            return [only] if only.checked_up else []
        start = self._next % n
        self._next += 1
        ring = [s for s in self.servers[start:] + self.servers[:start] if s.checked_up]
        if self.config.balance == "leastconn":
            ring.sort(key=lambda s: s.active)  # stable: ties keep the rotation
        now = self._reactor.seconds()
        up = [s for s in ring if s.down_until <= now]
        down = [s for s in ring if s.down_until > now]
        return up + down

    def has_room(self, state: ServerState) -> bool:
        return self.config.max_conn is None or state.active < self.config.max_conn

    def connect(self, factory: IProtocolFactory, endpoint_for: Any = None) -> Deferred:
        """Connect ``factory`` to one server; fires ``(ServerState, protocol)``.

        ``endpoint_for(state)`` may supply another endpoint than the plain
        TCP one (TLS to an https:// server, for a WebSocket tunnel).

        The caller must call :meth:`release` with the state once that
        connection has ended.  Plain callbacks rather than inlineCallbacks:
        this runs once per forwarded connection.
        """
        result: Deferred = Deferred(lambda _: attempt[0].cancel() if attempt else None)
        attempt: list[Deferred] = []
        candidates = self.ordered()

        def try_next(index: int, tried: int, last_error: Exception | None) -> None:
            while index < len(candidates) and not self.has_room(candidates[index]):
                index += 1
            if index >= len(candidates):
                if not tried:
                    result.errback(NoServerAvailable(f"all servers of backend {self.name!r} are at max_conn"))
                else:
                    result.errback(BackendUnavailable(
                        f"no server of backend {self.name!r} accepted the connection: {describe_error(last_error)}"))
                return
            state = candidates[index]
            state.active += 1
            try:
                endpoint = state.endpoint if endpoint_for is None else endpoint_for(state)
                d = endpoint.connect(factory)
            except Exception as e:
                failed(Failure(e), state, index, tried)
                return
            attempt[:] = [d]
            d.addCallbacks(connected, failed, callbackArgs=(state,), errbackArgs=(state, index, tried))

        def connected(protocol: Any, state: ServerState) -> None:
            attempt.clear()
            self.succeeded(state)
            if result.called:  # cancelled meanwhile: nobody wants this connection
                state.active -= 1
                protocol.transport.loseConnection()
                return
            result.callback((state, protocol))

        def failed(failure: Failure, state: ServerState, index: int, tried: int) -> None:
            attempt.clear()
            state.active -= 1
            if result.called or failure.check(CancelledError, ConnectingCancelledError):
                return  # the client went away and the caller cancelled us
            self.failed(state, failure.value)
            try_next(index + 1, tried + 1, failure.value)

        try_next(0, 0, None)
        return result

    def succeeded(self, state: ServerState) -> None:
        if state.fails or state.down_until:
            log.info("backend {backend} server {server} is answering again", backend=self.name, server=str(state))
        state.fails = 0
        state.down_until = 0.0

    def release(self, state: ServerState) -> None:
        state.active -= 1

    def failed(self, state: ServerState, error: Exception) -> None:
        state.fails += 1
        if state.fails >= self.config.max_fails:
            was_up = state.down_until <= self._reactor.seconds()
            state.down_until = self._reactor.seconds() + self.config.fail_timeout
            if was_up:
                log.warn(
                    "backend {backend} server {server} marked down for {seconds:g}s: {reason}",
                    backend=self.name, server=str(state), seconds=self.config.fail_timeout, reason=describe_error(error),
                )


def describe_error(error: Exception | None) -> str:
    """An exception as a short reason for a log line or an error page."""
    if error is None:
        return "no server"
    text = str(error).strip().rstrip(".")
    return text or type(error).__name__
