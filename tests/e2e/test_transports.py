"""Bounded closes (edge.net.transports.CloseWatch), on Twisted's deterministic Clock, and on real sockets."""

from __future__ import annotations

import socket

from twisted.internet.task import Clock

from edge.net.transports import CloseWatch


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

    from edge.net import transports

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
    code = "import edge.net.transports as t, edge.net.fastpath as f; print(f.WRITE_BUFFER, t.pending_bytes(object()))"
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "EDGE_FAST_PATHS": "0"}, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert off.stdout.split() == ["False", "0"], off.stderr


# -- lingering: a close must not let the client's next bytes reset the connection -------------------

def test_lingering_goes_on_while_the_client_takes_the_queued_output():
    from edge.net.transports import LINGER, LINGER_TIME, keep_lingering

    assert keep_lingering(3_000_000, 1_000_000, 0.0)  # taking the tail: one more period
    assert keep_lingering(1_000_000, 0, 2.0)  # took its last bytes: a period to read them and answer
    assert not keep_lingering(0, 0, 4.0)  # all taken a period ago: closed
    assert not keep_lingering(1_000_000, 1_000_000, 2.0)  # takes nothing: closed
    assert not keep_lingering(3_000_000, 1_000_000, LINGER_TIME - LINGER + 0.1)  # slow for too long: closed


def test_a_linger_closes_once_the_client_stops_taking_its_output():
    """On a clock: the socket stays open while the queue shrinks, one period more once it is empty."""
    from twisted.internet.testing import MemoryReactorClock

    from edge.net.transports import LINGER, Linger

    clock = MemoryReactorClock()
    server, client = socket.socketpair()
    queued = [3000]
    linger = Linger(server, clock, queued=lambda: queued[0])
    for left in (2000, 1000, 0):
        queued[0] = left
        clock.advance(LINGER)
        assert linger.connected and server.fileno() != -1
    clock.advance(LINGER)
    assert not linger.connected and server.fileno() == -1
    client.close()


def test_an_accepted_transport_closing_with_output_in_flight_lingers():
    """On real TCP sockets: edge closes with nothing unread but its last bytes still queued in the kernel
    (an HTTP/2 download's tail); the client, reading them, sends a frame (WINDOW_UPDATE) after the close.
    A plain close made the kernel answer that frame with a reset and drop the queued tail
    (test_hostile_h2 test_a_client_goaway_lets_its_downloads_finish, 1 run in 10)."""
    from twisted.internet import tcp
    from twisted.internet.protocol import Protocol
    from twisted.internet.testing import MemoryReactorClock

    from edge.net import transports

    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    server, _ = listener.accept()
    listener.close()
    server.setblocking(False)
    sent = 0
    try:
        while True:
            sent += server.send(b"x" * 65536)
    except BlockingIOError:
        pass
    assert transports.unread_bytes(server) == 0 and transports.queued_output(server) > 0

    clock = MemoryReactorClock()
    transport = transports.AcceptedTransport.__new__(transports.AcceptedTransport)
    tcp.Connection.__init__(transport, server, Protocol(), clock)
    transport.connected = 1
    transport.protocol.makeConnection(transport)
    transport.loseConnection()  # nothing in Twisted's buffer: closed at once

    client.settimeout(10)
    client.sendall(b"\0" * 13)  # the client's answer to what it reads, arriving after the close
    received = 0
    while chunk := client.recv(1 << 20):  # a reset raises ConnectionResetError here
        received += len(chunk)
    assert received == sent
    client.close()
    clock.advance(transports.LINGER_TIME)
