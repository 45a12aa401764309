"""The HTTP/2 server of terminated routes under attack: floods, stalls, oversized and endless header blocks.

Each case runs the real edge (local issuer TLS, route ``app.example.test``)
in front of a real nginx on loopback, and talks to it as a hostile client:
frames built by hand with hyperframe and hpack (so that nothing in a client
library stops what a hostile peer would send) over Python ``ssl`` with ALPN
``h2``.  What the edge does is read from outside: the frames it sends back,
its log, the origin's access log, and ``/proc/PID`` of the edge process for
its memory (VmRSS), CPU time (utime + stime) and descriptors.

Every socket operation has a timeout and every loop a bound; events are
waited for with a deadline (a frame, a log line, a process's exit, a
descriptor count; RSS is sampled while waiting), never slept on, except for
the one CPU sample, which is a bounded wall-clock window by nature.
"""

from __future__ import annotations

import hashlib
import os
import select
import socket
import ssl
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import hpack
import pytest
from hyperframe.frame import (ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame, PingFrame,
                              PriorityFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame)

from tests.support.procs import free_port, rss_kib, wait_listening
from tests.support.servers import Nginx
from tests.e2e.test_hostile_http import fds, wait_fds, wait_origin
from tests.e2e.test_http_proxy import one_route
from tests.e2e.test_terminate import local_ca

HOST = "app.example.test"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_FRAME = 16384  # SETTINGS_MAX_FRAME_SIZE: edge keeps the default

# RFC 9113 error codes
NO_ERROR, PROTOCOL_ERROR, CANCEL, REFUSED_STREAM, ENHANCE_YOUR_CALM = 0x0, 0x1, 0x8, 0x7, 0xB
ERROR_NAMES = {0x0: "NO_ERROR", 0x1: "PROTOCOL_ERROR", 0x2: "INTERNAL_ERROR", 0x3: "FLOW_CONTROL_ERROR",
               0x4: "SETTINGS_TIMEOUT", 0x5: "STREAM_CLOSED", 0x6: "FRAME_SIZE_ERROR", 0x7: "REFUSED_STREAM",
               0x8: "CANCEL", 0x9: "COMPRESSION_ERROR", 0xA: "CONNECT_ERROR", 0xB: "ENHANCE_YOUR_CALM",
               0xC: "INADEQUATE_SECURITY", 0xD: "HTTP_1_1_REQUIRED"}

BIG = 50_000_000
HUGE = 200 * 1024 * 1024


def timeouts(inspect: str = "2s", idle: str = "3s", response: str = "5s") -> str:
    return f'inspect = "{inspect}"\nconnect = "2s"\nidle = "{idle}"\nresponse = "{response}"'


# -- the origin ---------------------------------------------------------------------------------

@pytest.fixture
def origin(start, tmp_path):
    """nginx serving files (50 MB and 200 MB ones, sparse), a rate-limited location, and WebDAV PUT
    under ``/up/``; every request it receives goes to ``origin.access``."""
    port = free_port()
    files = tmp_path / "www"
    files.mkdir()
    (files / "page.txt").write_text("page\n")
    for name, size in (("big.bin", BIG), ("huge.bin", HUGE)):
        with open(files / name, "wb") as f:
            f.truncate(size)
    (files / "slow").mkdir()
    with open(files / "slow" / "big.bin", "wb") as f:
        f.truncate(BIG)
    access = tmp_path / "origin-access.log"
    server = start(Nginx, tmp_path, f"""
        log_format seen '"$request" $status $body_bytes_sent len=$request_length';
        server {{
          listen 127.0.0.1:{port};
          root {files};
          access_log {access} seen;
          client_max_body_size 300m;
          location /up/ {{ dav_methods PUT; create_full_put_path on; }}
          location /slow/ {{ limit_rate 200k; }}
        }}
        """)
    wait_listening(port, proc=server.proc)
    server.port, server.files, server.access = port, files, access
    return server


def start_edge(edge, origin, **kw):
    return edge(one_route(f'["http://127.0.0.1:{origin.port}"]'), **kw)


# -- measuring the edge process -----------------------------------------------------------------

