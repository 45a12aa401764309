"""The HTTP/1.1 relay: keep-alive to the backend, pipelining, chunked bodies both ways, HTTP/1.0 clients."""

from __future__ import annotations

import gzip
import os
import signal
import socket
import ssl
import subprocess
import time

import pytest

from tests.support.procs import free_port, wait_listening
from tests.support.servers import Nginx
from tests.e2e.test_http_proxy import one_route
from tests.e2e.test_terminate import local_ca, split


@pytest.fixture
def origin(start, tmp_path):
    """nginx: reports which upstream connection served a request, serves gzip (chunked) and PUT."""
    port, short = free_port(), free_port()
    files = tmp_path / "www"
    (files / "up").mkdir(parents=True)
    (files / "text.txt").write_text("compress me " * 2000)
    server = start(Nginx, tmp_path, f"""
        server {{
          listen 127.0.0.1:{port};
          root {files};
          client_max_body_size 100m;
          keepalive_requests 1000;
          gzip on; gzip_types text/plain; gzip_min_length 10;
          location = /who {{ return 200 "conn=$connection req=$connection_requests\\n"; }}
          location = /fwd {{ return 200 "xff=$http_x_forwarded_for|xhost=$http_x_forwarded_host|fwd=$http_forwarded"; }}
          location /up/ {{ dav_methods PUT; create_full_put_path on; }}
        }}
        server {{
          listen 127.0.0.1:{short};
          keepalive_timeout 1s;
          location = /who {{ return 200 "conn=$connection req=$connection_requests\\n"; }}
        }}
        """)
    wait_listening(port, proc=server.proc)
    wait_listening(short, proc=server.proc)
    server.port, server.short, server.files = port, short, files
    return server


def tls_socket(e, timeout: float = 10) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=local_ca(e))
    context.set_alpn_protocols(["http/1.1"])
    raw = socket.create_connection(("127.0.0.1", e.https_port), timeout=timeout)
    return context.wrap_socket(raw, server_hostname="app.example.test")


def read_responses(sock: ssl.SSLSocket, count: int) -> list[tuple[int, dict[str, str], bytes]]:
    """Read ``count`` responses with Content-Length bodies from a kept-alive connection."""
    data, out = b"", []
    while len(out) < count:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {len(out)} responses: {data!r}"
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(data) < length:
            data += sock.recv(65536)
        out.append((int(lines[0].split()[1]), headers, data[:length]))
        data = data[length:]
    return out


def test_kept_alive_backend_connection_serves_request_after_request(edge, origin):
    e = edge(one_route(f'["http://127.0.0.1:{origin.port}"]'))
    answers = []
    for _ in range(2):  # two client connections, one after the other
        with tls_socket(e) as tls:
            for _ in range(3):
                tls.sendall(b"GET /who HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
                answers.append(read_responses(tls, 1)[0][2].decode())
    connections = {a.split()[0] for a in answers}
    assert len(connections) == 1, answers  # every request went over one pooled backend connection
    assert answers[-1].split()[1] == "req=6"


def test_pipelined_requests_answered_in_order(edge, origin):
    (origin.files / "a.txt").write_text("A")
    (origin.files / "b.txt").write_text("BB")
    e = edge(one_route(f'["http://127.0.0.1:{origin.port}"]'))
    with tls_socket(e) as tls:
        tls.sendall(b"".join(b"GET /%s HTTP/1.1\r\nHost: app.example.test\r\n\r\n" % name
                             for name in (b"a.txt", b"b.txt", b"nope", b"a.txt")))
        answers = read_responses(tls, 4)
    assert [(status, body) for status, _, body in answers[:2]] == [(200, b"A"), (200, b"BB")]
    assert answers[2][0] == 404 and answers[3][2] == b"A"


def test_chunked_response_relayed_to_http11_and_dechunked_for_http10(edge, origin):
    e = edge(one_route(f'["http://127.0.0.1:{origin.port}"]'))
    expected = (origin.files / "text.txt").read_bytes()
    base = ["curl", "-sS", "--max-time", "20", "--resolve", f"app.example.test:{e.https_port}:127.0.0.1",
            "--cacert", local_ca(e), "-H", "Accept-Encoding: gzip", "-D", "-"]
    url = f"https://app.example.test:{e.https_port}/text.txt"
    for version in ("--http1.1", "--http1.0"):
        result = subprocess.run(base + [version, url], capture_output=True, timeout=30)
        head, _, body = result.stdout.partition(b"\r\n\r\n")
        assert b" 200 " in head.split(b"\r\n")[0], head
        assert b"content-encoding: gzip" in head.lower()
        if version == "--http1.1":
            assert b"transfer-encoding: chunked" in head.lower()
        else:
            assert b"transfer-encoding" not in head.lower() and b"connection: close" in head.lower()
        assert gzip.decompress(body) == expected


def test_chunked_upload_reaches_the_backend(edge, origin):
    e = edge(one_route(f'["http://127.0.0.1:{origin.port}"]'))
    payload = os.urandom(300_000)
    source = origin.files.parent / "payload.bin"
    source.write_bytes(payload)
    result = subprocess.run(
        ["curl", "-sS", "-i", "--http1.1", "--max-time", "20", "--resolve", f"app.example.test:{e.https_port}:127.0.0.1",
         "--cacert", local_ca(e), "-H", "Transfer-Encoding: chunked", "-T", str(source),
         f"https://app.example.test:{e.https_port}/up/chunked.bin"], capture_output=True, text=True, timeout=30)
    assert split(result.stdout)[0] in (201, 204), result.stdout + result.stderr
    assert (origin.files / "up" / "chunked.bin").read_bytes() == payload


def test_backend_closing_idle_connections_costs_no_request(edge, origin):
    e = edge(one_route(f'["http://127.0.0.1:{origin.short}"]'))
    with tls_socket(e) as tls:
        for pause in (0, 1.6, 1.6):  # nginx closes its idle side after 1 s
            time.sleep(pause)
            tls.sendall(b"GET /who HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
            status, _, body = read_responses(tls, 1)[0]
            assert status == 200 and body.startswith(b"conn="), body
    e.assert_alive()


def test_http10_keep_alive_and_close(edge, origin):
    (origin.files / "a.txt").write_text("A")
    e = edge(one_route(f'["http://127.0.0.1:{origin.port}"]'))
    with tls_socket(e) as tls:
        tls.sendall(b"GET /a.txt HTTP/1.0\r\nHost: app.example.test\r\nConnection: keep-alive\r\n\r\n")
        status, headers, body = read_responses(tls, 1)[0]
        assert (status, body, headers.get("connection")) == (200, b"A", "keep-alive")
        tls.sendall(b"GET /a.txt HTTP/1.0\r\nHost: app.example.test\r\n\r\n")
        status, headers, body = read_responses(tls, 1)[0]
        assert (status, body, headers.get("connection")) == (200, b"A", "close")
        assert tls.recv(100) == b""  # and the edge closed it


def test_streamed_chunked_upload_over_max_body_is_413(edge, origin):
    e = edge(one_route(f'["http://127.0.0.1:{origin.port}"]', extra_route='max_body = "1M"'))
    big = origin.files.parent / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024))
    result = subprocess.run(
        ["curl", "-sS", "-i", "--http1.1", "--max-time", "20", "--resolve", f"app.example.test:{e.https_port}:127.0.0.1",
         "--cacert", local_ca(e), "-H", "Transfer-Encoding: chunked", "-T", str(big),
         f"https://app.example.test:{e.https_port}/up/big.bin"], capture_output=True, text=True, timeout=30)
    assert split(result.stdout)[0] == 413, result.stdout[:300] + result.stderr
    time.sleep(0.5)
    assert not (origin.files / "up" / "big.bin").exists()
    e.assert_alive()


