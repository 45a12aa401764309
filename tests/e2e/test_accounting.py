"""Bytes in and out on every connection's log line: plain HTTP counted exactly, TLS on the wire."""

from __future__ import annotations

import re
import socket
import time

import pytest

from tests.support.config import site
from tests.support.procs import free_port, wait_listening
from tests.support.servers import Nginx
from tests.e2e.test_terminate import curl, local_ca


def connection_line(e, marker: str) -> tuple[int, int]:
    """in= and out= of the first connection line with ``marker`` (written once the connection ended)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in e.log().splitlines():
            found = re.search(r" in=(\d+) out=(\d+) ", line)
            if found and marker in line:
                return int(found.group(1)), int(found.group(2))
        time.sleep(0.05)
    raise AssertionError(f"no connection line with {marker!r}:\n{e.log()}")


def exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(request)
        client.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    return answer


def test_port_80_redirects_count_their_bytes(edge):
    e = edge(site("http://127.0.0.1:1"))
    request = b"GET /a HTTP/1.1\r\nHost: app.example.test\r\nConnection: close\r\n\r\n"
    answer = exchange(e.http_port, request)
    assert answer.startswith(b"HTTP/1.1 308")
    assert connection_line(e, " http ") == (len(request), len(answer))


def test_plain_http_allow_counts_its_bytes(edge, start, tmp_path):
    port = free_port()
    nginx = start(Nginx, tmp_path, f"server {{ listen 127.0.0.1:{port}; return 200 'hello'; }}")
    wait_listening(port, proc=nginx.proc)
    e = edge(site(f"http://127.0.0.1:{port}", http="allow"))
    request = b"GET /a HTTP/1.1\r\nHost: app.example.test\r\nConnection: close\r\n\r\n"
    answer = exchange(e.http_port, request)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello")
    assert connection_line(e, " http ") == (len(request), len(answer))


@pytest.mark.parametrize("fast_paths", ["on", "off:tls_io"])
@pytest.mark.parametrize("version, marker", [("--http2", " https h2 "), ("--http1.1", " https tls ")])
def test_terminated_tls_counts_its_bytes(edge, start, tmp_path, monkeypatch, fast_paths, version, marker):
    """The same accounting with the tls_io fast path on and off (Twisted's own TLS flushes)."""
    if fast_paths != "on":
        monkeypatch.setenv("EDGE_FASTPATH", fast_paths)  # the environment edge is started with
    port = free_port()
    www = tmp_path / "www"
    www.mkdir()
    (www / "big").write_bytes(b"x" * 300_000)
    nginx = start(Nginx, tmp_path, f"server {{ listen 127.0.0.1:{port}; root {www}; }}")
    wait_listening(port, proc=nginx.proc)
    e = edge(site(f"http://127.0.0.1:{port}"))
    result = curl(e.https_port, "app.example.test", "/big", version, "-o", "/dev/null", cafile=local_ca(e))
    assert result.returncode == 0
    bytes_in, bytes_out = connection_line(e, marker)
    # the body and its TLS records out; a handshake and a request in
    assert 300_000 < bytes_out < 330_000 and 0 < bytes_in < 10_000, (bytes_in, bytes_out)
