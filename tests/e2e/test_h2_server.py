"""HTTP/2 clients of terminated routes, end to end: what the backend receives, what the client gets.

Every test runs the real edge (``twist edge``, local issuer TLS, route
``app.example.test``) on loopback in front of :class:`Recorder`, a raw
HTTP/1.1 backend written here that keeps the exact bytes of every request
it receives.  Clients are Python ``ssl`` sockets: raw bytes for HTTP/1.1
(ALPN ``http/1.1``), the ``h2`` library for HTTP/2 (ALPN ``h2``).

1. The property (:func:`test_http1_and_http2_requests_with_the_same_meaning_reach_the_backend_alike`):
   for a generated request (method, target, 0-6 extra headers, an optional
   body sent with Content-Length, optional forwarding headers from the
   client) sent once over HTTP/1.1 and once over HTTP/2, the backend
   receives the same request: request line, Host, the other header lines
   (as a multiset of (lower-cased name, value), the values of one name in
   the same order), the body bytes and the forwarding headers edge added.

   The differences that are intended, and the only ones normalised away:

   * header names: HTTP/1.1 names are relayed as the client spelled them
     (``X-Foo``), HTTP/2 ones are lower case by the protocol; compared
     lower-cased;
   * header order across names: edge writes ``host`` first and re-adds
     ``content-length`` after the other fields for an HTTP/2 client (RFC
     9113 8.3.1 has no Host line, and edge checks and rewrites the length
     itself), while an HTTP/1.1 request's lines keep their places; the
     relative order of different header names carries no meaning (RFC 9110
     5.3), that of the values of one name does, and is compared;
   * whitespace around values: the recorder strips it (RFC 9110 5.5 OWS),
     as any HTTP/1.1 parser does.

2. Specific HTTP/2 behaviours, one test each: cookie crumbs joined, Host
   against ``:authority``, request bodies streamed (not spooled), ``expect:
   100-continue``, bodiless answers (HEAD, 204, 304), chunked answers
   de-chunked, a 5 MB answer read through a small window, trailers and ``te:
   trailers`` from the client, and one access-log line per request with its
   outcome.

Waits are bounded polls (a deadline, then a failure that says what was
seen); nothing sleeps and then asserts.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import socket
import ssl
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import pytest
from h2.errors import ErrorCodes
from hypothesis import Phase, given, settings, strategies as st

from tests.support.edge import Edge
from tests.e2e.test_http_proxy import one_route
from tests.e2e.test_terminate import local_ca

HOST = "app.example.test"
CLIENT = "127.0.0.1"
TIMEOUTS = 'inspect = "2s"\nconnect = "2s"\nidle = "10s"\nresponse = "5s"'
WAIT = 5.0  # seconds: any single bounded wait (an answer, a backend read, a log line)
BIG_SIZE = 5 * 1024 * 1024
BIG_BODY = random.Random(20240611).randbytes(BIG_SIZE)
BIG_SHA = hashlib.sha256(BIG_BODY).hexdigest()
# The chunked answer the recorder gives to ``x-answer: chunked``: (size line, data) pieces, written apart.
CHUNKS = [(b"5", b"hello"), (b"1;ext=1", b" "), (b"A", b"0123456789"), (b"0000000003", b"\r\n!"),
          (b"400", bytes(range(256)) * 4)]
CHUNKED_BODY = b"".join(data for _, data in CHUNKS)
RUN = f"{random.randrange(16**6):06x}"  # marks this run's log lines
_MARKS = itertools.count()


# -- the backend --------------------------------------------------------------------------------------------

class Malformed(AssertionError):
    """The recorder received bytes that are not a well-formed HTTP/1.1 request (edge's fault)."""


@dataclass
class Seen:
    """One request as the recorder received it."""

    connection: int  # which backend connection (edge's pool reuses them)
    head: bytes  # request line and header lines, up to and including the blank line, as received
    raw_body: bytearray = field(default_factory=bytearray)  # the body bytes as received (chunked framing kept)
    chunks: list[bytes] = field(default_factory=list)  # a chunked body's chunk data, in order
    chunked: bool = False
    complete: bool = False

    @property
    def request_line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]

    @property
    def method(self) -> bytes:
        return self.request_line.split(b" ", 1)[0]

    @property
    def fields(self) -> list[tuple[bytes, bytes]]:
        """Every header line as (lower-cased name, value without surrounding whitespace), in order."""
        out = []
        for line in self.head.split(b"\r\n")[1:]:
            if not line:
                continue
            name, _, value = line.partition(b":")
            out.append((name.lower(), value.strip(b" \t")))
        return out

    def values(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.fields if n == name]

    @property
    def body(self) -> bytes:
        """The body the request carries (de-chunked)."""
        return b"".join(self.chunks) if self.chunked else bytes(self.raw_body)


