"""HTTP/1.1 clients of an HTTP/2 backend (``protocol = "h2"``): curl and raw sockets in front, nginx
(h2c with prior knowledge) and an ``h2``-library origin that records what it got behind.

Requests go on as HTTP/2 with hop-by-hop headers gone and bodies byte-exact (Content-Length or chunked);
responses come back as HTTP/1.1 (the backend's length kept, else chunked; close-delimited for HTTP/1.0),
with trailers for a client that sent ``TE: trailers``; a slow reader holds the backend's stream, not edge's
memory; a backend that resets mid-response truncates the body; a client that leaves resets the stream."""

from __future__ import annotations

import hashlib
import os
import select
import socket
import ssl
import subprocess
import time

import pytest

from tests.support.config import route, site
from tests.support.h2origin import H2Origin
from tests.support.procs import free_port, rss_kib, wait_listening
from tests.support.servers import Nginx
from tests.support.streams import slow_download
from tests.e2e.test_terminate import curl, local_ca, split

HOST = "app.example.test"
TIMEOUTS = 'inspect = "2s"\nconnect = "2s"\nidle = "10s"\nresponse = "3s"'
WAIT = 20.0


def h2_edge(edge, port: int, **kwargs):
    return edge(h2_site(port), timeouts=TIMEOUTS, log_format="json", **kwargs)


def h2_site(port: int, **more) -> str:
    """Backend ``web`` speaks HTTP/2 (``protocol = "h2"``), for the route to ``HOST``."""
    return site({"servers": [f"http://127.0.0.1:{port}"], "protocol": "h2"}, host=HOST, **more)


@pytest.fixture
def origin(start):
    class Started:  # the start fixture stops what it started
        def __init__(self) -> None:
            self.server = H2Origin()

        def stop(self) -> None:
            self.server.stop()

    return start(Started).server


def wait_outcome(e, path: str, timeout: float = WAIT) -> dict:
    """The access-log event of the request for ``path``, once it is written."""
    deadline = time.monotonic() + timeout
    while True:
        found = [event for event in e.events() if event.get("path") == path]
        if found:
            return found[-1]
        assert time.monotonic() < deadline, f"no access-log line for {path}:\n{e.log()}"
        time.sleep(0.05)


def tls_socket(e) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=local_ca(e))
    raw = socket.create_connection(("127.0.0.1", e.https_port), timeout=WAIT)
    return context.wrap_socket(raw, server_hostname=HOST)


def read_all(sock: socket.socket) -> bytes:
    out = b""
    while True:
        data = sock.recv(65536)
        if not data:
            return out
        out += data


