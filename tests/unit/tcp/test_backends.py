"""The one failover loop (edge.backends.ServerAttempt) and its policy (next_server), as the TCP forwarder,
the HTTP/1.1 pool and the HTTP/2 pool use them: no sockets, endpoints that answer at once."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock

from edge.tcp.backends import (Backend, BackendUnavailable, NoServerAvailable, ServerAttempt, first_choice, next_server,
                               unavailable)
from edge.config import BackendConfig, Server


class Endpoint:
    """Refuses (``ok`` False) or connects at once, counting the connects."""

    def __init__(self, ok: bool) -> None:
        self.ok = ok
        self.connects = 0

    def connect(self, factory: Any) -> defer.Deferred:
        self.connects += 1
        if not self.ok:
            return defer.fail(ConnectionRefusedError("refused"))
        protocol = factory.buildProtocol(None)
        protocol.transport = type("T", (), {"setTcpNoDelay": lambda self, on: None})()
        return defer.succeed(protocol)


def backend(up: list[bool], max_conn: int | None = None) -> Backend:
    servers = tuple(Server("127.0.0.1", 8000 + i, "http") for i in range(len(up)))
    pool = Backend(BackendConfig("app", servers, max_conn=max_conn), Clock(), 1.0)
    for state, ok in zip(pool.servers, up):
        state.endpoint = Endpoint(ok)
    return pool


class Record(ServerAttempt):
    __slots__ = ("events", "idle")

    def __init__(self, backend: Backend, idle: set[int] = frozenset(), hold: bool = True,
                 first: tuple[list[Any], int] | None = None) -> None:
        super().__init__(backend, hold, first)
        self.events: list[Any] = []
        self.idle = idle

    def serve(self, state):
        if state.server.port in self.idle:
            self.events.append(("idle", state.server.port))
            return True
        return False

    def build(self, state):
        return object.__new__(type("P", (), {}))

    def opened(self, state, protocol):
        self.events.append(("opened", state.server.port))

    def given_up(self, last_error):
        self.events.append(("gave up", type(last_error).__name__ if last_error else None))


def test_next_server_skips_those_at_max_conn():
    pool = backend([True, True, True], max_conn=1)
    states = pool.servers
    states[0].active = 1
    assert next_server(states, 0, 1) == 1
    states[1].active = 1
    states[2].active = 1
    assert next_server(states, 0, 1) == 3
    assert next_server(states, 0, None) == 0


def test_a_refusing_server_is_passed_over_and_marked():
    pool = backend([False, True])
    attempt = Record(pool).start()
    assert attempt.events == [("opened", 8001)]
    assert pool.servers[0].down_until > 0 and pool.servers[0].active == 0
    assert pool.servers[1].active == 1  # held by the connection until released


def test_a_server_that_serves_from_what_it_has_opens_nothing():
    pool = backend([True, True])
    attempt = Record(pool, idle={8000}).start()
    assert attempt.events == [("idle", 8000)] and pool.servers[0].endpoint.connects == 0


def test_the_first_choice_is_where_the_loop_goes_on():
    """A pool takes the loop's first step itself (an idle connection there serves without a loop); when
    nothing is at hand, the loop goes on from that server, and the rotation moved only once."""
    pool = backend([True, True, True], max_conn=1)
    pool.servers[0].active = 1
    candidates, index = first_choice(pool)
    assert [s.server.port for s in candidates] == [8000, 8001, 8002] and index == 1
    attempt = Record(pool, first=(candidates, index)).start()
    assert attempt.events == [("opened", 8001)] and pool._next == 1
    pool.servers[1].active = pool.servers[2].active = 1
    candidates, index = first_choice(pool)
    assert index == len(candidates)  # none with room: the loop gives up without trying
    assert Record(pool, first=(candidates, index)).start().events == [("gave up", None)]


def test_every_server_refusing_gives_up_with_the_last_error_and_no_slot_held():
    pool = backend([False, False])
    attempt = Record(pool).start()
    assert attempt.events == [("gave up", "ConnectionRefusedError")]
    assert [s.active for s in pool.servers] == [0, 0]
    assert unavailable(pool, ConnectionRefusedError("refused"))[0] == 502


def test_no_server_with_room_gives_up_without_trying():
    pool = backend([True], max_conn=1)
    pool.servers[0].active = 1
    attempt = Record(pool).start()
    assert attempt.events == [("gave up", None)] and pool.servers[0].endpoint.connects == 0
    assert unavailable(pool, None) == (503, "no server available in backend app")


def test_without_hold_the_servers_count_nothing():
    """The HTTP/2 pool counts streams, not connects."""
    pool = backend([False, True])
    Record(pool, hold=False).start()
    assert [s.active for s in pool.servers] == [0, 0]


def test_the_forwarders_connect_reports_by_callbacks():
    pool = backend([False, False])
    failures: list[Exception] = []
    pool.connect(object, lambda state, protocol: None, failures.append)
    assert type(failures[0]) is BackendUnavailable and "refused" in str(failures[0])
    full = backend([True], max_conn=0)
    full.connect(object, lambda state, protocol: None, failures.append)
    assert type(failures[1]) is NoServerAvailable