def test_slow_upload_is_not_cut_by_the_response_timeout(edge, origin):
    """The response deadline starts when the request body has been sent, not before."""
    e = edge(one_route(f'["http://127.0.0.1:{origin.port}"]'),
             timeouts='inspect = "2s"\nconnect = "2s"\nidle = "60s"\nresponse = "1s"')
    with tls_socket(e, timeout=20) as tls:
        tls.sendall(b"PUT /up/slow.txt HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 30\r\n\r\n")
        for piece in (b"a" * 10, b"b" * 10, b"c" * 10):
            time.sleep(0.8)  # 2.4 s in all, longer than timeouts.response
            tls.sendall(piece)
        status, _, _ = read_responses(tls, 1)[0]
    assert status in (201, 204)
    assert (origin.files / "up" / "slow.txt").read_bytes() == b"a" * 10 + b"b" * 10 + b"c" * 10


def backend_connections(port: int) -> int:
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( dport = :{port} )"],
                         capture_output=True, text=True).stdout
    return len([line for line in out.splitlines() if line.strip()])


def test_reload_closes_the_idle_pool_of_a_changed_backend(edge, origin):
    e = edge(one_route(f'["http://127.0.0.1:{origin.port}"]'))
    with tls_socket(e) as tls:
        tls.sendall(b"GET /who HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
        assert read_responses(tls, 1)[0][0] == 200
    assert backend_connections(origin.port) == 1  # kept alive in the pool
    e.config.write_text(e.config.read_text().replace(f"127.0.0.1:{origin.port}", f"127.0.0.1:{origin.short}"))
    os.kill(e.pid, signal.SIGHUP)
    e.wait_log("reloaded")
    deadline = time.monotonic() + 5
    while backend_connections(origin.port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert backend_connections(origin.port) == 0
    with tls_socket(e) as tls:
        tls.sendall(b"GET /who HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
        assert read_responses(tls, 1)[0][0] == 200
    assert backend_connections(origin.short) == 1


def test_forwarding_headers_follow_each_request_on_a_kept_alive_connection(edge, origin):
    """The Host and the client's own forwarding headers may change from one request to the next."""
    e = edge(one_route(f'["http://127.0.0.1:{origin.port}"]'))
    port = e.https_port
    requests = [
        f"GET /fwd HTTP/1.1\r\nHost: app.example.test:{port}\r\n\r\n",
        "GET /fwd HTTP/1.1\r\nHost: app.example.test\r\nX-Forwarded-For: 192.0.2.9\r\n"
        "Forwarded: for=192.0.2.9\r\nConnection: keep-alive\r\n\r\n",
        "GET /fwd HTTP/1.1\r\nhost: APP.example.test\r\nConnection: keep-alive\r\n\r\n",
        f"GET /fwd HTTP/1.1\r\nHost: app.example.test:{port}\r\n\r\n",
    ]
    with tls_socket(e) as tls:
        answers = []
        for request in requests:
            tls.sendall(request.encode())
            status, _, body = read_responses(tls, 1)[0]
            assert status == 200
            answers.append(body.decode())
    assert answers == [
        f'xff=127.0.0.1|xhost=app.example.test:{port}|fwd=for=127.0.0.1;host="app.example.test:{port}";proto=https',
        'xff=192.0.2.9, 127.0.0.1|xhost=app.example.test|fwd=for=192.0.2.9, for=127.0.0.1;host="app.example.test";proto=https',
        'xff=127.0.0.1|xhost=APP.example.test|fwd=for=127.0.0.1;host="APP.example.test";proto=https',
        f'xff=127.0.0.1|xhost=app.example.test:{port}|fwd=for=127.0.0.1;host="app.example.test:{port}";proto=https',
    ]
