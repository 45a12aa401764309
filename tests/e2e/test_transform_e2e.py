"""Route transforms end to end: header rules, HSTS, strip_prefix and compression, each tried over HTTP/1.1 and
HTTP/2 clients (curl) in front of nginx (HTTP/1.1, and h2c for the HTTP/2 backend kind).

What the backend got is read from nginx's access log; what the client got from curl, decoded by the real
``gzip`` and ``zstd`` tools.  A 200 MB compressible answer read slowly leaves edge's memory flat; hostile
clients (garbage Accept-Encoding, leaving mid-stream) and a backend that resets mid-stream leave it whole."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import subprocess
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import h2.events
import pytest
import zstandard

from tests.support import config
from tests.support.config import route
from tests.support.procs import free_port, rss_kib, wait_listening
from tests.support.servers import Nginx
from tests.e2e.test_h2_server import H2Client, get
from tests.e2e.test_terminate import local_ca, split

HOST = "app.example.test"
H2HOST = "h2.example.test"
WAIT = 30.0
TIMEOUTS = 'inspect = "2s"\nconnect = "2s"\nidle = "20s"\nresponse = "5s"'
CLIENTS = ["--http1.1", "--http2"]
HUGE = 200 * 1024 * 1024
LOG_FORMAT = "log_format seen '$request_uri|$http_x_forwarded_prefix|$http_x_added|$http_x_secret|$http_x_forwarded_proto';"


def text_file(path: Path, size: int) -> bytes:
    """Compressible text (hex of random bytes: about half its size once compressed)."""
    data = os.urandom(size // 2).hex().encode()[:size]
    path.write_bytes(data)
    return data


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("files")
    (root / "files").mkdir()
    text_file(root / "files" / "big.txt", 300_000)
    (root / "files" / "small.txt").write_bytes(b"tiny\n")
    (root / "files" / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(20_000))
    with open(root / "files" / "huge.txt", "wb") as f:  # 200 MB, written in pieces
        block = os.urandom(512 * 1024).hex().encode()
        for _ in range(HUGE // len(block)):
            f.write(block)
    return root


def nginx_site(start, tmp_path: Path, files: Path, http2: bool = False) -> Any:
    port = free_port()
    access = tmp_path / ("access-h2.log" if http2 else "access.log")
    server = start(Nginx, tmp_path, f"""
        {LOG_FORMAT}
        types {{ text/plain txt; image/png png; text/html html; }}
        server {{
          listen 127.0.0.1:{port}{' http2' if http2 else ''};
          root {files};
          access_log {access} seen;
          large_client_header_buffers 4 64k;
          location /nt/ {{ alias {files}/files/; add_header Cache-Control no-transform; }}
          location /hsts/ {{ alias {files}/files/; add_header Strict-Transport-Security "max-age=5";
                             add_header X-Remove-Me yes; }}
          location /chunked/ {{ alias {files}/files/; sub_filter_types text/plain; sub_filter 'zzzz' 'zzzz'; }}
        }}
        """, name="nginx-h2" if http2 else "nginx")
    wait_listening(port, proc=server.proc)
    server.port, server.access, server.files_root = port, access, files
    return server


@pytest.fixture
def site(start, tmp_path, files):
    return nginx_site(start, tmp_path, files)


ROUTE_RULES = {
    "compress": True,
    "hsts": "1y",
    "headers": {"request": {"set": {"X-Added": "yes"}, "remove": ["X-Secret"]},
                "response": {"set": {"X-Frame-Options": "DENY"}, "remove": ["X-Remove-Me", "Server"]}},
}


def transform_edge(edge, port: int, h2_port: int | None = None):
    routes = [route(HOST, paths=["/app"], strip_prefix="/app", headers={"request": {"set": {"X-Added": "prefixed"}}}),
              route(HOST, paths=["/private"], allow=["192.0.2.0/24"], **ROUTE_RULES)]
    backends = {}
    if h2_port:
        backends["web2"] = {"servers": [f"http://127.0.0.1:{h2_port}"], "protocol": "h2"}
        routes += [route(H2HOST, "web2", **ROUTE_RULES), route(H2HOST, "web2", paths=["/app"], strip_prefix="/app")]
    return edge(config.site(f"http://127.0.0.1:{port}", host=HOST, http="allow", **ROUTE_RULES, routes=routes,
                            backends=backends), timeouts=TIMEOUTS, log_format="json")


def curl(e, path: str, *extra: str, host: str = HOST, out: Path | None = None) -> subprocess.CompletedProcess:
    argv = ["curl", "-sS", "-i", "--max-time", "30", "--resolve", f"{host}:{e.https_port}:127.0.0.1",
            "--cacert", local_ca(e)]
    if out is not None:
        argv = [a for a in argv if a != "-i"] + ["-D", "-", "-o", str(out)]
    return subprocess.run(argv + list(extra) + [f"https://{host}:{e.https_port}{path}"],
                          capture_output=True, timeout=60)


def head_of(answer: subprocess.CompletedProcess) -> tuple[int, dict[str, str]]:
    status, headers, _ = split(answer.stdout.decode("latin-1"))
    return status, headers


def nginx_lines(site, count: int) -> list[list[str]]:
    """The last ``count`` lines of nginx's access log once it has them, split on |."""
    deadline = time.monotonic() + WAIT
    while True:
        lines = site.access.read_text().splitlines() if site.access.exists() else []
        if len(lines) >= count:
            return [line.split("|") for line in lines[-count:]]
        assert time.monotonic() < deadline, f"nginx logged {lines}"
        time.sleep(0.05)