def rss_mib(pid: int) -> float:
    return rss_kib(pid) / 1024


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Peak:
    """The highest RSS of a process seen since it was made (sample() as often as the test can)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = self.peak = rss_mib(pid)

    def sample(self) -> float:
        self.peak = max(self.peak, rss_mib(self.pid))
        return self.peak

    @property
    def growth(self) -> float:
        return self.peak - self.before


# -- the hostile client -------------------------------------------------------------------------

class Client:
    """An HTTP/2 client over TLS that sends whatever frames it is given and keeps every frame it gets.

    Unless told otherwise it acknowledges the edge's SETTINGS (as any client does) and, if ``windows``,
    gives back the flow-control window of every DATA frame it receives (a stalling client does not).
    Response header blocks are decoded (hpack) so that statuses can be checked.
    """

    def __init__(self, e, settings: dict[int, int] | None = None, *, preface: bool = True, windows: bool = True,
                 ack_settings: bool = True, rcvbuf: int | None = None, timeout: float = 10) -> None:
        context = ssl.create_default_context(cafile=local_ca(e))
        context.set_alpn_protocols(["h2"])
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(timeout)
        raw.connect(("127.0.0.1", e.https_port))
        self.sock = context.wrap_socket(raw, server_hostname=HOST)
        assert self.sock.selected_alpn_protocol() == "h2"
        self.timeout = timeout
        self.windows = windows
        self.ack_settings = ack_settings
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = 1 << 20
        self.buffer = bytearray()
        self.frames: list[Frame] = []
        self.block: dict[int, bytes] = {}
        self.heads: dict[int, dict[bytes, bytes]] = {}
        self.bodies: dict[int, bytearray] = defaultdict(bytearray)
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}
        self.pongs: set[bytes] = set()  # opaque data of PING ACKs
        self.goaway: GoAwayFrame | None = None
        self.server_settings = False
        self.closed = False  # EOF or an error reading
        self.send_failed: str | None = None
        self.next_stream = 1
        self.sent_bytes = 0
        if preface:
            self.send_raw(PREFACE + SettingsFrame(0, settings=settings or {}).serialize())

    def close(self) -> None:
        self.sock.close()

    # sending

    def send_raw(self, data: bytes) -> bool:
        """Send ``data``; False (and ``send_failed`` says why) if the edge no longer takes it."""
        if self.send_failed:
            return False
        try:
            self.sock.settimeout(self.timeout)
            self.sock.sendall(data)
            self.sent_bytes += len(data)
            return True
        except (OSError, ssl.SSLError) as e:  # reset, broken pipe, or a peer that no longer reads (timeout)
            self.send_failed = repr(e)
            return False

    def send(self, *frames: Frame) -> bool:
        return self.send_raw(b"".join(f.serialize() for f in frames))

    def stream_id(self) -> int:
        stream, self.next_stream = self.next_stream, self.next_stream + 2
        return stream

    def request_block(self, path: str, method: str = "GET", extra: list[tuple[str, str]] = (),
                      encoder: hpack.Encoder | None = None, huffman: bool = True) -> bytes:
        fields = [(":method", method), (":path", path), (":scheme", "https"), (":authority", HOST), *extra]
        return (encoder or self.encoder).encode(fields, huffman=huffman)

    @staticmethod
    def header_frames(stream: int, block: bytes, end_stream: bool = True, end_headers: bool = True,
                      size: int = MAX_FRAME) -> list[Frame]:
        """HEADERS then CONTINUATION frames of at most ``size`` bytes carrying ``block``."""
        pieces = [block[i:i + size] for i in range(0, len(block), size)] or [b""]
        frames: list[Frame] = []
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            flags = (["END_HEADERS"] if last and end_headers else [])
            if i == 0:
                frames.append(HeadersFrame(stream, piece, flags=flags + (["END_STREAM"] if end_stream else [])))
            else:
                frames.append(ContinuationFrame(stream, piece, flags=flags))
        return frames

    def request(self, path: str, method: str = "GET", end_stream: bool = True,
                extra: list[tuple[str, str]] = ()) -> int:
        stream = self.stream_id()
        self.send(*self.header_frames(stream, self.request_block(path, method, extra), end_stream))
        return stream

    # receiving

    def read(self, timeout: float) -> list[Frame]:
        """The frames that arrive within ``timeout`` seconds (one read; 0 polls)."""
        if self.closed:
            return []
        try:
            if timeout <= 0:
                if not self.sock.pending() and not select.select([self.sock], [], [], 0)[0]:
                    return []
                self.sock.settimeout(0.5)
            else:
                self.sock.settimeout(timeout)
            data = self.sock.recv(1 << 20)
        except (socket.timeout, ssl.SSLWantReadError, BlockingIOError):
            return []
        except (OSError, ssl.SSLError):
            data = b""
        if not data:
            self.closed = True
            return []
        self.buffer += data
        new = []
        while len(self.buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(bytes(self.buffer[:9])))
            if len(self.buffer) < 9 + length:
                break
            frame.parse_body(memoryview(bytes(self.buffer[9:9 + length])))
            del self.buffer[:9 + length]
            self._handle(frame)
            new.append(frame)
        return new

    def _handle(self, frame: Frame) -> None:
        self.frames.append(frame)
        kind = type(frame)
        if kind is SettingsFrame and "ACK" not in frame.flags:
            self.server_settings = True
            if self.ack_settings:
                self.send(SettingsFrame(0, flags=["ACK"]))
        elif kind in (HeadersFrame, ContinuationFrame):
            block = self.block.get(frame.stream_id, b"") + frame.data
            if "END_HEADERS" in frame.flags:
                self.block.pop(frame.stream_id, None)
                head = dict(self.decoder.decode(block, raw=True))
                status = head.get(b":status", b"")
                if status and not status.startswith(b"1") and frame.stream_id not in self.heads:
                    self.heads[frame.stream_id] = head  # the response head (not a 1xx, nor trailers)
            else:
                self.block[frame.stream_id] = block
            if "END_STREAM" in frame.flags:
                self.ended.add(frame.stream_id)
        elif kind is DataFrame:
            self.bodies[frame.stream_id] += frame.data
            if "END_STREAM" in frame.flags:
                self.ended.add(frame.stream_id)
            if self.windows and frame.flow_controlled_length:
                updates = [WindowUpdateFrame(0, window_increment=frame.flow_controlled_length)]
                if "END_STREAM" not in frame.flags:
                    updates.append(WindowUpdateFrame(frame.stream_id, window_increment=frame.flow_controlled_length))
                self.send(*updates)
        elif kind is RstStreamFrame:
            self.resets[frame.stream_id] = frame.error_code
        elif kind is PingFrame and "ACK" in frame.flags:
            self.pongs.add(bytes(frame.opaque_data))
        elif kind is GoAwayFrame:
            self.goaway = frame

    def wait(self, condition: Callable[[], object], timeout: float = 10) -> object:
        """Read until ``condition()`` holds, the connection ends, or ``timeout`` passes; its last value."""
        deadline = time.monotonic() + timeout
        while not condition() and not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.read(min(left, 1.0))
        return condition()

    def drain(self) -> None:
        """Read whatever has arrived, without waiting."""
        for _ in range(1000):
            if not self.read(0):
                return

    def wait_closed(self, timeout: float = 10) -> bool:
        return bool(self.wait(lambda: self.closed, timeout))

    def status(self, stream: int) -> int | None:
        head = self.heads.get(stream)
        return int(head[b":status"]) if head and b":status" in head else None

    def fetch(self, path: str, timeout: float = 10) -> tuple[int | None, bytes]:
        stream = self.request(path)
        self.wait(lambda: stream in self.ended or stream in self.resets, timeout)
        return self.status(stream), bytes(self.bodies[stream])

    def describe(self) -> str:
        kinds: dict[str, int] = defaultdict(int)
        for frame in self.frames:
            kinds[type(frame).__name__] += 1
        goaway = (f"GOAWAY {ERROR_NAMES.get(self.goaway.error_code, self.goaway.error_code)} "
                  f"last_stream={self.goaway.last_stream_id} {bytes(self.goaway.additional_data)!r}"
                  if self.goaway else "no GOAWAY")
        resets = {s: ERROR_NAMES.get(c, c) for s, c in list(self.resets.items())[:10]}
        return (f"frames received: {dict(kinds)}; {goaway}; resets {resets}{'...' if len(self.resets) > 10 else ''}; "
                f"closed={self.closed}; send_failed={self.send_failed}; sent {self.sent_bytes} bytes")


def served(e, path: str = "/page.txt") -> None:
    """A normal request on a new HTTP/2 connection gets its answer."""
    client = Client(e)
    try:
        status, body = client.fetch(path)
        assert (status, body) == (200, b"page\n"), (status, body, client.describe())
    finally:
        client.close()


def canary(e, origin) -> list[str]:
    """A normal request on a new connection; the origin's log once it has arrived (so all before it has)."""
    name = f"/page.txt?canary={time.monotonic_ns()}"
    served(e, name)
    return wait_origin(origin, name)


