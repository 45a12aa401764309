# -*- test-case-name: tests.e2e.test_backends, tests.e2e.test_health, tests.unit.tcp.test_backends -*-
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
from typing import Any, Callable

from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from edge.config import BackendConfig, Server
from edge.net.outgoing import TCPEndpoint, open_endpoint

log = Logger()


class NoServerAvailable(Exception):
    """Every server is at max_conn (or the backend has none left to try)."""


class BackendUnavailable(Exception):
    """Every server tried refused or timed out."""


class ServerState:
    """Live counters for one server; kept across connections."""

    __slots__ = ("server", "name", "active", "fails", "down_until", "endpoint",
                 "checked_up", "check_fails", "check_passes", "checking", "last_check_error")

    def __init__(self, server: Server, reactor: Any, connect_timeout: float) -> None:
        self.server = server
        self.name = str(server)  # in every request's log line and metrics
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
        return self.name


def _endpoint(reactor: Any, host: str, port: int, timeout: float) -> Any:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return HostnameEndpoint(reactor, host, port, timeout=timeout)
    return TCPEndpoint(reactor, host, port, timeout)


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

    def connect(self, build: Callable[[], Any], on_open: Callable[[ServerState, Any], None],
                on_fail: Callable[[Exception], None], endpoint_for: Any = None) -> "ServerAttempt":
        """Connect ``build()``'s protocol to one server: ``on_open(state, protocol)`` or ``on_fail(error)``.

        ``endpoint_for(state)`` may supply another endpoint than the plain
        TCP one (TLS to an https:// server, for a WebSocket tunnel).  The
        caller must call :meth:`release` with the state once that connection
        has ended.  Plain callbacks rather than Deferreds: this runs once per
        forwarded connection.  ``cancel()`` on the result stops the attempt
        and reports nothing more.
        """
        return _Connect(self, build, on_open, on_fail, endpoint_for).start()

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
                    backend=self.name, server=str(state), seconds=self.config.fail_timeout,
                    reason=describe_error(error),
                )


def next_server(candidates: list[ServerState], index: int, max_conn: int | None) -> int:
    """Which server to try next: the first of ``candidates`` (in :meth:`Backend.ordered`'s order) from
    ``index`` on with room under ``max_conn``; ``len(candidates)`` when none is left."""
    if max_conn is not None:
        while index < len(candidates) and candidates[index].active >= max_conn:
            index += 1
    return index


def first_choice(backend: Backend) -> tuple[list[ServerState], int]:
    """The failover loop's first step: the servers in the order this request tries them, and the index of
    the first with room (``len`` of them when none has).  A pool whose connection to that server is at hand
    serves the request without the loop (no :class:`ServerAttempt` per keep-alive request); otherwise the
    loop goes on from there (``ServerAttempt(..., first=...)``)."""
    candidates = backend.ordered()
    return candidates, next_server(candidates, 0, backend.config.max_conn)