# -- request rules and strip_prefix ---------------------------------------------------------------

@pytest.mark.parametrize("client", CLIENTS)
def test_request_rules_and_strip_prefix_reach_nginx(edge, site, files, client):
    e = transform_edge(edge, site.port)
    plain = curl(e, "/files/small.txt", client, "-H", "X-Secret: hunter2")
    stripped = curl(e, "/app/files/small.txt?q=1", client, "-H", "X-Forwarded-Prefix: /forged")
    bare = curl(e, "/app", client)
    assert head_of(plain)[0] == 200 and plain.stdout.endswith(b"tiny\n"), plain
    assert head_of(stripped)[0] == 200 and stripped.stdout.endswith(b"tiny\n"), stripped
    assert head_of(bare)[0] in (200, 403), bare  # nginx's own answer for its root directory
    first, second, third = nginx_lines(site, 3)
    assert first == ["/files/small.txt", "-", "yes", "-", "https"], first  # X-Secret removed, X-Added set
    assert second == ["/files/small.txt?q=1", "/app", "prefixed", "-", "https"], second
    assert third[:2] == ["/", "/app"], third
    e.assert_alive()


# -- response rules and HSTS -----------------------------------------------------------------------

@pytest.mark.parametrize("client", CLIENTS)
def test_response_rules_and_hsts_on_backend_answers_and_edges_own(edge, site, client):
    e = transform_edge(edge, site.port)
    status, headers = head_of(curl(e, "/hsts/small.txt", client))
    assert status == 200
    assert headers["strict-transport-security"] == "max-age=31536000", headers  # nginx's max-age=5 replaced
    assert headers["x-frame-options"] == "DENY" and "x-remove-me" not in headers and "server" not in headers, headers
    status, headers = head_of(curl(e, "/private/x", client))  # edge's own 403 on that route
    assert status == 403, headers
    assert headers["strict-transport-security"] == "max-age=31536000" and headers["x-frame-options"] == "DENY"
    e.assert_alive()


def test_no_hsts_on_plain_http(edge, site):
    e = transform_edge(edge, site.port)
    def plain(path: str) -> tuple[int, dict[str, str]]:
        return head_of(subprocess.run(["curl", "-sS", "-i", "--max-time", "20", "-H", f"Host: {HOST}",
                                       f"http://127.0.0.1:{e.http_port}{path}"], capture_output=True, timeout=30))

    status, headers = plain("/files/small.txt")
    assert status == 200 and "strict-transport-security" not in headers, headers
    assert headers["x-frame-options"] == "DENY", headers
    status, headers = plain("/hsts/small.txt")  # the backend's own is passed on as it is (browsers ignore it here)
    assert headers["strict-transport-security"] == "max-age=5", headers


# -- compression ----------------------------------------------------------------------------------