def assert_goaway(client: Client, code: int | None, timeout: float = 10) -> GoAwayFrame:
    client.wait(lambda: client.goaway is not None, timeout)
    assert client.goaway is not None, client.describe()
    if code is not None:
        assert client.goaway.error_code == code, client.describe()
    return client.goaway


def flood(client: Client, frames: Callable[[int], list[Frame]], batches: int) -> int:
    """Send ``frames(i)`` for i in range(batches), reading what comes back in between, until the edge
    says GOAWAY or stops taking bytes; the number of batches sent."""
    sent = 0
    for i in range(batches):
        if client.goaway is not None or client.closed:
            break
        if not client.send(*frames(i)):
            break
        sent += 1
        client.drain()
    return sent


# -- 1. rapid reset (CVE-2023-44487) -------------------------------------------------------------

def test_rapid_reset_is_ended_with_enhance_your_calm(edge, origin):
    """Batches of 50 streams, each opened and reset in the same write (HEADERS, RST_STREAM), a PING after
    each batch whose answer says the edge has read it: the edge stops the connection after 500 resets,
    and a stream reset in the very read that opened it costs the origin nothing (or next to nothing)."""
    e = start_edge(edge, origin)
    canary(e, origin)
    client = Client(e)
    opened = 0
    try:
        client.wait(lambda: client.server_settings)
        for i in range(100):  # up to 5,000 streams opened and reset
            if client.goaway is not None or client.closed:
                break
            frames = []
            for _ in range(50):
                stream = client.stream_id()
                frames += client.header_frames(stream, client.request_block(f"/page.txt?rapid={stream}"))
                frames.append(RstStreamFrame(stream, error_code=CANCEL))
            ping = i.to_bytes(8, "big")
            if not client.send(*frames, PingFrame(0, opaque_data=ping)):
                break
            opened += 50
            client.wait(lambda: ping in client.pongs or client.goaway is not None, 5)
        goaway = assert_goaway(client, ENHANCE_YOUR_CALM)
        assert client.wait_closed(), client.describe()
    finally:
        client.close()
    e.wait_log("HTTP/2 flood: more than 500 reset frames")
    lines = canary(e, origin)
    reached = [line for line in lines if "rapid=" in line]
    seen = (goaway.last_stream_id + 1) // 2  # streams the edge took before it stopped
    assert 500 <= seen <= opened, (seen, opened, client.describe())
    assert len(reached) < seen // 10, f"{len(reached)} of the {seen} streams the edge read, each reset in the " \
                                      f"same write that opened it, reached the origin; for instance {reached[:3]}"
    e.assert_alive()


