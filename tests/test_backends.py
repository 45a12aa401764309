"""Server selection through the real edge: balance, failover, passive health, max_conn."""

from __future__ import annotations

import socket
import time

import pytest

from tests.support.procs import free_port, wait_listening
from tests.support.servers import Nginx


@pytest.fixture
def named_servers(start, tmp_path):
    """Three nginx servers on their own ports, each answering with its name."""
    ports = [free_port() for _ in range(3)]
    body = "".join(
        f'server {{ listen 127.0.0.1:{port}; keepalive_timeout 60s; return 200 "server-{i}\\n"; }}\n'
        for i, port in enumerate(ports)
    )
    server = start(Nginx, tmp_path, body)
    for port in ports:
        wait_listening(port, proc=server.proc)
    return ports


def tcp_edge(edge, servers: list[str], **options: str):
    extra = "".join(f"{k} = {v}\n" for k, v in options.items())
    return edge(f"""
[ssh]
backend = "pool"
[backends.pool]
servers = {servers!r}
{extra}""".replace("'", '"'), timeouts='inspect = "2s"\nconnect = "1s"\nidle = "60s"')


def ask(port: int, keep: bool = False) -> tuple[str, socket.socket | None]:
    """One HTTP request through the edge's TCP door; returns which server answered."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n" + (b"" if keep else b"Connection: close\r\n") + b"\r\n")
    data = b""
    while b"server-" not in data or not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    name = data.split(b"\r\n\r\n", 1)[-1].decode().strip() if data else ""
    if keep:
        return name, sock
    sock.close()
    return name, None


def wait_until(predicate, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_roundrobin_spreads_connections(edge, named_servers):
    e = tcp_edge(edge, [f"127.0.0.1:{p}" for p in named_servers])
    answers = [ask(e.ssh_port)[0] for _ in range(6)]
    assert sorted(answers) == ["server-0", "server-0", "server-1", "server-1", "server-2", "server-2"]


def test_refusing_server_is_skipped_and_then_avoided(edge, named_servers):
    dead = free_port()
    e = tcp_edge(edge, [f"127.0.0.1:{dead}", f"127.0.0.1:{named_servers[0]}"], fail_timeout='"30s"')
    answers = [ask(e.ssh_port)[0] for _ in range(5)]
    assert answers == ["server-0"] * 5
    log = e.wait_log("marked down for 30s")
    assert log.count(f"127.0.0.1:{dead} marked down") == 1
    assert log.count("Connection refused") == 1, "a down server is not tried again within fail_timeout"


def test_all_servers_down_closes_the_client(edge):
    e = tcp_edge(edge, [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"])
    with socket.create_connection(("127.0.0.1", e.ssh_port), timeout=10) as sock:
        assert sock.recv(10) == b""
    e.wait_log("error: backend unavailable")
    e.assert_alive()


def test_max_conn_caps_each_server(edge, named_servers):
    e = tcp_edge(edge, [f"127.0.0.1:{named_servers[0]}"], max_conn="1")
    first, held = ask(e.ssh_port, keep=True)
    assert first == "server-0"
    with socket.create_connection(("127.0.0.1", e.ssh_port), timeout=10) as sock:
        assert sock.recv(10) == b""  # refused: the only server is full
    e.wait_log("refused: no server available")
    held.close()
    e.wait_log(" closed\n")
    assert ask(e.ssh_port)[0] == "server-0"  # the slot was released


def test_leastconn_prefers_the_idle_server(edge, named_servers):
    e = tcp_edge(edge, [f"127.0.0.1:{p}" for p in named_servers[:2]], balance='"leastconn"')
    busy, held = ask(e.ssh_port, keep=True)
    others = set()
    for done in range(1, 5):
        others.add(ask(e.ssh_port)[0])
        wait_until(lambda: e.log().count(" closed\n") >= done)  # its server slot is released
    assert others == {"server-1" if busy == "server-0" else "server-0"}
    held.close()