def decode(encoding: str, raw: Path) -> bytes:
    tool = {"gzip": ["gzip", "-dc"], "zstd": ["zstd", "-dcq"]}[encoding]
    return subprocess.run(tool + [str(raw)], capture_output=True, check=True, timeout=60).stdout


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("path", ["/files/big.txt", "/chunked/big.txt"], ids=["length", "chunked"])
def test_compressed_bodies_decode_to_the_original(edge, site, files, tmp_path, client, path):
    e = transform_edge(edge, site.port)
    original = (files / "files" / "big.txt").read_bytes()
    decoded = curl(e, path, client, "--compressed", out=tmp_path / "decoded")
    status, headers = head_of(decoded)
    assert status == 200 and headers["content-encoding"] == "zstd", headers  # curl offers zstd too: preferred
    assert (tmp_path / "decoded").read_bytes() == original
    for encoding in ("gzip", "zstd"):
        raw = tmp_path / f"raw.{encoding}"
        answer = curl(e, path, client, "-H", f"Accept-Encoding: {encoding}", out=raw)
        status, headers = head_of(answer)
        assert status == 200 and headers["content-encoding"] == encoding, headers
        assert "content-length" not in headers and "accept-encoding" in headers["vary"].lower(), headers
        assert headers.get("etag", "W/").startswith("W/"), headers
        assert raw.stat().st_size < len(original) * 0.7
        assert decode(encoding, raw) == original
    sent = [event["sent"] for event in e.events() if event.get("path") == path]
    assert sent and min(sent) < len(original) * 0.7, sent  # the access log counts compressed bytes
    e.assert_alive()


@pytest.mark.parametrize("client", CLIENTS)
def test_what_is_not_compressed(edge, site, client):
    e = transform_edge(edge, site.port)
    offer = ("-H", "Accept-Encoding: gzip, zstd")
    for path, extra in (("/files/img.png", ()), ("/nt/big.txt", ()), ("/files/small.txt", ()),
                        ("/files/big.txt", ("--head",))):
        answer = curl(e, path, client, *offer, *extra)
        status, headers = head_of(answer)
        assert status == 200 and "content-encoding" not in headers, (path, headers)
        assert "content-length" in headers, (path, headers)
    status, headers = head_of(curl(e, "/files/big.txt", client, "-H", "Accept-Encoding: identity"))
    assert status == 200 and "content-encoding" not in headers and headers["content-length"] == "300000"
    e.assert_alive()


@pytest.mark.parametrize("client", CLIENTS)
def test_http2_backend_gets_the_same_transforms(edge, start, site, files, tmp_path, client):
    site2 = nginx_site(start, tmp_path, files, http2=True)
    e = transform_edge(edge, site.port, site2.port)
    original = (files / "files" / "big.txt").read_bytes()
    for encoding in ("gzip", "zstd"):
        raw = tmp_path / f"raw.{encoding}"
        answer = curl(e, "/hsts/big.txt", client, "-H", f"Accept-Encoding: {encoding}", "-H", "X-Secret: s",
                      host=H2HOST, out=raw)
        status, headers = head_of(answer)
        assert status == 200 and headers["content-encoding"] == encoding, headers
        assert headers["strict-transport-security"] == "max-age=31536000" and headers["x-frame-options"] == "DENY"
        assert "x-remove-me" not in headers and "content-length" not in headers, headers
        assert decode(encoding, raw) == original
    stripped = curl(e, "/app/files/small.txt?z", client, host=H2HOST)
    assert stripped.stdout.endswith(b"tiny\n"), stripped
    lines = nginx_lines(site2, 3)
    assert lines[0] == ["/hsts/big.txt", "-", "yes", "-", "https"], lines
    assert lines[2][:2] == ["/files/small.txt?z", "/app"], lines
    e.assert_alive()


def tls_socket(e, host: str = HOST) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=local_ca(e))
    raw = socket.create_connection(("127.0.0.1", e.https_port), timeout=WAIT)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    return context.wrap_socket(raw, server_hostname=host)


