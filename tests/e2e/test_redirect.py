"""Port 80 and plain HTTP on 443: redirect to HTTPS, ACME challenges to the cluster."""

from __future__ import annotations

import socket
import subprocess

import pytest

from tests.support.config import config, route
from tests.support.procs import free_port, wait_listening
from tests.support.servers import Nginx


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "-i", "--max-time", "10", *args], capture_output=True, text=True, timeout=20)


def status_and_headers(response: str) -> tuple[int, dict[str, str]]:
    head = response.replace("\r\n", "\n").split("\n\n", 1)[0].split("\n")
    headers = dict(line.split(": ", 1) for line in head[1:])
    return int(head[0].split()[1]), {k.lower(): v for k, v in headers.items()}


@pytest.fixture
def cluster(start, tmp_path):
    """nginx standing in for the cluster's ingress on port 80 (cert-manager's solver)."""
    port = free_port()
    (tmp_path / "acme").mkdir()
    (tmp_path / "acme" / "token123").write_text("token123.thumbprint")
    server = start(Nginx, tmp_path, f"""
        server {{
          listen 127.0.0.1:{port};
          location /.well-known/acme-challenge/ {{ root {tmp_path / 'acme'}/..; rewrite ^/.well-known/acme-challenge/(.*)$ /acme/$1 break; }}
          location / {{ return 404 "cluster saw $request_uri\\n"; }}
        }}
        """)
    wait_listening(port, proc=server.proc)
    server.port = port
    return server


@pytest.fixture
def web_edge(edge, cluster):
    return edge(config(backends={"kube": "127.0.0.1:9", "kube-http": f"127.0.0.1:{cluster.port}",
                                 "site": "http://127.0.0.1:9"},
                       routes=[route("*.kube.example.test", "kube", tls="passthrough", acme_backend="kube-http"),
                               route("private.example.test", "site", http="deny")]))


def test_port_80_redirects_with_308_keeping_host_path_and_query(web_edge):
    result = curl("-H", "Host: www.example.test", f"http://127.0.0.1:{web_edge.http_port}/a/b?c=d")
    status, headers = status_and_headers(result.stdout)
    assert status == 308
    assert headers["location"] == f"https://www.example.test:{web_edge.https_port}/a/b?c=d"


def test_head_and_http10_and_ipv6_literal(web_edge):
    status, headers = status_and_headers(curl("-I", "-0", "-H", "Host: [::1]:80", f"http://127.0.0.1:{web_edge.http_port}/x").stdout)
    assert status == 308 and headers["location"] == f"https://[::1]:{web_edge.https_port}/x"


def test_keep_alive_serves_several_redirects_on_one_connection(web_edge):
    with socket.create_connection(("127.0.0.1", web_edge.http_port), timeout=10) as sock:
        sock.sendall(b"GET /1 HTTP/1.1\r\nHost: a.test\r\n\r\nGET /2 HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert data.count(b"HTTP/1.1 308") == 2
    assert b"Location: https://b.test:" in data


def test_acme_challenge_goes_to_the_cluster(web_edge):
    result = curl("-H", "Host: app.kube.example.test", f"http://127.0.0.1:{web_edge.http_port}/.well-known/acme-challenge/token123")
    status, _ = status_and_headers(result.stdout)
    assert status == 200, result.stdout
    assert result.stdout.endswith("token123.thumbprint")


def test_acme_path_for_other_hosts_is_redirected(web_edge):
    result = curl("-H", "Host: www.example.test", f"http://127.0.0.1:{web_edge.http_port}/.well-known/acme-challenge/token123")
    assert status_and_headers(result.stdout)[0] == 308


def test_http_deny_route_gets_404(web_edge):
    result = curl("-H", "Host: private.example.test", f"http://127.0.0.1:{web_edge.http_port}/")
    assert status_and_headers(result.stdout)[0] == 404


def test_plain_http_on_443_is_redirected(web_edge):
    result = curl("-H", "Host: www.example.test", f"http://127.0.0.1:{web_edge.https_port}/on-443")
    status, headers = status_and_headers(result.stdout)
    assert status == 308 and headers["location"].endswith("/on-443")


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a/../b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * 70000 + b"\r\n\r\n", 431),
    ],
)
def test_bad_requests_get_an_http_error(web_edge, request_bytes, status):
    with socket.create_connection(("127.0.0.1", web_edge.http_port), timeout=10) as sock:
        try:
            sock.sendall(request_bytes)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = sock.recv(200)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer
    web_edge.assert_alive()


def test_slow_request_head_is_cut_off(edge):
    e = edge("", timeouts='inspect = "1s"\nconnect = "1s"\nidle = "60s"')
    with socket.create_connection(("127.0.0.1", e.http_port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\n\n")  # bare LFs: never a complete head
        answer = b""
        while chunk := sock.recv(1000):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    e.wait_log("timeout: request head")