# -- 2. CONTINUATION flood -----------------------------------------------------------------------

@pytest.mark.parametrize("piece", [0, MAX_FRAME], ids=["empty", "full"])
def test_continuation_flood_is_ended(edge, origin, piece):
    """HEADERS without END_HEADERS, then CONTINUATION frames that never end the block (empty ones, or full
    16 KiB ones of a 100 MB header value): the edge must not collect them; it says GOAWAY and closes."""
    e = start_edge(edge, origin)
    served(e)
    peak = Peak(e.pid)
    client = Client(e)
    try:
        client.wait(lambda: client.server_settings)
        encoder = hpack.Encoder()
        block = client.request_block("/page.txt?continuation", extra=[("x-flood", "a" * 100_000_000)],
                                     encoder=encoder, huffman=False) if piece else client.request_block("/page.txt")
        stream = client.stream_id()
        first = block[:MAX_FRAME] if piece else block[:10]
        client.send(HeadersFrame(stream, first, flags=[]))
        offset = len(first)

        def batch(i: int) -> list[Frame]:
            nonlocal offset
            frames = []
            for _ in range(100):
                data = block[offset:offset + piece]
                offset += len(data)
                frames.append(ContinuationFrame(stream, data, flags=[]))
            peak.sample()
            return frames

        batches = flood(client, batch, 1000 if piece == 0 else 60)  # 100,000 empty ones, or 96 MB of full ones
        peak.sample()
        assert_goaway(client, None)
        assert client.wait_closed(), client.describe()
        peak.sample()
    finally:
        client.close()
    assert stream not in client.heads, client.describe()
    assert batches < (1000 if piece == 0 else 60), f"the edge took all {batches} batches: {client.describe()}"
    assert peak.growth < 4, f"edge RSS grew {peak.growth:.1f} MiB ({peak.before:.1f} -> {peak.peak:.1f})"
    lines = canary(e, origin)
    assert not [line for line in lines if "continuation" in line], lines
    e.assert_alive()


# -- 3. a window the client never opens ----------------------------------------------------------