def read_head(tls: ssl.SSLSocket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        piece = tls.recv(65536)
        assert piece, data
        data += piece
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def test_http10_client_gets_a_close_delimited_compressed_body(edge, site, files):
    e = transform_edge(edge, site.port)
    with tls_socket(e) as tls:
        tls.sendall(f"GET /chunked/big.txt HTTP/1.0\r\nHost: {HOST}\r\nAccept-Encoding: gzip\r\n\r\n".encode())
        head, body = read_head(tls)
        while True:
            piece = tls.recv(65536)
            if not piece:
                break
            body += piece
    assert head.startswith(b"HTTP/1.1 200") and b"content-encoding: gzip" in head.lower(), head
    assert b"transfer-encoding" not in head.lower() and b"content-length" not in head.lower(), head
    assert zlib.decompress(body, 31) == (files / "files" / "big.txt").read_bytes()


# -- 200 MB read slowly ---------------------------------------------------------------------------

def test_huge_compressed_answer_read_slowly_over_http1_keeps_memory_flat(edge, site):
    e = transform_edge(edge, site.port)
    before = peak = rss_kib(e.pid)
    expected = hashlib.sha256()
    with open(_huge(site), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            expected.update(block)
    digest, size = hashlib.sha256(), 0
    z = zstandard.ZstdDecompressor().decompressobj()
    with tls_socket(e) as tls:
        tls.sendall(f"GET /files/huge.txt HTTP/1.0\r\nHost: {HOST}\r\nAccept-Encoding: zstd\r\n\r\n".encode())
        head, body = read_head(tls)
        assert b"content-encoding: zstd" in head.lower(), head
        for _ in range(4):  # the reader stalls: the backend must be held back, not buffered
            time.sleep(0.5)
            peak = max(peak, rss_kib(e.pid))
        out = z.decompress(body)
        digest.update(out)
        size += len(out)
        next_sample = 0
        while True:
            piece = tls.recv(256 * 1024)
            if not piece:
                break
            out = z.decompress(piece)
            digest.update(out)
            size += len(out)
            if size >= next_sample:
                peak = max(peak, rss_kib(e.pid))
                next_sample += 16 * 1024 * 1024
                time.sleep(0.01)  # still a slow reader
    assert size == HUGE and digest.hexdigest() == expected.hexdigest()
    grown = (peak - before) / 1024
    assert grown < 32, f"edge grew by {grown:.1f} MiB"
    e.assert_alive()


def _huge(site) -> Path:
    return Path(site.files_root) / "files" / "huge.txt"


class DecodingClient(H2Client):
    """An HTTP/2 client that decodes a gzip body as it comes instead of keeping it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.z = zlib.decompressobj(31)
        self.digest = hashlib.sha256()
        self.size = 0

    def _event(self, event: Any) -> None:
        if isinstance(event, h2.events.DataReceived):
            out = self.z.decompress(event.data)
            self.digest.update(out)
            self.size += len(out)
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            return
        super()._event(event)


def test_huge_compressed_answer_read_slowly_over_http2_keeps_memory_flat(edge, site):
    e = transform_edge(edge, site.port)
    expected = hashlib.sha256()
    with open(_huge(site), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            expected.update(block)
    before = peak = rss_kib(e.pid)
    with DecodingClient(e.https_port, local_ca(e), read_size=65536, rcvbuf=65536) as c:
        stream = c.request(get("/files/huge.txt", (b"accept-encoding", b"gzip")))
        c.wait(lambda: c.streams[stream].status, "the answer's head")
        assert dict(c.streams[stream].headers)[b"content-encoding"] == b"gzip"
        for _ in range(4):
            time.sleep(0.5)
            peak = max(peak, rss_kib(e.pid))
        deadline = time.monotonic() + 300
        next_sample = 0
        while not c.streams[stream].done:
            assert time.monotonic() < deadline and not c.eof, "the answer did not end"
            c.pump(5)
            if c.size >= next_sample:
                peak = max(peak, rss_kib(e.pid))
                next_sample += 16 * 1024 * 1024
                time.sleep(0.01)
        assert c.streams[stream].reset is None
    assert c.size == HUGE and c.digest.hexdigest() == expected.hexdigest()
    grown = (peak - before) / 1024
    assert grown < 32, f"edge grew by {grown:.1f} MiB"
    e.assert_alive()


# -- hostile ----------------------------------------------------------------------------------------

GARBAGE = ["gzip;q=", ";;;,,,", "zstd;q=nan, gzip;q=inf", "gzip;q=-1", "\x01gzip", "*;q=1e999",
            ", ".join(f"x{i};q=0.{i % 10}" for i in range(1500)) + ", gzip", "gzip;" + "q=1;" * 2000]


@pytest.mark.parametrize("client", CLIENTS)
def test_garbage_accept_encoding_gets_a_valid_answer(edge, site, files, tmp_path, client):
    e = transform_edge(edge, site.port)
    original = (files / "files" / "big.txt").read_bytes()
    for value in GARBAGE:
        raw = tmp_path / "raw"
        answer = curl(e, "/files/big.txt", client, "-H", f"Accept-Encoding: {value}", out=raw)
        if not answer.stdout:  # curl refused to send a control character: nothing to check
            continue
        status, headers = head_of(answer)
        if value.startswith("\x01"):  # a control character in a field: refused before any route
            assert status in (400, 200 if client == "--http2" else 400), headers
            if status == 400:
                continue
        assert status == 200, (value[:40], headers)
        encoding = headers.get("content-encoding")
        body = raw.read_bytes()
        assert (body if encoding is None else decode(encoding, raw)) == original, (value[:40], encoding)
    e.assert_alive()


def test_clients_that_leave_mid_compressed_stream(edge, site):
    e = transform_edge(edge, site.port)
    with tls_socket(e) as tls:
        tls.sendall(f"GET /files/huge.txt HTTP/1.1\r\nHost: {HOST}\r\nAccept-Encoding: gzip\r\n\r\n".encode())
        head, _ = read_head(tls)
        assert b"transfer-encoding: chunked" in head.lower(), head
        tls.recv(65536)
    with H2Client(e.https_port, local_ca(e)) as c:
        stream = c.request(get("/files/huge.txt", (b"accept-encoding", b"zstd")))
        c.wait(lambda: c.streams[stream].body, "the first compressed bytes")
        c.reset(stream)
        follow = c.response(c.request(get("/files/small.txt")))  # the connection goes on
        assert (follow.status, bytes(follow.body)) == (200, b"tiny\n")
    deadline = time.monotonic() + WAIT
    while len([ev for ev in e.events() if ev.get("path") == "/files/huge.txt"]) < 2:
        assert time.monotonic() < deadline, e.log()
        time.sleep(0.05)
    h1, h2 = [ev["outcome"] for ev in e.events() if ev.get("path") == "/files/huge.txt"]
    # (HTTP/1.1: Twisted stops the backend connection, the client's producer, as the client's connection
    # is lost, which edge sees first and logs as backend_failed; the same without compression.)
    assert h1 in ("client_closed", "backend_failed") and h2 == "client_aborted", (h1, h2)
    e.assert_alive()  # the start fixture then checks that every descriptor came back


class ResettingBackend:
    """An HTTP/1.1 backend that sends a text answer's head and part of its body, then resets the connection."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    piece = conn.recv(65536)
                    if not piece:
                        break
                    data += piece
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000000\r\n\r\n"
                             + b"abcdefgh" * 20000)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    def stop(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept
        except OSError:
            pass
        self.sock.close()
        self.thread.join(10)


def test_backend_that_resets_mid_compressed_stream(edge, start):
    backend = start(ResettingBackend)
    e = edge(config.site(f"http://127.0.0.1:{backend.port}", host=HOST, compress=True), timeouts=TIMEOUTS,
             log_format="json")
    with tls_socket(e) as tls:
        tls.sendall(f"GET /cut HTTP/1.1\r\nHost: {HOST}\r\nAccept-Encoding: gzip\r\n\r\n".encode())
        head, body = read_head(tls)
        while True:
            try:
                piece = tls.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                break
            if not piece:
                break
            body += piece
    assert b"content-encoding: gzip" in head.lower(), head
    assert not body.endswith(b"0\r\n\r\n"), "a cut-short answer must not look complete"
    with H2Client(e.https_port, local_ca(e)) as c:
        response = c.response(c.request(get("/cut", (b"accept-encoding", b"zstd"))))
    assert response.status == 200 and response.reset is not None, response
    e.assert_alive()
