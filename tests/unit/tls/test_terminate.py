"""A TLS-ALPN-01 validation's connection: logged when it ends, cut when it lingers (Twisted's Clock and
StringTransport stand in for the reactor and the TLS connection; the protocol under test is edge's)."""

from __future__ import annotations

import socket

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from edge.ops.access_log import ConnectionInfo
from edge.tls.terminate import ValidationAnswered


def run(close_by_peer: bool) -> tuple[list[dict], StringTransport]:
    a, b = socket.socketpair()
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        info = ConnectionInfo(("127.0.0.1", 40001), a, "validation-test")
        info.tls_mode = "acme-tls/1"
        clock, transport = Clock(), StringTransport()
        protocol = ValidationAnswered(info, clock, timeout=5.0)
        protocol.makeConnection(transport)
        if close_by_peer:
            clock.advance(1)
            protocol.connectionLost()
            clock.advance(10)  # the timer went with the connection
        else:
            clock.advance(5)
            assert transport.disconnecting  # StringTransport's abortConnection
            protocol.connectionLost()
        assert not clock.getDelayedCalls()
    finally:
        globalLogPublisher.removeObserver(seen.append)
        a.close()
        b.close()
    return [event for event in seen if event.get("listener") == "validation-test"], transport


def test_a_validation_that_ends_is_logged_once():
    logged, _ = run(close_by_peer=True)
    assert [event["ended"] for event in logged] == ["closed"]
    assert logged[0]["tls_mode"] == "acme-tls/1"


def test_a_validation_connection_held_open_is_cut_and_logged_as_a_timeout():
    logged, transport = run(close_by_peer=False)
    assert [event["ended"] for event in logged] == ["timeout: validation connection"]
    assert transport.value() == b""  # nothing was ever written by edge after the handshake
