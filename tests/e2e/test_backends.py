"""Server selection through the real edge: balance, failover, passive health, max_conn."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest

from tests.support.config import config, route
from tests.support.procs import free_port, process_sockets, wait_listening
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


@pytest.fixture
def black_hole():
    """A loopback port whose accept queue is full: connects to it get no answer (their SYNs are dropped)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(listener.getsockname())
        fillers.append(filler)
    probe = socket.socket()
    probe.settimeout(0.5)
    with pytest.raises(TimeoutError):  # the premise: nothing answers there now
        probe.connect(listener.getsockname())
    probe.close()
    yield listener.getsockname()[1]
    for s in [listener, *fillers]:
        s.close()


def test_server_that_does_not_answer_times_out_and_the_next_is_used(edge, named_servers, black_hole):
    e = tcp_edge(edge, [f"127.0.0.1:{black_hole}", f"127.0.0.1:{named_servers[0]}"], fail_timeout='"30s"')
    started = time.monotonic()
    assert ask(e.ssh_port)[0] == "server-0"
    assert time.monotonic() - started >= 0.9  # timeouts.connect = 1s on the silent server first
    log = e.wait_log(f"127.0.0.1:{black_hole} marked down for 30s")
    assert "User timeout caused connection failure" in log
    assert ask(e.ssh_port)[0] == "server-0"
    e.assert_alive()


def test_forwarded_connections_send_without_delay(edge, named_servers):
    """Both sockets of a forwarded connection have TCP_NODELAY: small writes are not held back (Nagle)."""
    e = tcp_edge(edge, [f"127.0.0.1:{named_servers[0]}"])
    name, held = ask(e.ssh_port, keep=True)
    assert name == "server-0"
    try:
        peers = {}
        for sock in process_sockets(e.pid):
            try:
                peers[sock.getpeername()] = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            except OSError:
                pass  # a listening socket
            finally:
                sock.close()
        client_side = peers.get(held.getsockname())
        backend_side = peers.get(("127.0.0.1", named_servers[0]))
        assert (client_side, backend_side) == (1, 1), peers
    finally:
        held.close()


def test_ipv6_servers_for_tcp_and_http_backends(edge, start, tmp_path):
    """Backend servers named by an IPv6 address: the TCP door and a terminated route both reach them."""
    port = free_port("::1")
    server = start(Nginx, tmp_path, f'server {{ listen [::1]:{port}; return 200 "six $remote_addr\\n"; }}')
    wait_listening(port, host="::1", proc=server.proc)
    e = edge(config(ssh={"backend": "tcp6"}, backends={"tcp6": f"[::1]:{port}", "web6": f"http://[::1]:{port}"},
                    routes=[route(backend="web6")]))
    assert ask_text(e.ssh_port).endswith("six ::1\n")
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--resolve", f"app.example.test:{e.https_port}:127.0.0.1", "--cacert",
         str(e.config.parent / "state" / "local-ca" / "ca.pem"), f"https://app.example.test:{e.https_port}/"],
        capture_output=True, text=True, timeout=20)
    assert result.stdout == "six ::1\n", result.stderr
    assert f"server=[::1]:{port}" in e.wait_log(f"server=[::1]:{port}")


def ask_text(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    return data.decode()