def test_a_stream_whose_window_never_opens_costs_no_cpu_and_is_reset_after_idle(edge, origin):
    e = start_edge(edge, origin, timeouts=timeouts(idle="4s"))
    served(e)
    peak = Peak(e.pid)
    client = Client(e, {SettingsFrame.INITIAL_WINDOW_SIZE: 1}, windows=False)
    try:
        stream = client.request("/big.bin")
        client.wait(lambda: stream in client.heads and client.bodies[stream])
        assert client.status(stream) == 200, client.describe()
        # The stall: the edge holds what the backend sent and can send none of it.  CPU over a fixed window.
        started, cpu = time.monotonic(), cpu_seconds(e.pid)
        while (left := started + 3 - time.monotonic()) > 0:
            client.read(min(left, 0.5))
            peak.sample()
        spent = cpu_seconds(e.pid) - cpu
        assert spent < 0.5, f"edge used {spent:.2f}s of CPU in 3s for a stream it cannot send on"
        assert peak.growth < 16, f"edge RSS grew {peak.growth:.1f} MiB ({peak.before:.1f} -> {peak.peak:.1f})"
        client.wait(lambda: stream in client.resets, 10)
        assert client.resets.get(stream) == CANCEL, client.describe()
        assert len(client.bodies[stream]) <= 1, f"edge sent {len(client.bodies[stream])} bytes into a window of 1"
        waited = time.monotonic() - started
    finally:
        client.close()
    assert 4 - 1 < waited < 4 + 5, f"reset {waited:.1f}s into the stall, timeouts.idle is 4s"
    e.wait_log("/big.bin 200 1B")
    assert " timeout" in [line for line in e.log().splitlines() if "/big.bin 200 1B" in line][0]
    e.assert_alive()


# -- 4. streams nobody reads ---------------------------------------------------------------------

def test_unread_streams_hold_little_and_are_released_after_idle(edge, origin):
    """Ten 50 MB downloads with every window wide open and a client that never reads its socket: only
    the socket's backpressure stops the edge, which must then hold little and let go after timeouts.idle."""
    e = start_edge(edge, origin, timeouts=timeouts(idle="3s"))
    canary(e, origin)
    baseline = len(fds(e.pid))
    peak = Peak(e.pid)
    client = Client(e, {SettingsFrame.INITIAL_WINDOW_SIZE: 2**31 - 1}, windows=False, rcvbuf=64 * 1024)
    try:
        client.send(WindowUpdateFrame(0, window_increment=2**31 - 1 - 65535))
        streams = [client.request(f"/big.bin?unread={i}") for i in range(10)]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # until the edge gave up on all ten (never reading)
            peak.sample()
            if sum(line.endswith(" timeout") for line in e.log().splitlines()) >= len(streams):
                break
            time.sleep(0.1)
        peak.sample()
        timed_out = [line for line in e.log().splitlines() if "unread=" in line and line.endswith(" timeout")]
        assert len(timed_out) == len(streams), e.log()[-3000:]
        assert peak.growth < 32, f"edge RSS grew {peak.growth:.1f} MiB ({peak.before:.1f} -> {peak.peak:.1f})"
        # The backend connections are gone while the client still holds its own (unread) connection.
        wait_fds(e.pid, baseline + 1, timeout=5)
    finally:
        client.close()
    wait_fds(e.pid, baseline, timeout=10)
    served(e)
    e.assert_alive()


def test_a_client_that_sends_requests_and_reads_nothing_is_not_read_either(edge, origin):
    """Requests edge answers itself (421: another host than the TLS name), with every window open and a
    client that never reads: once its socket is full edge stops reading it (as HAProxy does), so its
    memory stays flat however many requests the client has to send."""
    e = start_edge(edge, origin)
    peak = Peak(e.pid)
    client = Client(e, {SettingsFrame.INITIAL_WINDOW_SIZE: 2**31 - 1}, windows=False, rcvbuf=64 * 1024, timeout=2)
    try:
        client.send(WindowUpdateFrame(0, window_increment=2**31 - 1 - 65535))
        encoder = hpack.Encoder()
        sent = 0
        for n in range(300_000):  # bounded; the send that blocks (edge no longer reads) ends it
            fields = [(":method", "GET"), (":path", f"/x{n}"), (":scheme", "https"), (":authority", "other.test")]
            stream = client.stream_id()
            if not client.send(*client.header_frames(stream, encoder.encode(fields), True)):
                break
            sent += 1
            if n % 1000 == 0:
                peak.sample()
        peak.sample()
        assert client.send_failed, f"edge read all {sent} requests of a client that reads nothing"
        assert peak.growth < 16, f"edge RSS grew {peak.growth:.1f} MiB over {sent} unread answers"
    finally:
        client.close()
    served(e)
    e.assert_alive()


# -- 5. oversized header lists -------------------------------------------------------------------