class Recorder:
    """A raw HTTP/1.1 backend on 127.0.0.1 that records every request exactly as its bytes arrived.

    A stand-in, not a real server, because no real server exposes the raw bytes it received: nginx and
    the like log what they parsed (names folded, repeated headers merged, a chunked body de-chunked),
    and these tests compare the bytes edge sent, chunk framing included, and watch a body arrive piece
    by piece.  It parses just enough HTTP/1.1 to find where each request ends (Content-Length, or
    chunked, which it decodes strictly: a malformed chunk is recorded as an error) and answers
    ``HTTP/1.1 200 OK``, ``Content-Length: 2``, ``ok`` (no body for HEAD), keeping the connection alive.
    A request header ``x-answer`` asks for another answer: ``204``, ``304``, ``chunked`` (:data:`CHUNKS`,
    each piece its own write) or ``big`` (:data:`BIG_BODY`, 5 MB with a Content-Length).

    One thread per connection; every record is guarded by ``cond``, which is notified on every change.
    """

    def __init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.cond = threading.Condition()
        self.seen: list[Seen] = []
        self.errors: list[str] = []
        self.connections: dict[int, socket.socket] = {}
        self.stopping = False
        self.threads: list[threading.Thread] = []
        self.accepter = threading.Thread(target=self._accept, name="recorder-accept", daemon=True)
        self.accepter.start()

    # -- serving --------------------------------------------------------------------------------

    def _accept(self) -> None:
        number = 0
        while not self.stopping:
            try:
                sock, _ = self.listener.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            number += 1
            with self.cond:
                if self.stopping:
                    sock.close()
                    return
                self.connections[number] = sock
            thread = threading.Thread(target=self._serve, args=(sock, number), name=f"recorder-{number}", daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket, number: int) -> None:
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = sock.recv(65536)
                    if not data:
                        if buffer:
                            self._error(f"connection {number} closed inside a request head: {buffer[:300]!r}")
                        return
                    buffer += data
                end = buffer.index(b"\r\n\r\n") + 4
                seen = Seen(number, buffer[:end])
                buffer = buffer[end:]
                lengths = seen.values(b"content-length")
                codings = seen.values(b"transfer-encoding")
                if codings and lengths:
                    self._error(f"both Content-Length and Transfer-Encoding: {seen.head!r}")
                with self.cond:
                    self.seen.append(seen)
                    self.cond.notify_all()
                if codings:
                    if [c.lower() for c in codings] != [b"chunked"]:
                        self._error(f"unexpected Transfer-Encoding {codings!r}")
                        return
                    seen.chunked = True
                    buffer = self._read_chunked(sock, seen, buffer)
                elif lengths:
                    if len(lengths) != 1 or not lengths[0].isdigit():
                        self._error(f"bad Content-Length {lengths!r}")
                        return
                    buffer = self._read_length(sock, seen, buffer, int(lengths[0]))
                if buffer is None:
                    self._error(f"connection {number} closed inside a request body: {seen.head[:300]!r}")
                    return
                with self.cond:
                    seen.complete = True
                    self.cond.notify_all()
                self._answer(sock, seen)
        except Malformed as e:
            self._error(f"connection {number}: {e}")
        except OSError:
            pass  # edge closed or reset the connection (a client that left, the end of a test)
        finally:
            with self.cond:
                self.connections.pop(number, None)
                self.cond.notify_all()
            sock.close()

    def _read_length(self, sock: socket.socket, seen: Seen, buffer: bytes, length: int) -> bytes | None:
        while True:
            take = buffer[: length - len(seen.raw_body)]
            if take:
                with self.cond:
                    seen.raw_body += take
                    self.cond.notify_all()
                buffer = buffer[len(take):]
            if len(seen.raw_body) == length:
                return buffer
            data = sock.recv(65536)
            if not data:
                return None
            buffer += data

    def _read_chunked(self, sock: socket.socket, seen: Seen, buffer: bytes) -> bytes | None:
        """Follow a chunked body, strictly, recording each chunk as soon as it is whole."""
        def more() -> bool:
            nonlocal buffer
            data = sock.recv(65536)
            if not data:
                return False
            buffer += data
            return True

        while True:
            while b"\r\n" not in buffer:
                if not more():
                    return None
            line, _, _ = buffer.partition(b"\r\n")
            size_text = line.split(b";", 1)[0]
            if not size_text or any(c not in b"0123456789abcdefABCDEF" for c in size_text):
                raise Malformed(f"bad chunk size line {line[:100]!r}")
            size = int(size_text, 16)
            if size == 0:  # the last chunk, then trailer lines up to an empty line
                while not (buffer[len(line) + 2:].startswith(b"\r\n") or b"\r\n\r\n" in buffer[len(line) + 2:]):
                    if not more():
                        return None
                rest = buffer[len(line) + 2:]
                end = 2 if rest.startswith(b"\r\n") else rest.index(b"\r\n\r\n") + 4
                with self.cond:
                    seen.raw_body += buffer[: len(line) + 2 + end]
                    self.cond.notify_all()
                return rest[end:]
            whole = len(line) + 2 + size + 2
            while len(buffer) < whole:
                if not more():
                    return None
            if buffer[whole - 2 : whole] != b"\r\n":
                raise Malformed(f"chunk of {size} bytes not followed by CRLF: {buffer[whole - 2 : whole + 20]!r}")
            with self.cond:
                seen.raw_body += buffer[:whole]
                seen.chunks.append(buffer[len(line) + 2 : whole - 2])
                self.cond.notify_all()
            buffer = buffer[whole:]

    def _answer(self, sock: socket.socket, seen: Seen) -> None:
        kind = (seen.values(b"x-answer") or [b""])[0]
        if kind == b"204":
            sock.sendall(b"HTTP/1.1 204 No Content\r\nX-Seen: 204\r\n\r\n")
        elif kind == b"304":
            # The length of the representation the client has, not of a body: a 304 has none (RFC 9110 8.6).
            sock.sendall(b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 100\r\n\r\n')
        elif kind == b"chunked":
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            for size, data in CHUNKS:
                sock.sendall(size + b"\r\n" + data + b"\r\n")
            sock.sendall(b"0\r\nX-Trailer: t\r\n\r\n")
        elif kind == b"big":
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG_SIZE)
            view = memoryview(BIG_BODY)
            for at in range(0, BIG_SIZE, 262144):
                sock.sendall(view[at : at + 262144])
        elif seen.method == b"HEAD":
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Seen: head\r\n\r\n")
        else:
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def _error(self, text: str) -> None:
        with self.cond:
            self.errors.append(text)
            self.cond.notify_all()

    # -- for the tests ------------------------------------------------------------------------------

    def count(self) -> int:
        with self.cond:
            return len(self.seen)

    def wait_for(self, predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
        """Wait (bounded) until ``predicate()`` (called under the lock) is true; return its value."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"the backend: {what} not within {timeout:g}s; it received: "
                                         f"{[(s.head[:300], bytes(s.raw_body[:200]), s.complete) for s in self.seen]}"
                                         f" errors: {self.errors}")
                self.cond.wait(left)

    def requests_since(self, start: int, count: int = 1) -> list[Seen]:
        """Wait for ``count`` complete requests after the first ``start``; fail if more arrived."""
        found = self.wait_for(lambda: len(self.seen) >= start + count and all(s.complete for s in self.seen[start:])
                              and self.seen[start:], f"{count} complete request(s) after #{start}")
        assert len(found) == count, f"the backend received {len(found)} requests, expected {count}: " \
                                    f"{[s.head for s in found]}"
        assert not self.errors, self.errors
        return found

    def close_connections(self) -> None:
        with self.cond:
            socks = list(self.connections.values())
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self) -> None:
        self.stopping = True
        self.listener.close()
        self.close_connections()
        self.accepter.join(5)
        for thread in self.threads:
            thread.join(5)


# -- clients ------------------------------------------------------------------------------------------------

@dataclass
class H1Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


def h1_exchange(port: int, cafile: str, data: bytes, timeout: float = WAIT) -> H1Answer:
    """Send one raw HTTP/1.1 request over TLS (ALPN http/1.1) and read its answer (Content-Length framed)."""
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=HOST) as tls:
            assert tls.selected_alpn_protocol() == "http/1.1"
            tls.sendall(data)
            buffer = b""
            while b"\r\n\r\n" not in buffer:
                chunk = tls.recv(65536)
                assert chunk, f"edge closed without a full answer head: {buffer!r}"
                buffer += chunk
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            headers = [(n.strip().lower(), v.strip()) for n, _, v in (line.partition(b":") for line in lines[1:])]
            length = int(dict(headers).get(b"content-length", b"0"))
            while len(buffer) < length:
                chunk = tls.recv(65536)
                assert chunk, f"edge closed inside the answer body: {head!r} {buffer!r}"
                buffer += chunk
            return H1Answer(int(lines[0].split()[1]), headers, buffer[:length])


class FrameTap:
    """The frame headers of everything edge sent on an HTTP/2 connection: (type, flags, stream, length)."""

    DATA, HEADERS, RST_STREAM, GOAWAY = 0x0, 0x1, 0x3, 0x7

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.frames: list[tuple[int, int, int, int]] = []

    def feed(self, data: bytes) -> None:
        self.buffer += data
        at = 0
        while len(self.buffer) - at >= 9:
            length = int.from_bytes(self.buffer[at : at + 3], "big")
            if len(self.buffer) - at < 9 + length:
                break
            stream = int.from_bytes(self.buffer[at + 5 : at + 9], "big") & 0x7FFFFFFF
            self.frames.append((self.buffer[at + 3], self.buffer[at + 4], stream, length))
            at += 9 + length
        del self.buffer[:at]

    def on(self, stream: int) -> list[tuple[int, int, int, int]]:
        return [f for f in self.frames if f[2] == stream]


@dataclass
class H2Stream:
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    informational: list[int] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    data_frames: int = 0
    ended: bool = False
    reset: int | None = None
    trailers: list[tuple[bytes, bytes]] | None = None

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n == name), None)


class H2Client:
    """An HTTP/2 client (the ``h2`` library) over Python ``ssl`` with ALPN ``h2``.

    Reads happen only in :meth:`pump` (one bounded ``recv``); every received DATA frame is acknowledged
    at once (WINDOW_UPDATE), as a client that reads what it gets does, and every frame edge sent is
    also noted by a :class:`FrameTap`.
    """

    def __init__(self, port: int, cafile: str, *, window: int | None = None, validate: bool = True,
                 read_size: int = 65536, rcvbuf: int | None = None) -> None:
        context = ssl.create_default_context(cafile=cafile)
        context.set_alpn_protocols(["h2"])
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(WAIT)
        raw.connect(("127.0.0.1", port))
        self.tls = context.wrap_socket(raw, server_hostname=HOST)
        assert self.tls.selected_alpn_protocol() == "h2", self.tls.selected_alpn_protocol()
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=validate,
            normalize_outbound_headers=validate))
        self.conn.initiate_connection()
        if window is not None:
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.read_size = read_size
        self.tap = FrameTap()
        self.streams: dict[int, H2Stream] = defaultdict(H2Stream)
        self.terminated: Any = None  # the edge's GOAWAY (ConnectionTerminated)
        self.eof = False
        self.flush()

    def __enter__(self) -> "H2Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.conn.close_connection()
            self.flush()
        except (OSError, h2.exceptions.ProtocolError):
            pass
        self.tls.close()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.tls.sendall(data)

    def request(self, headers: list[tuple[bytes, bytes]], body: bytes | None = None, end: bool = True) -> int:
        """Open a stream with ``headers`` (pseudo-headers first); send ``body`` and END_STREAM if ``end``."""
        stream = self.conn.get_next_available_stream_id()
        self.streams[stream]  # noqa: B018 (creates its record)
        self.conn.send_headers(stream, headers, end_stream=end and not body)
        self.flush()
        if body:
            self.send(stream, body, end)
        return stream

    def send(self, stream: int, data: bytes, end: bool = False) -> None:
        """DATA frames for ``data`` as windows allow (waiting, bounded, for WINDOW_UPDATEs)."""
        deadline = time.monotonic() + WAIT
        view = memoryview(data)
        while True:
            room = min(self.conn.local_flow_control_window(stream), self.conn.max_outbound_frame_size)
            if room > 0 or not view:
                piece, view = view[:room], view[room:]
                self.conn.send_data(stream, bytes(piece), end_stream=end and not view)
                self.flush()
                if not view:
                    return
                continue
            if time.monotonic() > deadline:
                raise AssertionError(f"edge opened no window for the rest of the body ({len(view)} bytes)")
            self.pump(deadline - time.monotonic())

    def trailers(self, stream: int, fields: list[tuple[bytes, bytes]]) -> None:
        self.conn.send_headers(stream, fields, end_stream=True)
        self.flush()

    def reset(self, stream: int, code: int = ErrorCodes.CANCEL) -> None:
        self.conn.reset_stream(stream, code)
        self.flush()

    def pump(self, timeout: float) -> bool:
        """One read (at most ``timeout`` seconds) and its events; False if nothing came."""
        if self.eof:
            return False
        self.tls.settimeout(max(timeout, 0.001))
        try:
            data = self.tls.recv(self.read_size)
        except (socket.timeout, TimeoutError):
            return False
        except (ConnectionResetError, ssl.SSLError):
            data = b""
        if not data:
            self.eof = True
            return False
        self.tap.feed(data)
        for event in self.conn.receive_data(data):
            self._event(event)
        self.flush()
        return True

    def _event(self, event: Any) -> None:
        sid = getattr(event, "stream_id", 0)
        if isinstance(event, h2.events.ResponseReceived):
            record = self.streams[sid]
            record.headers = list(event.headers)
            record.status = int(dict(event.headers)[b":status"])
        elif isinstance(event, h2.events.InformationalResponseReceived):
            self.streams[sid].informational.append(int(dict(event.headers)[b":status"]))
        elif isinstance(event, h2.events.DataReceived):
            record = self.streams[sid]
            record.body += event.data
            record.data_frames += 1
            self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
        elif isinstance(event, h2.events.TrailersReceived):
            self.streams[sid].trailers = list(event.headers)
        elif isinstance(event, h2.events.StreamEnded):
            self.streams[sid].ended = True
        elif isinstance(event, h2.events.StreamReset):
            self.streams[sid].reset = event.error_code
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.terminated = event

    def wait(self, predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0 or self.eof:
                why = "edge closed the connection first" if self.eof else f"not within {timeout:g}s"
                raise AssertionError(f"HTTP/2 client: {what}: {why} "
                                     f"(goaway={self.terminated}, streams={dict(self.streams)})")
            self.pump(left)

    def response(self, stream: int, timeout: float = WAIT) -> H2Stream:
        self.wait(lambda: self.streams[stream].done, f"the end of stream {stream}", timeout)
        return self.streams[stream]


def get(path: str, *extra: tuple[bytes, bytes], method: bytes = b"GET",
        authority: bytes = HOST.encode()) -> list[tuple[bytes, bytes]]:
    return [(b":method", method), (b":scheme", b"https"), (b":authority", authority),
            (b":path", path.encode())] + list(extra)


def forwarding(authority: bytes = HOST.encode()) -> list[tuple[bytes, bytes]]:
    """The forwarding headers edge adds for a client at CLIENT without prior hops (RFC 7239 and the X- ones)."""
    return [(b"x-forwarded-for", CLIENT.encode()), (b"x-forwarded-proto", b"https"),
            (b"x-forwarded-host", authority),
            (b"forwarded", b'for=%s;host="%s";proto=https' % (CLIENT.encode(), authority))]


def unchunk(raw: bytes) -> tuple[list[bytes], bytes]:
    """Strictly decode a chunked body: (chunk data list, trailer section); AssertionError if malformed."""
    chunks, at = [], 0
    while True:
        end = raw.index(b"\r\n", at)
        size = int(raw[at:end].split(b";")[0], 16)
        at = end + 2
        if size == 0:
            trailer = raw[at:]
            assert trailer.endswith(b"\r\n"), raw[-50:]
            return chunks, trailer
        chunks.append(raw[at : at + size])
        assert raw[at + size : at + size + 2] == b"\r\n", raw[at + size : at + size + 10]
        at += size + 2


# -- fixtures -----------------------------------------------------------------------------------------------

@pytest.fixture
def recorder(start) -> Recorder:
    return start(Recorder)


@pytest.fixture
def h2edge(edge, recorder) -> Edge:
    e = edge(one_route(f'["http://127.0.0.1:{recorder.port}"]'), http=False, timeouts=TIMEOUTS)
    e.cafile = local_ca(e)
    return e


def client(e: Edge, **kwargs: Any) -> H2Client:
    return H2Client(e.https_port, e.cafile, **kwargs)


def answer(e: Edge, c: H2Client, stream: int) -> H2Stream:
    """The response on ``stream``; if there is none, the failure quotes edge's log."""
    try:
        return c.response(stream)
    except AssertionError as failure:
        lines = [line for line in e.log().splitlines() if "HTTP/2" in line or "Traceback" in line]
        raise AssertionError(f"{failure}\nedge log: {lines[-5:]}") from None


# -- 1. the property: HTTP/1.1 and HTTP/2 requests of one meaning reach the backend alike -------------------

# Header names the generator leaves out: hop-by-hop ones (RFC 9110 7.6.1, and the h2 library refuses
# them), the forwarding headers (drawn apart below), the ones HTTP/2 carries otherwise or edge rewrites
# (host, content-length, te, expect, cookie, each with its own test), and the recorder's x-answer.
EXCLUDED_NAMES = frozenset(
    "connection keep-alive proxy-connection te trailer transfer-encoding upgrade proxy-authenticate "
    "proxy-authorization x-forwarded-for x-forwarded-proto x-forwarded-host forwarded host content-length "
    "expect cookie x-answer".split())
TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~"
VISIBLE = "".join(chr(c) for c in range(0x21, 0x7F))
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
PRIOR_FOR = ("192.0.2.1", "198.51.100.7, 203.0.113.9", "2001:db8::1", "unknown")
PRIOR_FORWARDED = ("for=192.0.2.60;proto=http;by=203.0.113.43", 'for="[2001:db8:cafe::17]:4711"', "for=unknown")
SPOOFED = (("x-forwarded-proto", "http"), ("x-forwarded-host", "evil.example.test"))


@dataclass(frozen=True)
class Example:
    method: str
    target: str
    host: str  # "plain", "port" (with edge's port) or "upper"
    fields: tuple[tuple[str, str], ...]  # every header but Host, in the order sent (lower-case names)
    host_at: int  # where the Host line goes among them (HTTP/1.1)
    body: bytes | None  # sent with Content-Length when not None
    title_case: bool  # HTTP/1.1 names spelled X-Like-This

    def host_value(self, port: int) -> str:
        return {"plain": HOST, "port": f"{HOST}:{port}", "upper": "APP.Example.TEST"}[self.host]

    def extras(self) -> list[tuple[bytes, bytes]]:
        return [(n.encode(), v.encode()) for n, v in self.fields
                if n not in ("content-length", "x-forwarded-for", "forwarded", "x-forwarded-proto",
                             "x-forwarded-host")]

    def prior(self, name: str) -> list[bytes]:
        return [v.encode() for n, v in self.fields if n == name]

    def http1(self, port: int) -> bytes:
        lines = [(n.title() if self.title_case else n, v) for n, v in self.fields]
        lines.insert(self.host_at, ("Host" if self.title_case else "host", self.host_value(port)))
        head = f"{self.method} {self.target} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in lines) + "\r\n"
        return head.encode() + (self.body or b"")

    def http2(self, port: int) -> list[tuple[bytes, bytes]]:
        return get(self.target, *((n.encode(), v.encode()) for n, v in self.fields), method=self.method.encode(),
                   authority=self.host_value(port).encode())


@st.composite
def examples(draw: Callable[[st.SearchStrategy[Any]], Any]) -> Example:
    method = draw(st.sampled_from(METHODS))
    target = "/" + draw(st.text(VISIBLE, max_size=40))
    names = st.text(TOKEN_CHARS, min_size=1, max_size=16).filter(lambda n: n not in EXCLUDED_NAMES)
    values = st.text(VISIBLE + " ", max_size=40).map(lambda v: v.strip(" "))
    fields = draw(st.lists(st.tuples(names, values), max_size=6))
    fields += [("x-forwarded-for", v) for v in draw(st.lists(st.sampled_from(PRIOR_FOR), max_size=2))]
    fields += [("forwarded", v) for v in draw(st.lists(st.sampled_from(PRIOR_FORWARDED), max_size=2))]
    fields += draw(st.lists(st.sampled_from(SPOOFED), max_size=2))
    # hypothesis favours small values: the long bodies get a branch of their own
    body = draw(st.none() | st.binary(max_size=64) | st.binary(min_size=1000, max_size=3000))
    if body is not None:
        fields.append(("content-length", str(len(body))))
    fields = draw(st.permutations(fields))
    return Example(method, target, draw(st.sampled_from(["plain", "port", "upper"])), tuple(fields),
                   draw(st.integers(0, len(fields))), body, draw(st.booleans()))


FORWARDING_NAMES = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded")
FRAMING_NAMES = (b"content-length", b"transfer-encoding")


def differences(example: Example, port: int, one: Seen, two: Seen) -> list[str]:
    """How the backend's two requests differ from each other, or from what the client meant."""
    problems = []
    host = example.host_value(port).encode()
    line = f"{example.method} {example.target} HTTP/1.1".encode()
    for label, seen in (("HTTP/1.1", one), ("HTTP/2", two)):
        if seen.request_line != line:
            problems.append(f"{label} request line {seen.request_line!r}, the client's meant {line!r}")
        if seen.values(b"host") != [host]:
            problems.append(f"{label} Host {seen.values(b'host')!r}, the client's was {host!r}")
        prior_for, prior_fwd = example.prior("x-forwarded-for"), example.prior("forwarded")
        wanted = [b", ".join([*prior_for, CLIENT.encode()]), b"https", host,
                  b", ".join([*prior_fwd, b'for=%s;host="%s";proto=https' % (CLIENT.encode(), host)])]
        for name, want in zip(FORWARDING_NAMES, wanted):
            if seen.values(name) != [want]:
                problems.append(f"{label} {name.decode()}: {seen.values(name)!r}, expected [{want!r}]")
        length = [] if example.body is None else [str(len(example.body)).encode()]
        if seen.values(b"content-length") != length or seen.values(b"transfer-encoding"):
            problems.append(f"{label} framing: content-length {seen.values(b'content-length')!r} "
                            f"transfer-encoding {seen.values(b'transfer-encoding')!r}, expected {length!r}")
        if bytes(seen.raw_body) != (example.body or b""):
            problems.append(f"{label} body: {len(seen.raw_body)} bytes {bytes(seen.raw_body[:60])!r}, "
                            f"the client sent {len(example.body or b'')}")
    skip = {b"host", *FORWARDING_NAMES, *FRAMING_NAMES}
    others = [[(n, v) for n, v in seen.fields if n not in skip] for seen in (one, two)]
    if Counter(others[0]) != Counter(others[1]):
        problems.append(f"other headers differ: HTTP/1.1 only {list((Counter(others[0]) - Counter(others[1])).elements())}"
                        f", HTTP/2 only {list((Counter(others[1]) - Counter(others[0])).elements())}")
    if Counter(others[0]) != Counter(example.extras()):
        problems.append(f"the backend's headers are not the client's: got {others[0]}, sent {example.extras()}")
    for name in {n for n, _ in others[0] + others[1]}:  # the values of one name keep their order
        ordered = [[v for n, v in fields if n == name] for fields in others]
        if Counter(ordered[0]) == Counter(ordered[1]) and ordered[0] != ordered[1]:
            problems.append(f"values of {name!r} in another order: {ordered[0]} / {ordered[1]}")
    if one.raw_body != two.raw_body:
        problems.append("the two bodies differ")
    return problems


@dataclass
class Stack:
    edge: Edge
    recorder: Recorder
    cafile: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One recorder and one edge for every example of the property."""
    tmp = tmp_path_factory.mktemp("h2_property")
    recorder = Recorder()
    try:
        e = Edge(tmp / "edge", one_route(f'["http://127.0.0.1:{recorder.port}"]'), http=False, timeouts=TIMEOUTS)
    except BaseException:
        recorder.stop()
        raise
    try:
        yield Stack(e, recorder, local_ca(e))
        recorder.close_connections()  # edge's pooled connections to it close: then it is back to its baseline
        e.assert_no_leaked_descriptors()
        e.assert_alive()
    finally:
        recorder.stop()
        e.stop()


@settings(max_examples=40, derandomize=True, database=None, deadline=None, print_blob=True,
          phases=[Phase.explicit, Phase.generate, Phase.shrink])
@given(example=examples())
def test_http1_and_http2_requests_with_the_same_meaning_reach_the_backend_alike(stack: Stack, example: Example) -> None:
    e, recorder = stack.edge, stack.recorder
    port = e.https_port
    before = recorder.count()
    answer = h1_exchange(port, stack.cafile, example.http1(port))
    assert (answer.status, answer.body) == (200, b"ok"), (answer, example.http1(port)[:500])
    [one] = recorder.requests_since(before)
    with H2Client(port, stack.cafile) as h2c:
        stream = h2c.request(example.http2(port), example.body, end=True)
        response = h2c.response(stream)
    assert (response.status, bytes(response.body)) == (200, b"ok"), response
    [two] = recorder.requests_since(before + 1)
    problems = differences(example, port, one, two)
    assert not problems, "\n".join([*problems, f"HTTP/1.1 upstream: {one.head!r}", f"HTTP/2 upstream:   {two.head!r}"])
    assert "Traceback" not in e.log()


# -- 2. specific HTTP/2 behaviours ----------------------------------------------------------------------------

def test_cookie_crumbs_reach_the_backend_as_one_header(h2edge, recorder):
    """RFC 9113 8.2.3: cookie crumbs sent as separate fields are joined with "; " for HTTP/1.1."""
    with client(h2edge) as c:
        stream = c.request(get("/cookies", (b"cookie", b"a=1"), (b"x-between", b"1"), (b"cookie", b"b=2"),
                               (b"cookie", b"c=3")))
        response = c.response(stream)
    assert (response.status, bytes(response.body)) == (200, b"ok")
    [seen] = recorder.requests_since(0)
    assert seen.values(b"cookie") == [b"a=1; b=2; c=3"], seen.head
    assert seen.head.lower().count(b"\r\ncookie:") == 1, seen.head
    assert seen.values(b"x-between") == [b"1"]


def test_host_differing_from_authority_is_400(h2edge, recorder):
    """RFC 9113 8.3.1: a Host that names another entity than :authority makes the request malformed."""
    with client(h2edge, validate=False) as c:  # the h2 library would refuse to send it
        stream = c.request(get("/mismatch", (b"host", b"other.example.test")))
        response = answer(h2edge, c, stream)
        assert response.status == 400, (response, c.terminated)
        assert c.terminated is None, f"edge ended the whole connection: {c.terminated}"
        again = c.response(c.request(get("/after-mismatch")))  # the connection goes on
        assert (again.status, bytes(again.body)) == (200, b"ok")
    [seen] = recorder.requests_since(0)
    assert seen.request_line == b"GET /after-mismatch HTTP/1.1"


def test_host_equal_to_authority_ignoring_case_is_served(h2edge, recorder):
    with client(h2edge, validate=False) as c:
        stream = c.request(get("/same-host", (b"host", b"APP.Example.Test")))
        response = answer(h2edge, c, stream)
        assert c.terminated is None, f"edge ended the whole connection: {c.terminated}"
    assert (response.status, bytes(response.body)) == (200, b"ok"), response
    [seen] = recorder.requests_since(0)
    assert seen.request_line == b"GET /same-host HTTP/1.1"
    assert seen.values(b"host") == [HOST.encode()], seen.head  # :authority's spelling, and once
    assert seen.values(b"x-forwarded-host") == [HOST.encode()]


def test_host_identical_to_authority_is_served(h2edge, recorder):
    with client(h2edge, validate=False) as c:
        response = c.response(c.request(get("/same-host-exact", (b"host", HOST.encode()))))
    assert (response.status, bytes(response.body)) == (200, b"ok"), response
    [seen] = recorder.requests_since(0)
    assert seen.values(b"host") == [HOST.encode()], seen.head


def test_request_body_streams_to_the_backend(h2edge, recorder):
    """A body without content-length goes out chunked as its DATA frames arrive: the backend has the first
    frame's bytes while the client still holds the rest (edge does not spool the body)."""
    first = b"first:" + bytes(range(256)) * 8
    rest = [b"second:" + b"x" * 16000, b"third:" + bytes(range(255, -1, -1)) * 60, b"end"]
    with client(h2edge) as c:
        stream = c.request(get("/upload", method=b"POST"), end=False)
        c.send(stream, first)
        seen = recorder.wait_for(lambda: recorder.seen and recorder.seen[0].chunks and recorder.seen[0],
                                 "the first DATA frame's bytes (as a chunk) before the client ended its body")
        with recorder.cond:
            assert not seen.complete
            assert seen.chunks == [first], seen.chunks
        assert seen.chunked and seen.values(b"transfer-encoding") == [b"chunked"], seen.head
        assert seen.values(b"content-length") == []
        for piece in rest:
            c.send(stream, piece)
        c.send(stream, b"", end=True)
        response = c.response(stream)
    assert (response.status, bytes(response.body)) == (200, b"ok"), response
    [seen] = recorder.requests_since(0)
    chunks, trailer = unchunk(bytes(seen.raw_body))
    assert b"".join(chunks) == first + b"".join(rest)
    assert chunks[0] == first and trailer == b"\r\n"
    assert seen.request_line == b"POST /upload HTTP/1.1"


def test_expect_100_continue(h2edge, recorder):
    body = b"payload after the 100"
    with client(h2edge) as c:
        stream = c.request(get("/expect", (b"expect", b"100-continue"), (b"content-length", b"%d" % len(body)),
                               method=b"PUT"), end=False)
        c.wait(lambda: c.streams[stream].informational or c.streams[stream].done, "an interim 100 response")
        record = c.streams[stream]
        assert record.informational == [100] and record.status is None, record
        c.send(stream, body, end=True)
        response = c.response(stream)
    assert response.informational == [100]
    assert (response.status, bytes(response.body)) == (200, b"ok"), response
    [seen] = recorder.requests_since(0)
    assert seen.body == body and seen.values(b"content-length") == [b"%d" % len(body)]
    assert seen.values(b"expect") == [], seen.head  # answered by edge, not passed on


@pytest.mark.parametrize("kind", ["HEAD", "204", "304"])
def test_bodiless_answers_have_no_body(h2edge, recorder, kind):
    with client(h2edge) as c:
        if kind == "HEAD":
            stream = c.request(get("/head", method=b"HEAD"))
        else:
            stream = c.request(get(f"/status-{kind}", (b"x-answer", kind.encode())))
        response = c.response(stream)
        follow = c.response(c.request(get("/after")))  # the same connections go on, in step
        frames = c.tap.on(stream)
    assert response.ended and response.reset is None, response
    assert response.status == {"HEAD": 200, "204": 204, "304": 304}[kind]
    assert bytes(response.body) == b"" and response.data_frames == 0, response
    assert not [f for f in frames if f[0] == FrameTap.DATA], f"DATA frames on a bodiless answer: {frames}"
    if kind == "HEAD":
        assert response.header(b"content-length") == b"2" and response.header(b"x-seen") == b"head"
    elif kind == "304":
        assert response.header(b"etag") == b'"v1"'
    else:
        assert response.header(b"x-seen") == b"204"
    assert (follow.status, bytes(follow.body)) == (200, b"ok")
    first, after = recorder.requests_since(0, 2)
    assert first.method == (b"HEAD" if kind == "HEAD" else b"GET") and after.request_line == b"GET /after HTTP/1.1"
    assert after.connection == first.connection  # edge kept the backend connection: it found the answer's end


def test_chunked_answer_arrives_dechunked(h2edge, recorder):
    with client(h2edge) as c:
        stream = c.request(get("/chunked", (b"x-answer", b"chunked")))
        response = c.response(stream)
        follow = c.response(c.request(get("/after-chunked")))
    assert response.status == 200 and response.ended and response.reset is None, response
    assert bytes(response.body) == CHUNKED_BODY
    assert response.header(b"transfer-encoding") is None
    assert response.header(b"content-type") == b"application/octet-stream"
    assert (follow.status, bytes(follow.body)) == (200, b"ok")
    first, after = recorder.requests_since(0, 2)
    assert after.connection == first.connection


def test_five_megabytes_read_slowly_arrive_whole(h2edge, recorder):
    """A small stream window (8 KiB), small reads and a small socket buffer: edge sends only what the
    windows allow and resumes on each WINDOW_UPDATE; every byte arrives, in order."""
    with client(h2edge, window=8192, read_size=4096, rcvbuf=16384) as c:
        stream = c.request(get("/big", (b"x-answer", b"big")))
        response = c.response(stream, timeout=60)
        frames = [f for f in c.tap.on(stream) if f[0] == FrameTap.DATA]
    assert response.status == 200 and response.ended and response.reset is None, \
        (response.status, len(response.body), response.reset)
    assert response.header(b"content-length") == str(BIG_SIZE).encode()
    assert len(response.body) == BIG_SIZE
    assert hashlib.sha256(response.body).hexdigest() == BIG_SHA
    assert max(length for _, _, _, length in frames) <= 8192, "edge overran the stream window"
    recorder.requests_since(0)


@pytest.mark.parametrize("length", [False, True], ids=["chunked", "content-length"])
def test_trailers_and_te_trailers_from_the_client(h2edge, recorder, length):
    body = b"body before trailers " * 50
    extra = [(b"te", b"trailers"), (b"x-before", b"1")]
    if length:
        extra.append((b"content-length", b"%d" % len(body)))
    with client(h2edge) as c:
        stream = c.request(get("/trailers", *extra, method=b"POST"), end=False)
        c.send(stream, body)
        c.trailers(stream, [(b"x-checksum", b"abc123"), (b"x-more", b"2")])
        response = c.response(stream)
        assert c.terminated is None
    assert (response.status, bytes(response.body)) == (200, b"ok"), response
    [seen] = recorder.requests_since(0)
    assert seen.body == body
    assert seen.values(b"te") == [] and seen.values(b"x-before") == [b"1"], seen.head
    if length:
        assert not seen.chunked and seen.values(b"content-length") == [b"%d" % len(body)]
    else:
        chunks, trailer = unchunk(bytes(seen.raw_body))  # well framed, whatever edge does with the trailers
        assert b"".join(chunks) == body


def access_events(e: Edge) -> list[dict]:
    found = []
    for line in e.log().split("\n")[:-1]:
        event = json.loads(line)
        if event.get("logger") == "edge.access" and "outcome" in event:
            found.append(event)
    return found


def test_access_log_has_one_line_per_http2_request(edge, recorder):
    e = edge(one_route(f'["http://127.0.0.1:{recorder.port}"]'), http=False, timeouts=TIMEOUTS, log_format="json")
    cafile = local_ca(e)
    mark = f"{RUN}-{next(_MARKS)}"
    paths = {"completed": f"/log-{mark}-completed", "answered": f"/log-{mark}-answered",
             "client_aborted": f"/log-{mark}-aborted", "completed-post": f"/log-{mark}-post"}
    with H2Client(e.https_port, cafile) as c:
        ok = c.response(c.request(get(paths["completed"])))
        post = c.response(c.request(get(paths["completed-post"], method=b"POST"), b"data"))
        # edge's own answer: a name the TLS connection was not made for (421)
        misdirected = c.response(c.request(get(paths["answered"], authority=b"other.example.test")))
    assert (ok.status, post.status, misdirected.status) == (200, 200, 421)
    with H2Client(e.https_port, cafile) as c:
        stream = c.request(get(paths["client_aborted"], (b"x-answer", b"big")))
        c.wait(lambda: c.streams[stream].body, "the first bytes of the big answer")
        c.reset(stream, ErrorCodes.CANCEL)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and not any(ev.get("path") == paths["client_aborted"]
                                                      for ev in access_events(e)):
            c.pump(0.05)

    wanted = {paths["completed"]: ("completed", 200), paths["completed-post"]: ("completed", 200),
              paths["answered"]: ("answered", 421), paths["client_aborted"]: ("client_aborted", 200)}
    deadline = time.monotonic() + WAIT
    while True:
        found = {path: [ev for ev in access_events(e) if ev.get("path") == path] for path in wanted}
        if all(found.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for path, (outcome, status) in wanted.items():
        lines = found[path]
        assert len(lines) == 1, f"{path}: {len(lines)} access-log lines: {lines}"
        [event] = lines
        assert (event["outcome"], event["status"], event["protocol"], event["method"]) == \
            (outcome, status, "HTTP/2", "POST" if path == paths["completed-post"] else "GET"), event
    e.assert_alive()
