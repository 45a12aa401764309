"""Active health checks against a real backend that is killed and restarted."""

from __future__ import annotations

import pytest

from tests.support.config import config, route
from tests.support.procs import free_port, wait_listening
from tests.support.servers import Nginx
from tests.e2e.test_terminate import curl, local_ca, split


def nginx_on(start, tmp_path, port: int, name: str) -> Nginx:
    server = start(Nginx, tmp_path, f"""
        server {{ listen 127.0.0.1:{port}; location /healthz {{ return 200 "ok\\n"; }} location / {{ return 200 "{name}\\n"; }} }}
        """, name=name)
    wait_listening(port, proc=server.proc)
    return server


@pytest.mark.parametrize("check", ["tcp", "http GET /healthz"])
def test_backend_marked_down_and_up_by_checks(edge, start, tmp_path, check):
    port = free_port()
    server = nginx_on(start, tmp_path, port, "web")
    e = edge(config(backends={"b": {"servers": [f"http://127.0.0.1:{port}"], "check": check, "check_interval": "300ms",
                                    "rise": 2, "fall": 2}}, routes=[route(backend="b")]))
    ca = local_ca(e)
    assert split(curl(e.https_port, "app.example.test", "/", cafile=ca).stdout)[0] == 200
    server.stop()
    e.wait_log(f"server http://127.0.0.1:{port} is DOWN (check failed 2 times")
    status, _, body = split(curl(e.https_port, "app.example.test", "/", cafile=ca).stdout)
    assert status == 503 and "no server available" in body
    server = nginx_on(start, tmp_path, port, "web-again")
    e.wait_log(f"server http://127.0.0.1:{port} is UP (check passed 2 times)")
    status, _, body = split(curl(e.https_port, "app.example.test", "/", cafile=ca).stdout)
    assert (status, body) == (200, "web-again\n")


def test_http_check_fails_on_a_5xx(edge, start, tmp_path):
    port = free_port()
    server = start(Nginx, tmp_path, f'server {{ listen 127.0.0.1:{port}; location /healthz {{ return 503; }} }}')
    wait_listening(port, proc=server.proc)
    e = edge(f"""
    [ssh]
    backend = "b"
    [backends.b]
    servers = ["127.0.0.1:{port}"]
    check = "http GET /healthz"
    check_interval = "300ms"
    fall = 1
    """)
    e.wait_log("is DOWN (check failed 1 times: HTTP 503)")
    import socket
    with socket.create_connection(("127.0.0.1", e.ssh_port), timeout=5) as sock:
        assert sock.recv(10) == b""  # a TCP route with no server up refuses


def test_tls_check_marks_a_stopped_tls_server_down(edge, tls_origin):
    origin = tls_origin("t.example.test")
    e = edge(f"""
    [backends.b]
    servers = ["127.0.0.1:{origin.port}"]
    check = "tls"
    check_interval = "300ms"
    fall = 2
    [[routes]]
    hosts = ["t.example.test"]
    tls = "passthrough"
    backend = "b"
    """)
    origin.stop()
    e.wait_log(f"server 127.0.0.1:{origin.port} is DOWN (check failed 2 times")