def test_oversized_header_lists_get_431_then_goaway(edge, origin):
    e = start_edge(edge, origin)
    client = Client(e)
    try:
        client.wait(lambda: client.server_settings)
        ten_k = [(f"x-big-{i}", "a" * 10240) for i in range(10)]
        block = client.request_block("/page.txt?big=100k", extra=ten_k, huffman=False)
        assert 100 * 1024 <= len(block) < 110 * 1024
        first = client.stream_id()
        client.send(*client.header_frames(first, block))
        client.wait(lambda: first in client.ended or first in client.resets)
        assert client.status(first) == 431, client.describe()
        status, body = client.fetch("/page.txt")
        assert (status, body) == (200, b"page\n"), client.describe()
        block = client.request_block("/page.txt?big=300k", extra=[(f"x-big-{i}", "a" * 10240) for i in range(30)],
                                     huffman=False)
        assert 300 * 1024 <= len(block) < 320 * 1024
        third = client.stream_id()
        client.send(*client.header_frames(third, block))
        assert_goaway(client, ENHANCE_YOUR_CALM)
        assert client.wait_closed(), client.describe()
        assert third not in client.heads
    finally:
        client.close()
    lines = canary(e, origin)
    assert not [line for line in lines if "big=" in line], lines
    e.assert_alive()


# -- 6. floods of cheap frames -------------------------------------------------------------------

FLOODS = {
    "ping": lambda client, i: [PingFrame(0, opaque_data=i.to_bytes(8, "big"))],
    "settings": lambda client, i: [SettingsFrame(0, settings={SettingsFrame.MAX_CONCURRENT_STREAMS: 100})],
    "priority": lambda client, i: [PriorityFrame(2 * i + 1, depends_on=0, stream_weight=16)],
    "window-update": lambda client, i: [WindowUpdateFrame(0, window_increment=1)],
    "empty-data": lambda client, i: [DataFrame(1, b"")],
}


@pytest.mark.parametrize("kind", sorted(FLOODS))
def test_cheap_frame_floods_get_enhance_your_calm(edge, origin, kind):
    e = start_edge(edge, origin)
    client = Client(e)
    try:
        client.wait(lambda: client.server_settings)
        if kind == "empty-data":  # a request whose body is a stream of empty DATA frames
            client.request("/up/empty", "PUT", end_stream=False)
        make = FLOODS[kind]
        flood(client, lambda b: [f for i in range(100 * b, 100 * b + 100) for f in make(client, i)], 50)  # 5,000
        assert_goaway(client, ENHANCE_YOUR_CALM)
        assert client.wait_closed(), client.describe()
    finally:
        client.close()
    e.wait_log("HTTP/2 flood")
    served(e)
    e.assert_alive()


# -- 7. header blocks that never complete --------------------------------------------------------

@pytest.mark.parametrize("opening", ["preface", "magic"])
def test_preface_then_silence_is_closed_after_inspect(edge, origin, opening):
    """The client preface (the magic and a SETTINGS frame, then the ACK of the edge's), or the magic alone,
    then nothing: no request ever comes, and the connection is closed after timeouts.inspect with GOAWAY."""
    e = start_edge(edge, origin, timeouts=timeouts(inspect="2s", idle="60s"))
    started = time.monotonic()
    client = Client(e, preface=False, ack_settings=opening == "preface")  # the magic alone: nothing else, ever
    try:
        client.send_raw(PREFACE + (SettingsFrame(0).serialize() if opening == "preface" else b""))
        client.wait(lambda: client.goaway is not None, 2 + 4)
        elapsed = time.monotonic() - started
        assert client.goaway is not None, f"no GOAWAY {elapsed:.1f}s after the {opening} (timeouts.inspect is 2s, " \
                                          f"idle 60s): {client.describe()}"
        assert client.wait_closed(3), client.describe()
    finally:
        client.close()
    assert 1.8 <= elapsed < 2 + 4, elapsed
    e.wait_log("timeout: request head")
    e.assert_alive()