class ServerAttempt:
    """The one failover loop: a backend's servers tried in turn until one serves or accepts a connection.

    For each server :func:`next_server` picks, :meth:`serve` may take the request on what is at hand
    (an idle keep-alive connection, an HTTP/2 connection with a free stream); otherwise a connection is
    opened, and a server that refuses or times out is marked (passive health) and the next one tried, since
    nothing was sent yet.  When none is left, :meth:`given_up` hears the last error (None: no server was
    tried, every one at ``max_conn`` or down).  ``hold``: a server's ``active`` counts this attempt from
    the moment it is chosen (connections, requests); an HTTP/2 pool counts streams instead.
    __slots__ = ("backend", "build", "on_open", "on_fail", "endpoint_for", "candidates", "index", "tried",
                 "state", "attempt", "serial", "finished")
    state: ServerState  # the server being tried: set by _try before anything can report on it

    The TCP forwarder (:meth:`Backend.connect`), the HTTP/1.1 pool and the HTTP/2 pool each fill in the
    hooks; ``cancel()`` stops an attempt and reports nothing more.
    """

    __slots__ = ("backend", "candidates", "index", "tried", "state", "attempt", "serial", "finished", "hold")

    def __init__(self, backend: Backend, hold: bool = True,
                 first: tuple[list[ServerState], int] | None = None) -> None:
        self.backend = backend
        self.hold = hold
        # ``first``: :func:`first_choice` already taken by a pool that had nothing at hand there
        self.candidates, self.index = first if first is not None else (backend.ordered(), 0)
        self.tried = self.serial = 0
        self.attempt: Any = None
        self.finished = False

    def start(self) -> "ServerAttempt":
        self._try(None)
        return self

    # -- the hooks -------------------------------------------------------------------------------

    def serve(self, state: ServerState) -> bool:
        """Whether ``state`` takes the request without a new connection (then the attempt is over)."""
        return False

    def build(self, state: ServerState) -> Any:
        """The protocol of a new connection to ``state``."""
        raise NotImplementedError

    def endpoint(self, state: ServerState) -> Any:
        return state.endpoint

    def opened(self, state: ServerState, protocol: Any) -> None:
        """A new connection to ``state`` is up."""

    def go_on(self) -> bool:
        """After a server failed: whether the next one is tried (False: whoever asked is gone)."""
        return True

    def settled(self) -> None:
        """After a failed server was dealt with (the next one tried, or the attempt given up)."""

    def given_up(self, last_error: Exception | None) -> None:
        """No server is left: ``last_error`` from the last one tried, None if none was."""

    # -- the loop ----------------------------------------------------------------------------------

    def _try(self, last_error: Exception | None) -> None:
        backend, candidates = self.backend, self.candidates
        index = self.index = next_server(candidates, self.index, backend.config.max_conn)
        if index >= len(candidates):
            self.finished = True
            self.given_up(last_error if self.tried else None)
            return
        state = self.state = candidates[index]
        if self.hold:
            state.active += 1
        if self.serve(state):
            self.finished = True
            return
        self.serial += 1
        serial = self.serial
        try:
            attempt = open_endpoint(self.endpoint(state), self._build, self._opened, self._failed)
        except Exception as e:
            self._failed(e)
            return
        if self.serial == serial and not self.finished:  # it did not report already (an immediate failure)
            self.attempt = attempt

    def _build(self) -> Any:
        return self.build(self.state)

    def _opened(self, protocol: Any) -> None:
        self.attempt = None
        self.finished = True
        self.backend.succeeded(self.state)
        self.opened(self.state, protocol)

    def _failed(self, error: Exception) -> None:
        self.attempt = None
        state = self.state
        if self.hold:
            state.active -= 1
        self.backend.failed(state, error)
        self.index += 1
        self.tried += 1
        if self.go_on():
            self._try(error)
        else:
            self.finished = True
        self.settled()

    def cancel(self) -> None:
        if self.finished:
            return
        self.finished = True
        attempt, self.attempt = self.attempt, None
        if attempt is not None:
            attempt.cancel()
            if self.hold:
                self.state.active -= 1


class _Connect(ServerAttempt):
    """:meth:`Backend.connect`'s attempt: one connection for the TCP forwarder, reported by callbacks."""

    __slots__ = ("build_protocol", "on_open", "on_fail", "endpoint_for")

    def __init__(self, backend: Backend, build: Callable[[], Any], on_open: Callable[[ServerState, Any], None],
                 on_fail: Callable[[Exception], None], endpoint_for: Any) -> None:
        super().__init__(backend)
        self.build_protocol, self.on_open, self.on_fail, self.endpoint_for = build, on_open, on_fail, endpoint_for

    def build(self, state: ServerState) -> Any:
        return self.build_protocol()

    def endpoint(self, state: ServerState) -> Any:
        return state.endpoint if self.endpoint_for is None else self.endpoint_for(state)

    def opened(self, state: ServerState, protocol: Any) -> None:
        self.on_open(state, protocol)

    def given_up(self, last_error: Exception | None) -> None:
        name = self.backend.name
        if last_error is None:
            self.on_fail(NoServerAvailable(f"all servers of backend {name!r} are at max_conn"))
        else:
            self.on_fail(BackendUnavailable(
                f"no server of backend {name!r} accepted the connection: {describe_error(last_error)}"))


def unavailable(backend: Backend, last_error: Exception | None) -> tuple[int, str]:
    """An HTTP request's status and log reason when no server of ``backend`` took it: 503 when none was
    tried (all at ``max_conn`` or down), 502 when every one tried refused or timed out."""
    if last_error is None:
        return 503, f"no server available in backend {backend.name}"
    return 502, f"backend {backend.name} refused the connection: {describe_error(last_error)}"


def describe_error(error: Exception | None) -> str:
    """An exception as a short reason for a log line or an error page."""
    if error is None:
        return "no server"
    text = str(error).strip().rstrip(".")
    return text or type(error).__name__
