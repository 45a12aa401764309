"""The terminated HTTP path under attack: smuggling, false upgrades, leaked descriptors, closes that never end.

Each case is a raw request over TLS (Python ``ssl``) or plain TCP to a running
edge, with a real nginx origin whose access log shows what it received:
one request in, one request out, or nothing at all.  Descriptor counts are
read from ``/proc/PID/fd`` of the edge process.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from pathlib import Path

import pytest

from tests.support.procs import free_port, wait_listening
from tests.support.servers import Nginx
from tests.e2e.test_http_proxy import one_route
from tests.e2e.test_terminate import local_ca

HOST = "app.example.test"


@pytest.fixture
def origin(start, tmp_path):
    """nginx logging every request it receives (line, length, framing headers) to ``origin.access``;
    ``origin.once`` closes every connection after one response (no pooled connection to reuse)."""
    port, once = free_port(), free_port()
    files = tmp_path / "www"
    files.mkdir()
    (files / "page.txt").write_text("page\n")
    (files / "mid.bin").write_bytes(b"m" * 30_000)  # arrives from nginx in one read: answered whole
    with open(files / "big.bin", "wb") as f:
        f.truncate(50_000_000)
    access = tmp_path / "origin-access.log"
    server = start(Nginx, tmp_path, f"""
        log_format seen '"$request" len=$request_length cl=$http_content_length te=$http_transfer_encoding '
                        'host=$http_host';
        server {{
          listen 127.0.0.1:{port};
          root {files};
          access_log {access} seen;
          client_max_body_size 10m;
          location = /ws {{ return 200 "no upgrade here\\n"; }}
          location / {{ error_page 405 =200 /page.txt; }}
        }}
        server {{
          listen 127.0.0.1:{once};
          access_log {access} seen;
          keepalive_timeout 0;
          location / {{ return 200 "once\\n"; }}
        }}
        """)
    wait_listening(port, proc=server.proc)
    server.port, server.once, server.access = port, once, access
    return server


def origin_lines(origin) -> list[str]:
    return origin.access.read_text().splitlines() if origin.access.exists() else []


def wait_origin(origin, text: str, timeout: float = 10) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = origin_lines(origin)
        if any(text in line for line in lines):
            return lines
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never reached the origin: {origin_lines(origin)}")


def tls_client(port: int, cafile: str, alpn: str = "http/1.1", timeout: float = 10) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols([alpn])
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return context.wrap_socket(raw, server_hostname=HOST)


def read_all(sock: socket.socket) -> bytes:
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except (ConnectionResetError, ssl.SSLError, socket.timeout):
        pass
    return answer


def exchange(e, data: bytes, door: str = "https") -> bytes:
    """Send ``data`` on a new connection and read until the edge closes it."""
    if door == "https":
        sock = tls_client(e.https_port, local_ca(e))
    else:
        sock = socket.create_connection(("127.0.0.1", e.http_port), timeout=10)
    with sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass
        return read_all(sock)


def canary(e, origin, door: str = "https") -> list[str]:
    """A plain request on a new connection; returns the origin's log once it has arrived (so all before it has)."""
    name = f"/canary-{time.monotonic_ns()}"
    answer = exchange(e, f"GET {name} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode(), door)
    assert answer.startswith(b"HTTP/1.1 "), answer
    return wait_origin(origin, name)


def fds(pid: int) -> list[str]:
    out = []
    for entry in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{entry}"))
        except OSError:
            pass
    return out


def wait_fds(pid: int, baseline: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(fds(pid)) <= baseline:
            return
        time.sleep(0.1)
    held = fds(pid)
    raise AssertionError(f"edge holds {len(held)} descriptors, baseline {baseline}: "
                         f"{sum(t.startswith('socket:') for t in held)} sockets")


def warm_baseline(e, origin) -> int:
    """The edge's descriptors after one served request (its kept-alive backend connection included)."""
    canary(e, origin)
    return len(fds(e.pid))


# -- 1. request smuggling through Connection -----------------------------------------------------

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: app.example.test\r\n\r\n"
CONNECTION_CASES = {
    "content-length": b"POST /first HTTP/1.1\r\nHost: app.example.test\r\nConnection: content-length\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(SMUGGLED), SMUGGLED),
    "transfer-encoding": b"POST /first HTTP/1.1\r\nHost: app.example.test\r\nConnection: keep-alive, Transfer-Encoding\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED),
    "host": b"GET /first HTTP/1.1\r\nHost: app.example.test\r\nConnection: host\r\n\r\n",
}


@pytest.mark.parametrize("door", ["https", "http-allow", "workers"])
@pytest.mark.parametrize("field", sorted(CONNECTION_CASES))
def test_connection_header_cannot_remove_framing_or_host(edge, origin, field, door):
    e = edge(one_route(f'["http://127.0.0.1:{origin.port}"]', extra_route='http = "allow"' if door == "http-allow" else ""),
             workers=2 if door == "workers" else 1)
    plain = "http" if door == "http-allow" else "https"
    for _ in range(2 if door == "workers" else 1):  # with two workers, each connection may meet either
        answer = exchange(e, CONNECTION_CASES[field], plain)
        assert answer.startswith(b"HTTP/1.1 400 "), answer
    lines = canary(e, origin, plain)
    assert not [line for line in lines if "/first" in line or "/smuggled" in line], lines
    e.assert_alive()


def test_connection_may_still_name_ordinary_fields(edge, origin):
    e = edge(one_route(f'["http://127.0.0.1:{origin.port}"]'))
    answer = exchange(e, b"GET /page.txt HTTP/1.1\r\nHost: app.example.test\r\nConnection: close, X-Trace\r\n"
                         b"X-Trace: 1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer


@pytest.mark.parametrize("codings", [b"Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip",
                                     b"Transfer-Encoding: chunked, chunked", b"Transfer-Encoding: gzip",
                                     b"Transfer-Encoding: \x0bchunked", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
                                     b"Transfer-Encoding: gzip, chunked", b"Content-Length: 5\r\nContent-Length: 5"])
def test_transfer_codings_the_backend_could_read_otherwise_are_refused(edge, origin, codings):
    e = edge(one_route(f'["http://127.0.0.1:{origin.port}"]'))
    answer = exchange(e, b"POST /te HTTP/1.1\r\nHost: app.example.test\r\n%s\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
                      % (codings, len(SMUGGLED), SMUGGLED))
    assert answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 501 ")), answer
    lines = canary(e, origin)
    assert not [line for line in lines if "/te " in line or "/smuggled" in line], lines


# -- 2. an upgrade the backend did not accept is no tunnel ---------------------------------------

def test_upgrade_answered_200_stays_http(edge, origin):
    e = edge(one_route(f'["http://127.0.0.1:{origin.port}"]'))
    with tls_client(e.https_port, local_ca(e)) as sock:
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: app.example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                     b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        first = b""
        while b"no upgrade here\n" not in first:
            chunk = sock.recv(65536)
            assert chunk, first
            first += chunk
        assert first.startswith(b"HTTP/1.1 200 "), first
        # Still HTTP: a request for another host is the edge's to refuse, never the backend's to see.
        sock.sendall(b"GET /other-host HTTP/1.1\r\nHost: nowhere.example.test\r\n\r\n")
        second = b""
        while b"\r\n\r\n" not in second:
            chunk = sock.recv(65536)
            assert chunk, second
            second += chunk
        assert second.startswith(b"HTTP/1.1 421 ") or second.startswith(b"HTTP/1.1 404 "), second
    lines = canary(e, origin)
    assert not [line for line in lines if "/other-host" in line], lines


# -- 3. error answers release their descriptors ------------------------------------------------

@pytest.mark.parametrize("server", ["port", "once"])
def test_bad_requests_with_closing_clients_leak_nothing(edge, origin, server):
    e = edge(one_route(f'["http://127.0.0.1:{getattr(origin, server)}"]'))
    baseline = warm_baseline(e, origin)
    bad = b"POST /up HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n"
    context = ssl.create_default_context(cafile=local_ca(e))
    context.set_alpn_protocols(["http/1.1"])
    for i in range(300):
        with socket.create_connection(("127.0.0.1", e.https_port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname=HOST) as sock:
                sock.sendall(bad)  # and close at once, reading nothing
        if i % 100 == 0:
            with socket.create_connection(("127.0.0.1", e.http_port), timeout=10) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 3\r\n\r\nab")
    wait_fds(e.pid, baseline, timeout=10)
    e.assert_alive()


def test_bodies_to_a_down_backend_leak_nothing(edge, origin):
    down = free_port()
    e = edge(one_route(f'["http://127.0.0.1:{down}"]'))
    baseline = len(fds(e.pid))
    for i in range(50):
        answer = exchange(e, b"POST /form HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 11\r\n\r\nhello=world")
        assert answer.startswith(b"HTTP/1.1 502 "), answer
        assert b"Connection: close" in answer
    wait_fds(e.pid, baseline, timeout=10)
    e.assert_alive()


# -- 4. connections the edge closes are released even if the client never answers --------------

@pytest.mark.parametrize("alpn", ["http/1.1", "h2"])
def test_silent_tls_connections_are_released_after_the_inspect_timeout(edge, origin, alpn):
    e = edge(one_route(f'["http://127.0.0.1:{origin.port}"]'), timeouts='inspect = "1s"\nconnect = "2s"\nidle = "60s"')
    baseline = len(fds(e.pid))
    held = [tls_client(e.https_port, local_ca(e), alpn) for _ in range(200)]  # silent, never read, never close
    try:
        assert len(fds(e.pid)) >= baseline + 200
        wait_fds(e.pid, baseline, timeout=8)
    finally:
        for sock in held:
            sock.close()
    e.assert_alive()


def test_slowloris_connections_are_released(edge, origin):
    e = edge(one_route(f'["http://127.0.0.1:{origin.port}"]'), timeouts='inspect = "1s"\nconnect = "2s"\nidle = "60s"')
    baseline = len(fds(e.pid))
    clients = [tls_client(e.https_port, local_ca(e)) for _ in range(100)]
    for sock in clients:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: app.example.test\r\n")
        sock.setblocking(False)
    deadline = time.monotonic() + 10
    try:
        while len(fds(e.pid)) > baseline:  # one more header line a tick, never a read, for as long as the edge holds on
            assert time.monotonic() < deadline, f"edge still holds {len(fds(e.pid)) - baseline} connections"
            for sock in clients:
                try:
                    sock.send(b"X-a: b\r\n")
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError, OSError):
                    pass
            time.sleep(0.2)
    finally:
        for sock in clients:
            sock.close()
    e.assert_alive()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("door", ["https", "http-allow"])
def test_pipelining_client_that_reads_nothing_holds_little(edge, origin, door):
    """3,000 pipelined requests for 30 kB each (90 MB of answers), none read for a while: the edge
    starts the next request only once the client has caught up, so its memory stays put; then every
    answer arrives, in order."""
    e = edge(one_route(f'["http://127.0.0.1:{origin.port}"]', extra_route='http = "allow"'))
    canary(e, origin)
    before = rss_mib(e.pid)
    count = 3000
    request = b"GET /mid.bin HTTP/1.1\r\nHost: app.example.test\r\n\r\n"
    sock = tls_client(e.https_port, local_ca(e)) if door == "https" else \
        socket.create_connection(("127.0.0.1", e.http_port), timeout=10)
    with sock:
        sock.sendall(request * count)
        deadline = time.monotonic() + 4  # the edge held 100 MB a second before the fix: far past the bound by now
        peak = before
        while time.monotonic() < deadline:
            peak = max(peak, rss_mib(e.pid))
            assert peak - before < 40, f"edge RSS grew {peak - before:.0f} MiB for a client that reads nothing"
            time.sleep(0.1)
        served_while_stalled = sum("/mid.bin" in line for line in origin_lines(origin))
        assert served_while_stalled < count // 2, served_while_stalled
        answers = 0
        data = b""
        while answers < count:  # now read it all
            chunk = sock.recv(1 << 20)
            assert chunk, f"closed after {answers} answers"
            data += chunk
            while True:
                end = data.find(b"\r\n\r\n")
                if end < 0 or len(data) < end + 4 + 30_000:
                    break
                assert data.startswith(b"HTTP/1.1 200 "), data[:100]
                data = data[end + 4 + 30_000:]
                answers += 1
    e.assert_alive()


def test_a_download_that_stops_moving_is_cut_after_the_idle_timeout(edge, origin):
    """A client that requests 50 MB and reads none of it is cut once nothing has moved for timeouts.idle."""
    e = edge(one_route(f'["http://127.0.0.1:{origin.port}"]'), timeouts='inspect = "2s"\nconnect = "2s"\nidle = "2s"')
    canary(e, origin)
    baseline = len(fds(e.pid))
    clients = [tls_client(e.https_port, local_ca(e)) for _ in range(20)]
    try:
        for sock in clients:
            sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
        assert len(fds(e.pid)) > baseline
        wait_fds(e.pid, baseline, timeout=12)  # idle 2 s, checked on a timer; then aborted, nothing waited for
    finally:
        for sock in clients:
            sock.close()
    e.wait_log("timeout: idle")
    e.assert_alive()


def test_closed_answers_reach_a_client_that_keeps_sending(edge, origin):
    """Closing promptly must not cost a client that is still sending its answer: the edge lingers (reads and
    discards) rather than resetting the connection, so the 400 or 413 arrives every time."""
    e = edge(one_route(f'["http://127.0.0.1:{origin.port}"]', extra_route='max_body = "64k"'))
    heads = [b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
             b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n100000\r\n"]
    for i in range(20):
        with tls_client(e.https_port, local_ca(e)) as sock:
            sock.sendall(heads[i % 2])
            try:
                sock.sendall(b"x" * 4_000_000)  # uploads on, as curl does
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                pass  # the edge closed its side: fine, as long as the answer can still be read
            answer = read_all(sock)
        assert answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 413 ")), (i, answer)


# -- 5. smaller ones -----------------------------------------------------------------------------

@pytest.mark.parametrize("length", [b"\xb2", b"1\xb9", "\u0661".encode(), b"1_0", b"+3", b"3 3", b"0x3", b"-1",
                                    b"99999999999999999999999"])
def test_content_length_must_be_ascii_digits(edge, origin, length):
    e = edge(one_route(f'["http://127.0.0.1:{origin.port}"]'))
    answer = exchange(e, b"POST /cl HTTP/1.1\r\nHost: %s\r\nContent-Length: %s\r\n\r\nabc" % (HOST.encode(), length))
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    lines = canary(e, origin)
    assert not [line for line in lines if "/cl " in line], lines
    e.assert_alive()


def test_query_with_a_url_is_relayed_exactly(edge, origin):
    e = edge(one_route(f'["http://127.0.0.1:{origin.port}"]'))
    target = "/page.txt?next=https://x.test/other&b=%2F"
    answer = exchange(e, f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"page\n"), answer
    lines = wait_origin(origin, target)
    assert f'"GET {target} HTTP/1.1"' in lines[-1], lines


def test_path_routing_ignores_a_url_in_the_query(edge, origin, tmp_path):
    e = edge(one_route(f'["http://127.0.0.1:{origin.port}"]') + """
    [[routes]]
    hosts = ["app.example.test"]
    paths = ["/other"]
    tls = "edge"
    backend = "nowhere"
    [backends.nowhere]
    servers = ["http://127.0.0.1:%d"]
    """ % free_port())
    answer = exchange(e, f"GET /page.txt?next=https://x.test/other HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 200 "), answer


@pytest.mark.parametrize("method, path", [("GET", "/a b"), ("GET", "/a\x01"), ("G T", "/"), ("GET\x00", "/"),
                                          ("GET", "/a\tb"), ("GET", "noslash")])
def test_http2_pseudo_headers_are_validated(edge, origin, method, path):
    import h2.config
    import h2.connection
    import h2.events

    e = edge(one_route(f'["http://127.0.0.1:{origin.port}"]'))
    with tls_client(e.https_port, local_ca(e), "h2") as sock:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False))
        conn.initiate_connection()
        conn.send_headers(1, [(":method", method), (":path", path), (":scheme", "https"), (":authority", HOST)],
                          end_stream=True)
        sock.sendall(conn.data_to_send())
        status = None
        deadline = time.monotonic() + 10
        while status is None and time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers)[b":status"]
                elif isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    status = b"reset"
            sock.sendall(conn.data_to_send())
    assert status in (b"400", b"reset"), status
    lines = canary(e, origin)
    assert len([line for line in lines if "canary" not in line]) == 0, lines
    e.assert_alive()


def test_a_client_that_half_closes_after_its_requests_gets_its_answers(edge, origin):
    """``printf 'GET ...' | nc -N``: the requests, then a TCP half-close; every answer comes, then the close."""
    e = edge(one_route(f'["http://127.0.0.1:{origin.port}"]', extra_route='http = "allow"'))
    for count in (1, 3):
        with socket.create_connection(("127.0.0.1", e.http_port), timeout=10) as sock:
            sock.sendall(b"GET /page.txt HTTP/1.1\r\nHost: app.example.test\r\n\r\n" * count)
            sock.shutdown(socket.SHUT_WR)
            answer = read_all(sock)
        assert answer.count(b"HTTP/1.1 200 ") == count and answer.endswith(b"page\n"), answer
    with socket.create_connection(("127.0.0.1", e.http_port), timeout=10) as sock:  # a head cut short: closed
        sock.sendall(b"GET /page.txt HTTP/1.1\r\nHost: app.exa")
        sock.shutdown(socket.SHUT_WR)
        assert read_all(sock) == b""
    e.assert_alive()


def test_an_upgrade_with_a_body_or_from_http10_is_an_ordinary_request(edge, origin):
    """WebSocket handshakes have no body and are HTTP/1.1 with `Connection: upgrade`; anything else is not
    upgraded, so a 101 could never turn a half-sent body into tunnel bytes."""
    e = edge(one_route(f'["http://127.0.0.1:{origin.port}"]'))
    for request in (b"POST /ws HTTP/1.1\r\nHost: app.example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                    b"Content-Length: 5\r\n\r\nhello",
                    b"GET /ws HTTP/1.0\r\nHost: app.example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
                    b"GET /ws HTTP/1.1\r\nHost: app.example.test\r\nUpgrade: websocket\r\nConnection: close\r\n\r\n"):
        answer = exchange(e, request if b"close" in request or b"1.0" in request else request.replace(
            b"Connection: Upgrade", b"Connection: Upgrade, close"))
        assert answer.startswith(b"HTTP/1.1 200 "), answer
    e.assert_alive()


def test_absolute_form_targets_become_origin_form(edge, origin):
    e = edge(one_route(f'["http://127.0.0.1:{origin.port}"]'))
    for target, seen in (("Http://app.example.test/page.txt?a=1", "/page.txt?a=1"),
                         ("https://app.example.test?q=2", "/?q=2")):
        answer = exchange(e, f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        assert answer.startswith(b"HTTP/1.1 "), answer
        lines = wait_origin(origin, f'"GET {seen} HTTP/1.1"')
        assert lines

