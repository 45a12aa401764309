"""The reverse proxy's behaviour under load, failure and bad input, with real clients."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
import subprocess
import sys
import textwrap
import time

import pytest

from tests.support.procs import Program, free_port, wait_listening
from tests.support.servers import Nginx
from tests.support.streams import slow_download
from tests.e2e.test_terminate import curl, local_ca, split


def one_route(backend_servers: str, extra_backend: str = "", extra_route: str = "", timeouts: str = "") -> str:
    return f"""
    [tls]
    issuer = "local"
    [backends.web]
    servers = {backend_servers}
    {extra_backend}
    [[routes]]
    hosts = ["app.example.test"]
    tls = "edge"
    backend = "web"
    {extra_route}
    """


@pytest.fixture
def files_origin(start, tmp_path):
    """nginx serving files (and accepting PUT) on plain HTTP, one location rate-limited."""
    port = free_port()
    files = tmp_path / "www"
    files.mkdir()
    server = start(Nginx, tmp_path, f"""
        server {{
          listen 127.0.0.1:{port};
          root {files};
          client_max_body_size 100m;
          location /up/ {{ dav_methods PUT; create_full_put_path on; }}
          location /slow/ {{ limit_rate 200k; }}
        }}
        """)
    wait_listening(port, proc=server.proc)
    server.port, server.files = port, files
    return server


def test_request_bodies_reach_the_backend(edge, files_origin):
    e = edge(one_route(f'["http://127.0.0.1:{files_origin.port}"]'))
    payload = os.urandom(3 * 1024 * 1024)
    body = files_origin.files.parent / "payload.bin"
    body.write_bytes(payload)
    for version in ("--http1.1", "--http2"):
        put = curl(e.https_port, "app.example.test", f"/up/{version[2:]}.bin", version, "-T", str(body), cafile=local_ca(e))
        assert split(put.stdout)[0] in (201, 204), put.stdout
        assert (files_origin.files / "up" / f"{version[2:]}.bin").read_bytes() == payload


def test_max_body_is_413_for_declared_and_chunked_bodies(edge, files_origin):
    e = edge(one_route(f'["http://127.0.0.1:{files_origin.port}"]', extra_route='max_body = "1M"'))
    big = files_origin.files.parent / "big.bin"
    big.write_bytes(os.urandom(2 * 1024 * 1024))
    declared = curl(e.https_port, "app.example.test", "/up/x", "--http1.1", "-T", str(big), cafile=local_ca(e))
    assert split(declared.stdout)[0] == 413
    chunked = curl(e.https_port, "app.example.test", "/up/y", "--http2", "-T", str(big), "-H", "Content-Length:",
                   cafile=local_ca(e))
    assert split(chunked.stdout)[0] == 413
    assert not (files_origin.files / "up").exists()
    small = curl(e.https_port, "app.example.test", "/up/z", "--data-binary", "small", "-X", "PUT", cafile=local_ca(e))
    assert split(small.stdout)[0] in (201, 204)


def tls_exchange(port: int, cafile: str, data: bytes, read_timeout: float = 10) -> bytes:
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as raw:
        with context.wrap_socket(raw, server_hostname="app.example.test") as tls:
            try:
                tls.sendall(data)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                pass
            answer = b""
            try:
                while chunk := tls.recv(65536):
                    answer += chunk
            except (ConnectionResetError, ssl.SSLError):
                pass
    return answer


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"GET / HTTP/1.1\r\nHost: app.example.test\r\nX-Big: " + b"x" * 70000 + b"\r\n\r\n", 431),
        (b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    ],
    ids=["header-too-large", "content-length-and-chunked", "two-content-lengths"],
)
def test_bad_request_heads(edge, files_origin, request_bytes, status):
    e = edge(one_route(f'["http://127.0.0.1:{files_origin.port}"]'))
    answer = tls_exchange(e.https_port, local_ca(e), request_bytes)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
    e.assert_alive()


def test_slow_request_head_gets_408(edge, files_origin):
    e = edge(one_route(f'["http://127.0.0.1:{files_origin.port}"]'), timeouts='inspect = "1s"\nconnect = "2s"\nidle = "60s"')
    answer = tls_exchange(e.https_port, local_ca(e), b"GET / HTTP/1.1\r\nHost: app.example.test\r\n")
    assert answer.startswith(b"HTTP/1.1 408 "), answer


VERSIONS = pytest.mark.parametrize("version", ["--http1.1", "--http2"])


@VERSIONS
def test_refused_backend_is_502(edge, version):
    e = edge(one_route(f'["http://127.0.0.1:{free_port()}"]'))
    status, _, body = split(curl(e.https_port, "app.example.test", "/", version, cafile=local_ca(e)).stdout)
    assert status == 502 and body == "the service did not answer\n"
    e.wait_log("refused the connection")
    e.wait_log(" 502 ")


@VERSIONS
def test_failover_to_the_next_server(edge, files_origin, version):
    (files_origin.files / "ok.txt").write_text("fine\n")
    e = edge(one_route(f'["http://127.0.0.1:{free_port()}", "http://127.0.0.1:{files_origin.port}"]'))
    for _ in range(3):
        status, _, body = split(curl(e.https_port, "app.example.test", "/ok.txt", version, cafile=local_ca(e)).stdout)
        assert (status, body) == (200, "fine\n")


@VERSIONS
def test_no_server_available_is_503(edge, files_origin, version):
    (files_origin.files / "slow").mkdir()
    (files_origin.files / "slow" / "blob").write_bytes(os.urandom(2 * 1024 * 1024))
    e = edge(one_route(f'["http://127.0.0.1:{files_origin.port}"]', extra_backend="max_conn = 1"))
    holder = subprocess.Popen(
        ["curl", "-sS", "-o", "/dev/null", "--max-time", "30", "--resolve", f"app.example.test:{e.https_port}:127.0.0.1",
         "--cacert", local_ca(e), f"https://app.example.test:{e.https_port}/slow/blob"])
    try:
        time.sleep(1)  # the slow download holds the only slot
        status, _, body = split(curl(e.https_port, "app.example.test", "/", version, cafile=local_ca(e)).stdout)
        assert status == 503 and "no server available" in body
    finally:
        holder.kill()
        holder.wait()


@VERSIONS
def test_silent_backend_is_504(edge, tmp_path, version):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts (in the kernel) and never answers
    try:
        e = edge(one_route(f'["http://127.0.0.1:{silent.getsockname()[1]}"]'),
                 timeouts='inspect = "2s"\nconnect = "2s"\nidle = "60s"\nresponse = "1s"')
        status, _, body = split(curl(e.https_port, "app.example.test", "/", version, cafile=local_ca(e)).stdout)
        assert status == 504 and "did not answer" in body
    finally:
        silent.close()


def test_large_download_streams_with_flat_memory(edge, files_origin):
    size = 200 * 1024 * 1024
    blob = files_origin.files / "blob"
    block = os.urandom(1024 * 1024)
    with open(blob, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
    expected = hashlib.sha256(blob.read_bytes()).hexdigest()
    e = edge(one_route(f'["http://127.0.0.1:{files_origin.port}"]'))
    received, digest, growth = slow_download(e.https_port, "app.example.test", local_ca(e), "/blob", size, e.pid)
    assert received == size and digest == expected
    assert growth < 32, f"edge RSS grew {growth:.1f} MiB for a 200 MiB download"


def test_first_bytes_arrive_before_the_backend_has_finished(edge, files_origin):
    (files_origin.files / "slow").mkdir(exist_ok=True)
    (files_origin.files / "slow" / "trickle").write_bytes(os.urandom(1024 * 1024))  # ~5 s at 200 KiB/s
    e = edge(one_route(f'["http://127.0.0.1:{files_origin.port}"]'))
    context = ssl.create_default_context(cafile=local_ca(e))
    with socket.create_connection(("127.0.0.1", e.https_port), timeout=30) as raw:
        with context.wrap_socket(raw, server_hostname="app.example.test") as tls:
            started = time.monotonic()
            tls.sendall(b"GET /slow/trickle HTTP/1.1\r\nHost: app.example.test\r\nConnection: close\r\n\r\n")
            first = tls.recv(65536)
            first_at = time.monotonic() - started
            total = len(first)
            while chunk := tls.recv(65536):
                total += len(chunk)
            done_at = time.monotonic() - started
    assert first.startswith(b"HTTP/1.1 200")
    assert first_at < done_at / 2, (first_at, done_at)


def test_plain_http_allowed_route_on_port_80(edge, files_origin):
    (files_origin.files / "hello.txt").write_text("over plain http\n")
    e = edge(one_route(f'["http://127.0.0.1:{files_origin.port}"]', extra_route='http = "allow"'))
    result = subprocess.run(["curl", "-sS", "-i", "--max-time", "10", "-H", "Host: app.example.test",
                             f"http://127.0.0.1:{e.http_port}/hello.txt"], capture_output=True, text=True)
    status, _, body = split(result.stdout)
    assert (status, body) == (200, "over plain http\n")
    other = subprocess.run(["curl", "-sS", "-i", "--max-time", "10", "-H", "Host: else.example.test",
                            f"http://127.0.0.1:{e.http_port}/"], capture_output=True, text=True)
    assert split(other.stdout)[0] == 308


def test_h2load_through_a_terminated_route(edge, files_origin):
    (files_origin.files / "1k").write_bytes(b"x" * 1024)
    e = edge(one_route(f'["http://127.0.0.1:{files_origin.port}"]'))
    result = subprocess.run(["h2load", "-n", "200", "-c", "4", "-m", "4", "--connect-to", f"127.0.0.1:{e.https_port}",
                             f"https://app.example.test:{e.https_port}/1k"], capture_output=True, text=True, timeout=60)
    assert "200 succeeded, 0 failed" in result.stdout and "status codes: 200 2xx" in result.stdout, result.stdout
    assert "Application protocol: h2" in result.stdout


ECHO_SERVER = textwrap.dedent("""
    import asyncio, sys
    from websockets.asyncio.server import serve

    async def echo(ws):
        async for message in ws:
            await ws.send(message)

    async def main():
        async with serve(echo, "127.0.0.1", int(sys.argv[1])):
            await asyncio.Future()

    asyncio.run(main())
    """)


def test_websocket_echo_through_the_edge(edge, start, tmp_path):
    from websockets.asyncio.client import connect

    port = free_port()
    script = tmp_path / "echo.py"
    script.write_text(ECHO_SERVER)
    echo = start(Program, [sys.executable, str(script), str(port)], tmp_path / "echo.log")
    wait_listening(port, proc=echo.proc)
    e = edge(one_route(f'["http://127.0.0.1:{port}"]'))
    context = ssl.create_default_context(cafile=local_ca(e))

    async def talk() -> list:
        answers = []
        async with connect(f"wss://app.example.test:{e.https_port}/chat", ssl=context,
                           host="127.0.0.1", port=e.https_port, server_hostname="app.example.test") as ws:
            for message in ("hello", "x" * 100_000, b"\x00\x01binary"):
                await ws.send(message)
                answers.append(await asyncio.wait_for(ws.recv(), 10))
        return answers

    assert asyncio.run(talk()) == ["hello", "x" * 100_000, b"\x00\x01binary"]
    e.assert_alive()


def test_http2_connection_outlives_the_request_head_timeout(edge, files_origin):
    """An idle HTTP/2 connection is not cut by the HTTP/1.1 head timer (a regression test)."""
    import h2.config
    import h2.connection
    import h2.events

    (files_origin.files / "a.txt").write_text("A\n")
    e = edge(one_route(f'["http://127.0.0.1:{files_origin.port}"]'), timeouts='inspect = "1s"\nconnect = "2s"\nidle = "60s"')
    context = ssl.create_default_context(cafile=local_ca(e))
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", e.https_port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="app.example.test") as tls:
            assert tls.selected_alpn_protocol() == "h2"
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            tls.sendall(conn.data_to_send())
            for stream in (1, 3):
                if stream == 3:
                    time.sleep(2.5)  # longer than timeouts.inspect
                conn.send_headers(stream, [(":method", "GET"), (":path", "/a.txt"), (":scheme", "https"),
                                           (":authority", "app.example.test")], end_stream=True)
                tls.sendall(conn.data_to_send())
                body, ended = b"", False
                while not ended:
                    data = tls.recv(65536)
                    assert data, "the edge closed the HTTP/2 connection"
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.DataReceived) and event.stream_id == stream:
                            body += event.data
                            conn.acknowledge_received_data(event.flow_controlled_length, stream)
                        if isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                            ended = True
                    tls.sendall(conn.data_to_send())
                assert body == b"A\n"