def test_a_header_block_trickled_one_continuation_a_second_is_closed_after_inspect(edge, origin):
    e = start_edge(edge, origin, timeouts=timeouts(inspect="2s", idle="60s"))
    client = Client(e)
    try:
        client.wait(lambda: client.server_settings)
        block = client.request_block("/page.txt?trickle", extra=[(f"x-t-{i}", "v" * 20) for i in range(50)])
        stream = client.stream_id()
        client.send(HeadersFrame(stream, block[:20], flags=[]))
        started = time.monotonic()
        for i in range(8):  # one CONTINUATION a second, for longer than timeouts.inspect
            offset = 20 + 10 * i
            if not client.send(ContinuationFrame(stream, block[offset:offset + 10], flags=[])):
                break
            client.wait(lambda: client.goaway is not None, 1)
            if client.goaway is not None or client.closed:
                break
        assert_goaway(client, None, timeout=1)
        assert client.wait_closed(3), client.describe()
        elapsed = time.monotonic() - started
    finally:
        client.close()
    assert elapsed < 2 + 3, elapsed
    assert stream not in client.heads
    e.wait_log("timeout: request head")
    lines = canary(e, origin)
    assert not [line for line in lines if "trickle" in line], lines
    e.assert_alive()


# -- 8. what comes after a protocol error is not kept --------------------------------------------