def test_get_head_and_keep_alive_through_nginx_h2c(edge, start, tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    (files / "hello.txt").write_bytes(b"hello from nginx over h2c\n")
    port = free_port()
    nginx = start(Nginx, tmp_path, f"""
        server {{
          listen 127.0.0.1:{port} http2;
          root {files};
        }}
        """)
    wait_listening(port, proc=nginx.proc)
    e = h2_edge(edge, port)
    cafile = local_ca(e)
    answer = curl(e.https_port, HOST, "/hello.txt", "--http1.1", cafile=cafile)
    status, headers, body = split(answer.stdout)
    assert (status, body, headers.get("content-length")) == (200, "hello from nginx over h2c\n", "26"), answer
    assert answer.stdout.startswith("HTTP/1.1 200 OK")
    head = curl(e.https_port, HOST, "/hello.txt", "--http1.1", "--head", cafile=cafile)
    status, headers, body = split(head.stdout)
    assert (status, headers.get("content-length"), body) == (200, "26", ""), head
    # keep-alive: four requests on one client connection (curl counts the connections it made for each)
    url = f"https://{HOST}:{e.https_port}/hello.txt"
    several = subprocess.run(
        ["curl", "-sS", "--http1.1", "--max-time", "20", "--resolve", f"{HOST}:{e.https_port}:127.0.0.1",
         "--cacert", cafile, "-w", "%{http_code} %{num_connects}\n"] + ["-o", "/dev/null", url] * 4,
        capture_output=True, text=True, timeout=30)
    assert several.stdout.split("\n")[:-1] == ["200 1", "200 0", "200 0", "200 0"], several
    events = [event for event in e.events() if event.get("path") == "/hello.txt"]
    assert {(event["outcome"], event["protocol"]) for event in events} == {("completed", "HTTP/1.1")}
    e.assert_alive()


def test_bodies_reach_the_backend_byte_exact_without_hop_by_hop_headers(edge, origin, tmp_path):
    e = h2_edge(edge, origin.port)
    cafile = local_ca(e)
    payload = tmp_path / "payload"
    payload.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    data = payload.read_bytes()
    expected = f"{len(data)} {hashlib.sha256(data).hexdigest()}"
    hop = ["-H", "Connection: keep-alive, x-private", "-H", "X-Private: secret", "-H", "Keep-Alive: timeout=5",
           "-H", "TE: trailers", "-H", "Proxy-Connection: keep-alive", "-H", "X-Kept: yes"]
    sized = curl(e.https_port, HOST, "/echo/sized", "--http1.1", "--data-binary", f"@{payload}", *hop, cafile=cafile)
    status, headers, body = split(sized.stdout)
    assert (status, body, headers.get("transfer-encoding")) == (200, expected, "chunked"), sized
    chunked = curl(e.https_port, HOST, "/echo/chunked", "--http1.1", "--data-binary", f"@{payload}",
                   "-H", "Transfer-Encoding: chunked", cafile=cafile)
    assert split(chunked.stdout)[:3:2] == (200, expected), chunked
    empty = curl(e.https_port, HOST, "/echo/empty", "--http1.1", "-X", "POST", "-H", "Content-Length: 0", cafile=cafile)
    assert split(empty.stdout)[:3:2] == (200, f"0 {hashlib.sha256(b'').hexdigest()}"), empty

    seen = {request.header(b":path"): request for request in origin.requests}
    first, second = seen[b"/echo/sized"], seen[b"/echo/chunked"]
    assert first.body == data and second.body == data
    assert first.header(b"content-length") == b"%d" % len(data) and second.header(b"content-length") is None
    names = {name for name, _ in first.headers}
    assert not names & {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"x-private",
                        b"host", b"upgrade"}, first.headers
    assert first.header(b"te") == b"trailers" and first.header(b"x-kept") == b"yes"
    assert (first.header(b":method"), first.header(b":scheme"), first.header(b":authority")) == \
        (b"POST", b"http", f"{HOST}:{e.https_port}".encode())
    assert first.header(b"x-forwarded-for") == b"127.0.0.1" and first.header(b"x-forwarded-proto") == b"https"
    assert {name for name, _ in second.headers} & {b"transfer-encoding", b"te"} == set()
    assert seen[b"/echo/empty"].body == b""
    for path in ("/echo/sized", "/echo/chunked"):
        assert wait_outcome(e, path)["outcome"] == "completed"
    e.assert_alive()


def test_trailers_for_a_client_that_takes_them_and_http10(edge, origin):
    e = h2_edge(edge, origin.port)
    with tls_socket(e) as tls:
        tls.sendall(f"GET /trailers HTTP/1.1\r\nHost: {HOST}\r\nTE: trailers\r\nConnection: close\r\n\r\n".encode())
        answer = read_all(tls)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"\r\ntransfer-encoding: chunked" in head.lower(), answer
    assert body == b"5\r\nhello\r\n0\r\nx-checksum: 5d41402a\r\ngrpc-status: 0\r\n\r\n", answer
    with tls_socket(e) as tls:  # no TE: trailers: the trailers are dropped, the body still ends well
        tls.sendall(f"GET /trailers HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        answer = read_all(tls)
    assert answer.partition(b"\r\n\r\n")[2] == b"5\r\nhello\r\n0\r\n\r\n", answer
    with tls_socket(e) as tls:  # HTTP/1.0: no chunks, the close ends the body
        tls.sendall(f"GET /trailers HTTP/1.0\r\nHost: {HOST}\r\nConnection: keep-alive\r\n\r\n".encode())
        answer = read_all(tls)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert body == b"hello" and b"connection: close" in head.lower() and b"transfer-encoding" not in head.lower()
    e.assert_alive()


def test_backend_reset_mid_response_truncates_and_is_logged(edge, origin):
    e = h2_edge(edge, origin.port)
    cut = curl(e.https_port, HOST, "/reset", "--http1.1", "-o", "/dev/null", cafile=local_ca(e))
    assert cut.returncode in (18, 56), cut  # curl: transfer closed with data outstanding / receive failure
    event = wait_outcome(e, "/reset")
    assert (event["outcome"], event["status"]) == ("backend_failed", 200)
    e.wait_log("backend response cut short")
    again = curl(e.https_port, HOST, "/after", "--http1.1", cafile=local_ca(e))  # the connection still serves
    assert split(again.stdout)[:3:2] == (200, "ok /after")
    e.assert_alive()


def test_client_leaving_mid_download_cancels_the_backend_stream(edge, origin):
    e = h2_edge(edge, origin.port)
    with tls_socket(e) as tls:
        tls.sendall(f"GET /endless HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        got = b""
        while len(got) < 300_000:
            got += tls.recv(65536)
        assert got.startswith(b"HTTP/1.1 200 OK")
    origin.wait_for(lambda: origin.resets, "the stream reset")
    assert origin.resets[0][1] == 8  # CANCEL
    event = wait_outcome(e, "/endless")
    assert event["outcome"] == "client_closed"
    # the backend connection stays, its stream freed: the next request goes on it
    again = curl(e.https_port, HOST, "/next", "--http1.1", cafile=local_ca(e))
    assert split(again.stdout)[:3:2] == (200, "ok /next") and origin.connections == 1
    e.assert_alive()


def test_backend_down_is_502_and_silent_backend_504(edge, origin):
    down = free_port()
    e = edge(h2_site(origin.port, backends={"down": {"servers": [f"http://127.0.0.1:{down}"], "protocol": "h2"}},
                     routes=[route("down.example.test", "down")]), timeouts=TIMEOUTS, log_format="json")
    refused = curl(e.https_port, "down.example.test", "/x", "--http1.1", cafile=local_ca(e))
    status, _, body = split(refused.stdout)
    assert (status, body) == (502, "the service did not answer\n"), refused
    assert wait_outcome(e, "/x")["outcome"] == "backend_failed"
    silent = curl(e.https_port, HOST, "/silent", "--http1.1", cafile=local_ca(e))
    status, _, body = split(silent.stdout)
    assert (status, body) == (504, "the service did not answer in time\n"), silent
    assert wait_outcome(e, "/silent")["outcome"] == "timeout"
    origin.wait_for(lambda: origin.resets, "the timed-out stream reset")
    e.assert_alive()


def test_websocket_to_an_h2_backend_is_501(edge, origin):
    e = h2_edge(edge, origin.port)
    answer = curl(e.https_port, HOST, "/ws", "--http1.1", "-H", "Connection: Upgrade", "-H", "Upgrade: websocket",
                  "-H", "Sec-WebSocket-Version: 13", "-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                  cafile=local_ca(e))
    assert split(answer.stdout)[0] == 501, answer
    e.wait_log("extended CONNECT (RFC 8441) to backends is not supported")
    assert not origin.requests
    e.assert_alive()


def test_50_mb_to_a_slow_reader_holds_the_backend_not_edge_memory(edge, start, tmp_path):
    size = 50 * 1024 * 1024
    files = tmp_path / "files"
    files.mkdir()
    block = os.urandom(1024 * 1024)
    with open(files / "blob", "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
    expected = hashlib.sha256((files / "blob").read_bytes()).hexdigest()
    port = free_port()
    nginx = start(Nginx, tmp_path, f"""
        server {{
          listen 127.0.0.1:{port} http2;
          root {files};
        }}
        """)
    wait_listening(port, proc=nginx.proc)
    e = h2_edge(edge, port)
    received, digest, growth = slow_download(e.https_port, HOST, local_ca(e), "/blob", size, e.pid)
    assert received == size and digest == expected
    assert growth < 16, f"edge RSS grew {growth:.1f} MiB for a 50 MiB download to a slow reader"
    e.assert_alive()


def test_an_upload_waits_for_the_backend_window_not_in_edge(edge, origin):
    """A backend that acknowledges nothing: edge sends its stream's window, then stops reading the client
    (what the client got out sits in socket buffers).  A body that stops moving for ``timeouts.idle`` is a
    408, and the stream is reset (a client that leaves meanwhile is not read, so it is noticed then too)."""
    e = edge(h2_site(origin.port), timeouts='inspect = "2s"\nconnect = "2s"\nidle = "3s"\nresponse = "3s"',
             log_format="json")
    before = rss_kib(e.pid)
    size = 64 * 1024 * 1024
    block = b"u" * 65536
    sent = 0
    with tls_socket(e) as tls:
        tls.sendall(f"POST /hold HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {size}\r\n\r\n".encode())
        tls.setblocking(False)
        while sent < size:
            _, writable, _ = select.select([], [tls], [], 2.0)
            if not writable:
                break  # nothing moved for 2 s: edge stopped reading
            try:
                sent += tls.send(block)
            except ssl.SSLWantWriteError:
                continue
        origin.wait_for(lambda: origin.received >= 65535, "the stream's window of body bytes")
        grown = (rss_kib(e.pid) - before) / 1024
        assert sent < 24 * 1024 * 1024, f"edge took {sent} bytes for a backend that read 64 KiB"
        assert origin.received <= 65535 and grown < 16, (origin.received, grown)
        origin.wait_for(lambda: origin.resets, "the stalled upload's stream reset")
    event = wait_outcome(e, "/hold")
    assert (event["outcome"], event["status"]) == ("timeout", 408)
    e.assert_alive()


def test_pipelined_requests_are_answered_in_order(edge, origin):
    e = h2_edge(edge, origin.port)
    with tls_socket(e) as tls:
        tls.sendall(f"GET /trailers HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
                    f"POST /echo HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                    f"GET /last HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        answer = read_all(tls)
    digest = hashlib.sha256(b"abc").hexdigest()
    assert answer.count(b"HTTP/1.1 200 OK") == 3, answer
    first, second, third = answer.split(b"HTTP/1.1 200 OK")[1:]
    assert first.endswith(b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert second.endswith(b"\r\n\r\n%x\r\n3 %s\r\n0\r\n\r\n" % (2 + len(digest), digest.encode()))
    assert third.endswith(b"\r\n\r\nok /last") and b"connection: close" in third
    assert origin.connections == 1
    e.assert_alive()


def test_backend_reset_before_the_response_is_502(edge, origin):
    e = h2_edge(edge, origin.port)
    answer = curl(e.https_port, HOST, "/refuse", "--http1.1", cafile=local_ca(e))
    assert split(answer.stdout)[:3:2] == (502, "the service did not answer\n"), answer
    assert wait_outcome(e, "/refuse")["outcome"] == "backend_failed"
    e.wait_log("the server reset the stream")
    e.assert_alive()


def test_http1_and_http2_requests_with_the_same_meaning_reach_the_h2_backend_alike(edge, origin):
    """One head builder for both front ends: the backend sees the same fields (the HTTP/1.1 hop-by-hop ones
    gone, its one cookie header as HTTP/2 sends a cookie)."""
    from tests.e2e.test_h2_server import H2Client

    e = h2_edge(edge, origin.port)
    authority = f"{HOST}:{e.https_port}".encode()
    with tls_socket(e) as tls:
        tls.sendall(b"POST /echo/same?q=1 HTTP/1.1\r\nHost: %s\r\nAccept: */*\r\nCookie: a=1\r\n"
                    b"Connection: close, x-hop\r\nX-Hop: 1\r\nTE: trailers\r\nX-Forwarded-For: 192.0.2.1\r\n"
                    b"Content-Length: 4\r\n\r\nbody" % authority)
        assert read_all(tls).startswith(b"HTTP/1.1 200 OK")
    with H2Client(e.https_port, local_ca(e)) as client:
        stream = client.request([(b":method", b"POST"), (b":scheme", b"https"), (b":authority", authority),
                                 (b":path", b"/echo/same?q=1"), (b"accept", b"*/*"), (b"cookie", b"a=1"),
                                 (b"te", b"trailers"), (b"x-forwarded-for", b"192.0.2.1"),
                                 (b"content-length", b"4")], b"body")
        assert client.response(stream).status == 200
    one, two = origin.wait_for(lambda: len(origin.requests) == 2 and origin.requests, "both requests")
    assert one.headers == two.headers and one.body == two.body == b"body", (one.headers, two.headers)
    e.assert_alive()
