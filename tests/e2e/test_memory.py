"""Memory that stays flat: every kind of connection leaves nothing behind.

A running edge is driven with N connections (or requests) of one kind in
rounds; its live Python objects, counted by type from inside the process
(``[admin] debug = true``: ``/debug/objects``, after a full collection), must
not grow from one round to the next.  A leak of one object per connection
shows as N more; the slack allows for the caches that fill once and for
connections still being torn down.  Counts, not RSS: RSS moves with the
allocator, object counts do not.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
import urllib.request
from typing import Callable

import pytest

from tests.support.procs import free_port
from tests.e2e.test_reload import origins  # noqa: F401  (the fixture: nginx origins and a WebSocket echo)
from tests.e2e.test_terminate import local_ca

N = 300


def objects(e) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{e.admin_port}/debug/objects", timeout=30) as answer:
        return json.load(answer)


def settle(e) -> dict:
    """A reading once the edge holds no client connection (they close asynchronously)."""
    deadline = time.monotonic() + 10
    reading = objects(e)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        again = objects(e)
        if again["total"] == reading["total"]:
            return again
        reading = again
    return reading


def assert_flat(e, drive: Callable[[int], None], n: int = N) -> None:
    drive(n)  # warm-up: caches, pools, lazily created state
    before = settle(e)
    drive(n)
    after = settle(e)
    slack = max(20, n // 3)  # Twisted keeps up to 50 cancelled timers before it sweeps them (2 objects each)
    grown = {kind: after["objects"].get(kind, 0) - count for kind, count in before["objects"].items()
             if after["objects"].get(kind, 0) - count > slack}
    grown.update({kind: count for kind, count in after["objects"].items()
                  if kind not in before["objects"] and count > slack})
    assert not grown, f"objects left behind by {n} more: {grown}; bound methods before {before['bound_methods']}, " \
                      f"after {after['bound_methods']}"
    assert after["coarse_deadlines"] <= before["coarse_deadlines"] + slack, (before, after)
    assert after["descriptors"] <= before["descriptors"] + 2, (before["descriptors"], after["descriptors"])
    e.assert_alive()


@pytest.fixture
def memory_edge(edge, origins):  # noqa: F811
    from tests.e2e.test_reload import body

    admin_port = free_port()
    extra = f"""
    [admin]
    listen = "127.0.0.1:{admin_port}"
    debug = true
    [ssh]
    backend = "raw"
    [backends.raw]
    servers = ["127.0.0.1:{origins['web1']}"]
    """
    e = edge(body(origins, "web1", "tls1") + extra, ssh=True, log_level="warn",
             timeouts='inspect = "10s"\nconnect = "5s"\nidle = "60s"')  # hundreds of connections in a row
    e.admin_port = admin_port
    return e


def tls(e, host: str, alpn: str | None = "http/1.1", verify: bool = True) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=local_ca(e)) if verify else ssl._create_unverified_context()
    if alpn:
        context.set_alpn_protocols([alpn])
    raw = socket.create_connection(("127.0.0.1", e.https_port), timeout=10)
    return context.wrap_socket(raw, server_hostname=host)


def read_until_close(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_passthrough_connections(memory_edge):
    def drive(n: int) -> None:
        for _ in range(n):
            with tls(memory_edge, "pass.example.test", verify=False) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: pass.example.test\r\nConnection: close\r\n\r\n")
                assert read_until_close(sock).endswith(b"tls1\n")
    assert_flat(memory_edge, drive)


def test_ssh_door_connections(memory_edge):
    """The SSH door forwards any bytes: an HTTP exchange with nginx stands in for an SSH session."""
    def drive(n: int) -> None:
        for _ in range(n):
            with socket.create_connection(("127.0.0.1", memory_edge.ssh_port), timeout=10) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert read_until_close(sock).endswith(b"web1\n")
    assert_flat(memory_edge, drive)


def test_terminated_http1_requests(memory_edge):
    def drive(n: int) -> None:
        for _ in range(n // 10):  # a new connection, then ten requests on it
            with tls(memory_edge, "app.example.test") as sock:
                for i in range(10):
                    close = b"Connection: close\r\n" if i == 9 else b""
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: app.example.test\r\n%s\r\n" % close)
                    answer = b""
                    while not answer.endswith(b"web1\n"):
                        chunk = sock.recv(65536)
                        assert chunk, answer
                        answer += chunk
    assert_flat(memory_edge, drive)


def test_terminated_http2_requests(memory_edge):
    import h2.config
    import h2.connection
    import h2.events

    def drive(n: int) -> None:
        for _ in range(n // 10):
            with tls(memory_edge, "app.example.test", "h2") as sock:
                conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
                conn.initiate_connection()
                for i in range(10):
                    stream = conn.get_next_available_stream_id()
                    conn.send_headers(stream, [(":method", "GET"), (":path", "/"), (":scheme", "https"),
                                               (":authority", "app.example.test")], end_stream=True)
                    sock.sendall(conn.data_to_send())
                    done = False
                    while not done:
                        data = sock.recv(65536)
                        assert data
                        for event in conn.receive_data(data):
                            if isinstance(event, h2.events.DataReceived):
                                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                            if isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                                done = True
                        sock.sendall(conn.data_to_send())
                conn.close_connection()
                sock.sendall(conn.data_to_send())
    assert_flat(memory_edge, drive)


def test_port_80_redirects(memory_edge):
    def drive(n: int) -> None:
        for _ in range(n):
            with socket.create_connection(("127.0.0.1", memory_edge.http_port), timeout=10) as sock:
                sock.sendall(b"GET /x HTTP/1.1\r\nHost: app.example.test\r\nConnection: close\r\n\r\n")
                assert read_until_close(sock).startswith(b"HTTP/1.1 308 ")
    assert_flat(memory_edge, drive)


def test_refused_hellos(memory_edge):
    def drive(n: int) -> None:
        for _ in range(n):
            with pytest.raises(ssl.SSLError):
                tls(memory_edge, "unknown.example.test")
    assert_flat(memory_edge, drive)


def test_websocket_tunnels(memory_edge):
    """Through the asyncio client: the threaded sync client reads and writes one TLS socket from two
    threads, and about one handshake in a thousand never leaves it."""
    import asyncio

    from websockets.asyncio.client import connect

    context = ssl.create_default_context(cafile=local_ca(memory_edge))

    async def talk(n: int) -> None:
        for _ in range(n):
            async with connect(f"wss://ws.example.test:{memory_edge.https_port}/", ssl=context, host="127.0.0.1",
                               port=memory_edge.https_port, server_hostname="ws.example.test", open_timeout=10) as ws:
                await ws.send("ping")
                assert await asyncio.wait_for(ws.recv(), 10) == "ping"

    def drive(n: int) -> None:
        asyncio.run(talk(n // 3))
    assert_flat(memory_edge, drive, n=N // 3 * 3)