GARBAGE = {
    # text: its first nine bytes read as the header of a 6.7 MB frame (0x676172 bytes), far past
    # SETTINGS_MAX_FRAME_SIZE, which RFC 9113 4.2 makes a FRAME_SIZE_ERROR as soon as the header is read
    "text": b"garbage!",
    # the largest frame a header can announce (16 MiB - 1), of an unknown type: a FRAME_SIZE_ERROR as well
    "16m-frame": b"\xff\xff\xff\xee\x00\x00\x00\x00\x00",
    # a DATA frame on stream 0: a PROTOCOL_ERROR (RFC 9113 6.1) from its first nine bytes too
    "invalid-frame": b"\x00\x00\x08\x00\x00\x00\x00\x00\x00",
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_bytes_after_a_protocol_error_are_dropped(edge, origin, kind):
    """Garbage, then 50 MB more of it without reading: the edge ends the connection at the first bytes
    that make no sense and keeps none of what follows."""
    e = start_edge(edge, origin)
    served(e)
    peak = Peak(e.pid)
    client = Client(e)
    try:
        client.wait(lambda: client.server_settings)
        client.send_raw(GARBAGE[kind])
        garbage = b"garbage!" * 8192
        sent = 0
        while sent < BIG and client.send_raw(garbage):  # and the client goes on sending, reading nothing
            sent += len(garbage)
            if sent % (1 << 20) < len(garbage):
                peak.sample()
        peak.sample()
        assert client.wait_closed(10), client.describe()
        peak.sample()
    finally:
        client.close()
    assert client.goaway is not None, client.describe()
    assert peak.growth < 4, f"edge RSS grew {peak.growth:.1f} MiB ({peak.before:.1f} -> {peak.peak:.1f}) " \
                            f"while {sent} bytes of garbage were sent; {client.describe()}"
    e.wait_log("error: HTTP/2 ")  # the connection's log line: how it ended
    served(e)
    e.assert_alive()


# -- 9. real clients: slow downloads and big uploads at once -------------------------------------

def test_slow_downloads_and_big_uploads_hold_little(edge, origin, tmp_path):
    e = start_edge(edge, origin, timeouts=timeouts(idle="10s"))
    served(e)
    upload = tmp_path / "upload.bin"
    digest = hashlib.sha256()
    with open(upload, "wb") as f:
        for _ in range(HUGE // (1 << 20)):
            block = os.urandom(1 << 20)
            digest.update(block)
            f.write(block)
    expected = digest.hexdigest()
    base = ["curl", "--http2", "-sS", "-o", "/dev/null", "--resolve", f"{HOST}:{e.https_port}:127.0.0.1",
            "--cacert", local_ca(e), "-w", "%{http_code} %{http_version} %{size_download} %{size_upload}"]
    url = f"https://{HOST}:{e.https_port}"
    peak = Peak(e.pid)
    procs = [subprocess.Popen(base + ["--limit-rate", "2M", "--max-time", "3", f"{url}/huge.bin?down={i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
    procs += [subprocess.Popen(base + ["--max-time", "60", "-T", str(upload), f"{url}/up/{i}.bin"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
    try:
        deadline = time.monotonic() + 60
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            peak.sample()
            time.sleep(0.1)
        peak.sample()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    results = [(p.returncode, *p.communicate(timeout=10)) for p in procs]
    for code, out, err in results[:4]:
        status, version, down, _ = out.split()
        assert code == 28 and (status, version) == ("200", "2"), (code, out, err)  # stopped by --max-time
        assert 1_000_000 < int(down) < 20_000_000, (out, err)
    for code, out, err in results[4:]:
        status, version, _, up = out.split()
        assert code == 0 and status in ("201", "204") and version == "2", (code, out, err)
        assert int(up) == HUGE, out
    assert peak.growth < 32, f"edge RSS grew {peak.growth:.1f} MiB ({peak.before:.1f} -> {peak.peak:.1f})"
    for i in range(4):
        stored = origin.files / "up" / f"{i}.bin"
        assert stored.stat().st_size == HUGE
        with open(stored, "rb") as f:
            assert hashlib.file_digest(f, "sha256").hexdigest() == expected, f"upload {i} arrived altered"
    e.assert_alive()


# -- 10. one stream too many ---------------------------------------------------------------------

def test_the_101st_concurrent_stream_is_refused(edge, origin):
    e = start_edge(edge, origin, timeouts=timeouts(idle="30s"))
    served(e)
    client = Client(e, windows=False)  # the downloads stall on flow control: all 100 stay open
    try:
        client.wait(lambda: client.server_settings)
        streams = [client.request(f"/big.bin?n={i}") for i in range(100)]
        client.wait(lambda: all(s in client.heads for s in streams), 15)
        assert all(client.status(s) == 200 for s in streams), client.describe()
        extra = client.request("/big.bin?n=100")
        client.wait(lambda: extra in client.resets or client.goaway is not None or extra in client.heads, 10)
        assert extra not in client.heads, f"the 101st stream was served: {client.describe()}"
        if client.goaway is not None:
            assert client.goaway.last_stream_id < extra, client.describe()
        else:
            assert client.resets.get(extra) in (REFUSED_STREAM, PROTOCOL_ERROR), client.describe()
            # the connection goes on: a stream let go makes room for a new one
            client.send(RstStreamFrame(streams[0], error_code=CANCEL),
                        WindowUpdateFrame(0, window_increment=2**30))  # room for the stalled ones, and one more
            client.windows = True
            status, _ = client.fetch("/page.txt")
            assert status == 200, client.describe()
    finally:
        client.close()
    lines = canary(e, origin)
    assert not [line for line in lines if "n=100 " in line], lines
    e.assert_alive()





# -- findings of the code review --------------------------------------------------------------------

def origin_requests(origin) -> list[str]:
    return origin.access.read_text().splitlines() if origin.access.exists() else []


def test_a_content_length_with_no_body_to_follow_is_400_and_reaches_nothing(edge, origin):
    """HEADERS with END_STREAM and ``content-length: 38``: relayed, the backend would wait for 38 bytes and
    read them from the next request on that pooled connection (smuggling).  A 400 on the stream instead."""
    e = start_edge(edge, origin)
    before = len(origin_requests(origin))
    client = Client(e)
    try:
        stream = client.request("/page.txt", "POST", extra=[("content-length", "38")])
        client.wait(lambda: stream in client.ended or stream in client.resets)
        assert client.status(stream) == 400, client.describe()
        assert client.fetch("/page.txt") == (200, b"page\n")  # the connection goes on
    finally:
        client.close()
    assert [line for line in origin_requests(origin)[before:] if "POST" in line] == []


def test_a_websocket_answered_200_without_an_upgrade_is_502(edge, origin):
    """nginx answers the upgrade request for a file with 200 and the file: that is no tunnel."""
    e = start_edge(edge, origin)
    client = Client(e)
    try:
        stream = client.stream_id()
        block = client.encoder.encode([(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"),
                                       (":path", "/page.txt"), (":authority", HOST),
                                       ("sec-websocket-version", "13")])
        client.send(*client.header_frames(stream, block, end_stream=False))
        client.wait(lambda: stream in client.heads or stream in client.resets)
        assert client.status(stream) == 502, client.describe()
    finally:
        client.close()
    e.wait_log("answered a WebSocket upgrade with 200")


def test_a_client_goaway_lets_its_downloads_finish(edge, origin):
    """A graceful GOAWAY from the client (a browser closing an idle tab's connection) ends nothing in
    flight: the response completes, then edge closes the connection."""
    e = start_edge(edge, origin)
    client = Client(e, {SettingsFrame.INITIAL_WINDOW_SIZE: 2**31 - 1})
    try:
        client.send(WindowUpdateFrame(0, window_increment=2**31 - 1 - 65535))
        stream = client.request("/big.bin")
        client.wait(lambda: stream in client.heads)
        client.send(GoAwayFrame(0, last_stream_id=0, error_code=0))
        client.wait(lambda: stream in client.ended or stream in client.resets, timeout=30)
        assert stream in client.ended and stream not in client.resets, client.describe()
        assert len(client.bodies[stream]) == BIG
        assert client.wait_closed(), client.describe()
    finally:
        client.close()
    served(e)
