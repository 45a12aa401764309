"""Bounded closes (edge.transports.CloseWatch), on Twisted's deterministic Clock, and on real sockets."""

from __future__ import annotations

import socket

from twisted.internet.task import Clock

from edge.transports import CloseWatch


def test_a_peer_that_takes_nothing_is_aborted_after_the_grace():
    clock, aborted = Clock(), []
    CloseWatch(clock, lambda: 5000, lambda: aborted.append(clock.seconds()), 2.0)
    clock.advance(1.9)
    assert aborted == []
    clock.advance(0.1)
    assert aborted == [2.0]


def test_a_peer_that_keeps_reading_keeps_its_connection():
    clock, aborted = Clock(), []
    left = [100_000]
    CloseWatch(clock, lambda: left[0], lambda: aborted.append(clock.seconds()), 2.0)
    for _ in range(10):  # it takes a little every grace period
        left[0] -= 1000
        clock.advance(2.0)
    assert aborted == []
    clock.advance(2.0)  # and then stops
    assert aborted == [22.0]


def test_a_cancelled_watch_never_fires():
    clock, aborted = Clock(), []
    watch = CloseWatch(clock, lambda: 10, lambda: aborted.append(1), 2.0)
    watch.cancel()
    watch.cancel()
    clock.advance(10)
    assert aborted == [] and not clock.getDelayedCalls()


def test_nothing_left_but_still_open_is_aborted():
    clock, aborted = Clock(), []
    CloseWatch(clock, lambda: 0, lambda: aborted.append(1), 2.0)  # e.g. a close that waits on the peer
    clock.advance(2.0)
    assert aborted == [1]


def test_an_accepted_transport_that_cannot_flush_is_aborted():
    """An AcceptedTransport on a real socket closing with data its peer never reads (timers on a clock)."""
    from twisted.internet import tcp
    from twisted.internet.protocol import Protocol
    from twisted.internet.testing import MemoryReactorClock

    from edge import transports

    lost = []

    class Recorder(Protocol):
        def connectionLost(self, reason):
            lost.append(reason.type.__name__)

    clock = MemoryReactorClock()
    server, client = socket.socketpair()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    server.setblocking(False)
    transport = transports.AcceptedTransport.__new__(transports.AcceptedTransport)
    protocol = Recorder()
    tcp.Connection.__init__(transport, server, protocol, clock)
    transport.connected = 1
    protocol.makeConnection(transport)
    transport.dataBuffer, transport.offset = b"x" * 1_000_000, 0  # far more than the peer's buffers hold
    transport.loseConnection()
    assert transport.close_watch is not None and not lost
    clock.advance(transports.CLOSE_STALL)
    assert transport.close_watch is None or not transport.close_watch.call
    clock.advance(0)  # abortConnection reports the loss on the next turn
    assert lost == ["ConnectionAborted"], lost
    client.close()


def test_the_private_write_buffer_is_checked_once_and_can_be_switched_off():
    """edge.net.fastpath reads Twisted's private write buffer only if it is there, and not at all with
    EDGE_FAST_PATHS=0 (the older switch, still accepted): then Twisted's own close is used."""
    import os
    import subprocess
    import sys

    from edge.net import fastpath

    assert fastpath.WRITE_BUFFER  # this Twisted keeps dataBuffer, offset and _tempDataLen where edge reads them
    code = "import edge.transports as t, edge.net.fastpath as f; print(f.WRITE_BUFFER, t.pending_bytes(object()))"
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "EDGE_FAST_PATHS": "0"}, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert off.stdout.split() == ["False", "0"], off.stderr
