# -*- test-case-name: tests.unit.http.test_h2, tests.e2e.test_h2_server, tests.e2e.test_hostile_h2 -*-
"""The HTTP/2 server codec: h2's ``H2Connection`` behind edge's events, with edge's defences.

Sans-IO like h2 itself: :meth:`H2Codec.receive` takes bytes (and the time)
and returns :mod:`edge.http.events`; the send methods queue frames that
:meth:`H2Codec.data_to_send` hands to whoever owns the socket.

What edge adds to h2:

- at most :data:`MAX_STREAMS` concurrent streams, extended CONNECT
  (RFC 8441) for WebSockets, a 16 MiB connection receive window (a stream
  still gets 64 KiB: that bounds what one stream can make edge hold);
- header blocks: up to :data:`MAX_HEADER_LIST` bytes (RFC 7541 sizes) are
  served; a larger one is still decoded, up to :data:`HARD_HEADER_LIST`, so
  that the HPACK state survives and the stream gets 431; past that h2 stops
  decoding and the connection ends (GOAWAY ``ENHANCE_YOUR_CALM``);
- floods: more than :data:`FLOOD_LIMITS` of a kind of cheap frame
  (RST_STREAM from the client, SETTINGS, PING, PRIORITY, empty DATA,
  unknown frames; WINDOW_UPDATE beyond two per DATA frame edge sent) within
  :data:`FLOOD_PERIOD` seconds end the connection with GOAWAY
  ``ENHANCE_YOUR_CALM`` (rapid reset, CVE-2023-44487, is the RST_STREAM one).

After any connection error the codec reports :class:`~edge.http.events.Ended`
once and ignores every later byte.
"""

from __future__ import annotations

import re
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

from edge.http.events import Aborted, Body, BodyEnd, Draining, Ended, Request, Response, Trailers, WindowOpened
from edge.http import h2_lean
from edge.http.h1 import CONTROLS
from edge.http.hpack_encoder import StaticEncoder

MAX_STREAMS = 100
MAX_FRAME = 16384  # SETTINGS_MAX_FRAME_SIZE's default, which edge keeps
MAX_HEADER_LIST = 65536
HARD_HEADER_LIST = 262144
STREAM_WINDOW = 65535
CONNECTION_WINDOW = 16 * 1024 * 1024
FLOOD_PERIOD = 10.0
FLOOD_LIMITS = {"reset": 500, "settings": 100, "ping": 100, "priority": 1000, "empty data": 1000,
                "unknown": 1000, "window update": 1000}

# h2 remembers up to 65,536 closed streams per connection (to tell a late frame from a protocol error),
# about 100 bytes each: a connection that lives for hours would grow by 6 MB.  A thousand is plenty for
# frames still in flight; a frame for a stream forgotten earlier is answered with RST_STREAM.
MAX_CLOSED_STREAMS = 1000

# Header blocks of plain requests a connection keeps decoded (a client repeating a request sends the same
# block, its fields all from the HPACK table): how many, and the largest kept; at most about 16 x 1.5 KiB
# per connection (the block and its fields), then the cache starts again empty.
BLOCKS = 16
BLOCK_SIZE = 512

STATUS = {code: str(code).encode("ascii") for code in range(100, 600)}
_CONFIG = h2.config.H2Configuration(
    # Request heads are checked here (_malformed_request), each a stream error as RFC 9113 8.1.1 has it; h2's
    # own checks make every one a connection error.  Cookies stay apart (their crumbs count against the
    # header limit as sent); the server joins them for an HTTP/1.1 backend.
    client_side=False, header_encoding=None, validate_inbound_headers=False, normalize_inbound_headers=False,
    # edge builds its response headers itself (lower-case names, values from a checked head)
    validate_outbound_headers=False, normalize_outbound_headers=False)


class _Connection(h2.connection.H2Connection):
    MAX_CLOSED_STREAMS = MAX_CLOSED_STREAMS


class FrameScanner:
    """Follows frame boundaries through a peer's byte stream, ahead of h2.

    Two things h2 cannot be asked to do: refuse a frame longer than the
    maximum on its header (h2 buffers the whole announced frame first, up to
    16 MiB), and let a peer's GOAWAY leave the streams it still serves alone
    (after one, h2 refuses every frame, received or sent).  A GOAWAY is
    therefore taken out of the bytes and reported as :class:`Draining`.
    """

    def __init__(self, preface: int, max_frame: int) -> None:
        self.preface_left = preface  # bytes of the client's connection preface still to come
        self.max_frame = max_frame
        self.frame_left = 0  # bytes of the current frame's body still to come
        self.in_goaway = False
        self.goaway = b""
        self.header_part = b""

    def scan(self, data: bytes) -> tuple[bytes, "Draining | None", int]:
        """``data`` without GOAWAY frames (and without a frame header cut short at its end, held back until
        it is known not to be one); a GOAWAY completed in it; the length of a frame over the maximum (0 if
        none; if not 0, the rest is meaningless: the connection ends)."""
        pos, size = 0, len(data)
        if self.preface_left:
            pos = min(self.preface_left, size)
            self.preface_left -= pos
        out: list[bytes] = []
        keep_from: int | None = 0  # data[keep_from:] is passed on, unless a GOAWAY is being skipped
        cut = False
        draining = None
        if self.in_goaway:  # the rest of a GOAWAY begun in the last data
            keep_from, cut = None, True
        while pos < size:
            left = self.frame_left
            if left:
                take = min(left, size - pos)
                if self.in_goaway:
                    self.goaway += data[pos : pos + take]
                pos += take
                self.frame_left = left - take
                if self.in_goaway and not self.frame_left:
                    draining = self._goaway_done()
                    keep_from = pos
                continue
            part = self.header_part
            head = part + data[pos : pos + 9 - len(part)] if part else data[pos : pos + 9]
            start = pos
            pos += len(head) - len(part)
            length = int.from_bytes(head[:3], "big") if len(head) >= 3 else 0
            if length > self.max_frame:
                return data, None, length
            if len(head) < 9:  # held back: it might be a GOAWAY's
                if keep_from is not None:
                    out.append(data[keep_from:start])
                keep_from, cut = None, True
                self.header_part = head
                break
            self.header_part = b""
            self.frame_left = length
            if head[3] == 0x7:  # GOAWAY: not passed on
                if keep_from is not None:
                    out.append(data[keep_from:start])
                cut = True
                self.in_goaway, self.goaway = True, b""
                keep_from = None
                if not length:
                    draining = self._goaway_done()
                    keep_from = pos
            elif part:  # a header begun in the last data and held back: passed on now
                if keep_from is not None:
                    out.append(data[keep_from:start])
                out.append(part)
                keep_from, cut = start, True
        if not cut:
            return data, draining, 0
        if keep_from is not None:
            out.append(data[keep_from:])
        return b"".join(out), draining, 0

    def _goaway_done(self) -> "Draining":
        body, self.goaway, self.in_goaway = self.goaway, b"", False
        body = body + bytes(8 - len(body)) if len(body) < 8 else body
        return Draining(int.from_bytes(body[:4], "big") & 0x7FFFFFFF, int.from_bytes(body[4:8], "big"))


class _Streams:
    """What both ends of an HTTP/2 connection do with their streams: send, acknowledge, reset."""

    conn: h2.connection.H2Connection
    ended: bool
    data_frames_sent: int
    lean = False  # plain frames sent by edge itself (edge.http.h2_lean)

    # -- output -----------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        return self.conn.data_to_send()

    def respond(self, stream: int, status: int, fields: list[tuple[bytes, bytes]], end: bool) -> bool:
        """Send a response head (or a 1xx one) on ``stream``; ``end`` if no body follows.  False if the
        stream is closed already (the client reset it in the same read: its Aborted event follows)."""
        fields.insert(0, (b":status", STATUS[status]))
        if self.lean and status >= 200:
            conn = self.conn
            state = h2_lean.sending(conn, stream)
            if state is not None and h2_lean.send_head(conn, state, conn.encoder.encode(fields), end):
                return True
        try:
            self.conn.send_headers(stream, fields, end_stream=end)
        except h2.exceptions.ProtocolError:  # StreamClosedError is one
            return False
        return True

    def window(self, stream: int) -> int:
        """How many bytes ``stream`` can take now (its window and the connection's); -1 if it is closed."""
        state = self.conn.streams.get(stream)
        if state is None or state.closed:
            return -1
        return self.conn.local_flow_control_window(stream)

    def send(self, stream: int, data: bytes, end: bool) -> int:
        """Send as much of ``data`` as the windows allow, in frames of the client's size, ending the stream
        with the last one if ``end`` and all of it went.  Returns the bytes sent; -1 if the stream is closed."""
        conn = self.conn
        if self.lean:
            state = h2_lean.sending(conn, stream)
            if state is not None:
                size = len(data)
                room = min(conn.outbound_flow_control_window, state.outbound_flow_control_window)
                frame = conn.max_outbound_frame_size
                if size <= room and size <= frame:  # the usual case: one frame
                    h2_lean.send_data(conn, state, data, end)
                    self.data_frames_sent += 1
                    return size
                sent = 0
                while sent < size and room > 0:
                    piece = data[sent : sent + min(frame, room)]
                    sent += len(piece)
                    room -= len(piece)
                    h2_lean.send_data(conn, state, piece, end and sent == size)
                    self.data_frames_sent += 1
                return sent
        try:
            room = conn.local_flow_control_window(stream)
        except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError):
            return -1
        size = len(data)
        try:
            if size <= room and size <= conn.max_outbound_frame_size:  # the usual case: one frame
                conn.send_data(stream, data, end_stream=end)
                self.data_frames_sent += 1
                return size
            frame = conn.max_outbound_frame_size
            sent = 0
            while sent < size and room > 0:
                piece = data[sent : sent + min(frame, room)]
                sent += len(piece)
                room -= len(piece)
                conn.send_data(stream, piece, end_stream=end and sent == size)
                self.data_frames_sent += 1
            return sent
        except h2.exceptions.ProtocolError:  # the stream was ended or reset meanwhile (StreamClosedError is one)
            return -1

    def end(self, stream: int, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        """End ``stream`` (an empty DATA frame, or trailers)."""
        try:
            if trailers:
                self.conn.send_headers(stream, trailers, end_stream=True)
            else:
                self.conn.end_stream(stream)
        except h2.exceptions.ProtocolError:  # closed, or the connection is ending (StreamClosedError is one)
            pass

    def ack(self, stream: int, size: int) -> None:
        """``size`` flow-controlled bytes of ``stream`` were passed on: the client may send that much more."""
        if size:
            self.conn.acknowledge_received_data(size, stream)

    def reset(self, stream: int, code: int = ErrorCodes.CANCEL) -> None:
        try:
            self.conn.reset_stream(stream, code)
        except h2.exceptions.ProtocolError:  # closed, or the connection is ending (StreamClosedError is one)
            pass

    def goaway(self, code: int = ErrorCodes.NO_ERROR) -> None:
        """Tell the client this connection takes no new streams (then the owner closes it)."""
        if not self.ended:
            self.ended = True
            self.conn.close_connection(code)


class H2Codec(_Streams):
    """One server-side HTTP/2 connection."""

    def __init__(self) -> None:
        conn = self.conn = _Connection(config=_CONFIG)
        conn.encoder = StaticEncoder()  # type: ignore[assignment]  # h2 types it hpack's Encoder; uses encode() and header_table_size
        S = h2.settings.SettingCodes
        conn.local_settings = h2.settings.Settings(client=False, initial_values={
            S.MAX_CONCURRENT_STREAMS: MAX_STREAMS, S.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
            S.INITIAL_WINDOW_SIZE: STREAM_WINDOW, S.ENABLE_CONNECT_PROTOCOL: 1})
        conn.initiate_connection()
        conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        conn.decoder.max_header_list_size = HARD_HEADER_LIST
        self.ended = False
        self.progress = False  # the last bytes received completed a frame
        self.period_start = 0.0
        self.counts = dict.fromkeys(FLOOD_LIMITS, 0)
        self.data_frames_sent = 0
        self.frames = FrameScanner(24, MAX_FRAME)
        self.draining = False  # the client said GOAWAY: its streams finish, no new one is taken
        # The lean path (edge.http.h2_lean): frames whole (the rest of one cut short is held here until it is
        # in), the preface's bytes still to come, inside a header block (CONTINUATION frames follow), and the
        # requests of recent header blocks with the HPACK table they were decoded with.
        self.lean = h2_lean.ON
        self.rest = b""
        self.preface_left = 24
        self.in_block = False
        self.blocks: dict[bytes, tuple[tuple[int, int, int, Any], tuple]] = {}

    # -- input ------------------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> list[Any]:
        """The events ``data`` completes (an :class:`Ended` last when the connection is over)."""
        if self.ended:
            return []
        if now - self.period_start >= FLOOD_PERIOD:
            self.period_start = now
            counts = self.counts
            for kind in counts:
                counts[kind] = 0
            self.data_frames_sent = 0
        data, draining, too_long = self.frames.scan(data)
        if too_long:
            self.ended = True
            self.conn.close_connection(ErrorCodes.FRAME_SIZE_ERROR)
            return [Ended(f"HTTP/2 frame of {too_long} bytes, over the {MAX_FRAME} allowed", True)]
        if draining is not None and draining.code:
            self.ended = True
            return [Ended(f"client sent GOAWAY (error {draining.code})", True)]
        out: list[Any] = []
        progress = draining is not None
        for piece in self._split(data) if self.lean else (data,) if data else ():
            if type(piece) is tuple:  # a plain request's HEADERS frame
                stream, block, frame, depends = piece
                try:
                    request = self._lean_request(stream, block, depends)
                except h2.exceptions.ProtocolError as e:  # as below
                    self.ended = True
                    return [Ended(f"HTTP/2 protocol error: {e}", True)]
                if request is not None:
                    out.append(request)
                    out.append(BodyEnd(stream))  # as h2's StreamEnded
                    progress = True
                    continue
                piece = frame  # not the plain case after all: h2 takes it
            try:
                events = self.conn.receive_data(piece)
            except h2.exceptions.ProtocolError as e:  # nothing else of this read is served: the connection ends
                self.ended = True
                return [Ended(f"HTTP/2 protocol error: {e}", True)]
            if events:
                progress = True
                if self._events(events, out):
                    return out
        self.progress = progress
        if draining is not None:
            self.draining = True
            out.append(draining)
        flood = self._flood()
        if flood is not None:
            self.ended = True
            self.conn.close_connection(ErrorCodes.ENHANCE_YOUR_CALM)
            out.append(Ended(f"HTTP/2 flood: more than {FLOOD_LIMITS[flood]} {flood} frames in {FLOOD_PERIOD:g}s",
                             True))
        return out

    def _split(self, data: bytes) -> list[Any]:
        """``data`` as pieces, in order: bytes of whole frames for h2, and (stream, header block, frame, the
        stream it depends on or -1) for a HEADERS frame that may be a plain request (it ends its stream and
        its header block, no padding, outside any other header block); the rest of a frame cut short is kept
        for the next data."""
        if self.rest:
            data = self.rest + data
        size = len(data)
        pos = start = 0
        if self.preface_left:
            pos = min(self.preface_left, size)
            self.preface_left -= pos
        pieces: list[Any] = []
        in_block = self.in_block
        while size - pos >= 9:
            end = pos + 9 + ((data[pos] << 16) | (data[pos + 1] << 8) | data[pos + 2])
            if end > size:
                break
            kind, flags = data[pos + 3], data[pos + 4]
            if kind == 0x1 and not in_block:
                # END_STREAM and END_HEADERS, not PADDED; PRIORITY's five bytes (a browser's) are passed over
                skip = 5 if flags & 0x20 else 0
                if flags & 0x0D == 0x05 and end - pos >= 9 + skip:
                    if start < pos:
                        pieces.append(data[start:pos])
                    depends = int.from_bytes(data[pos + 9 : pos + 13], "big") & 0x7FFFFFFF if skip else -1
                    pieces.append((int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFFFFFF,
                                   data[pos + 9 + skip : end], data[pos:end], depends))
                    start = end
                elif not flags & 0x4:
                    in_block = True
            elif kind == 0x9 and flags & 0x4 or kind == 0x5 and not flags & 0x4:  # a block's end, or a PUSH_PROMISE's
                in_block = kind == 0x5
            pos = end
        self.in_block = in_block
        if start < pos:
            pieces.append(data[start:pos])
        self.rest = data[pos:] if pos < size else b""
        return pieces

    def _lean_request(self, stream: int, block: bytes, depends: int) -> Request | None:
        """The request of a plain HEADERS frame, its stream opened in h2 as h2 would; None if h2 must take the
        frame (not a new stream h2 would open without a word, or one that depends on itself: h2's error).
        A header block seen before on this connection, with the HPACK table as it was then and left as it
        was, is not decoded again.  Priority information counts as h2's PriorityUpdated does, nothing more."""
        conn = self.conn
        if depends == stream or not h2_lean.can_open(conn, stream):
            return None
        mark = h2_lean.table_mark(conn)
        known = self.blocks.get(block)
        if known is not None and h2_lean.same_table(known[0], mark):
            head = known[1]
        else:
            head = self._head(h2_lean.decode(conn, block))
            if len(block) <= BLOCK_SIZE and h2_lean.same_table(mark, h2_lean.table_mark(conn)):
                if len(self.blocks) >= BLOCKS:
                    self.blocks.clear()
                self.blocks[block] = (mark, head)
        h2_lean.open_stream(conn, stream)
        if depends >= 0:
            self.counts["priority"] += 1
        method, target, authority, fields, protocol, oversized, malformed = head
        return Request(stream, method, target, authority, list(fields), True, protocol, oversized, malformed)

    def _events(self, events: list[Any], out: list[Any]) -> bool:
        """h2's ``events`` as edge's, appended to ``out``; True if the connection ended."""
        counts = self.counts
        for event in events:
            if type(event) is h2.events.RequestReceived:
                out.append(self._request(event))
            elif type(event) is h2.events.DataReceived:
                out.append(Body(event.stream_id, event.data, event.flow_controlled_length))
                if not event.data and event.stream_ended is None:
                    counts["empty data"] += 1
            elif type(event) is h2.events.StreamEnded:
                out.append(BodyEnd(event.stream_id))
            elif type(event) is h2.events.WindowUpdated:
                out.append(WindowOpened(event.stream_id))
                counts["window update"] += 1
            elif type(event) is h2.events.StreamReset:
                if event.remote_reset:
                    counts["reset"] += 1
                out.append(Aborted(event.stream_id, event.error_code))
            elif type(event) is h2.events.RemoteSettingsChanged:
                counts["settings"] += 1
                if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                    out.append(WindowOpened(0))
            elif type(event) is h2.events.PingReceived:
                counts["ping"] += 1
            elif type(event) is h2.events.PriorityUpdated:
                counts["priority"] += 1
            elif type(event) is h2.events.ConnectionTerminated:
                self.ended = True
                code = event.error_code
                out.append(Ended(f"client sent GOAWAY ({getattr(code, 'name', code)})", code != 0))
                return True
            elif type(event) is h2.events.UnknownFrameReceived:
                counts["unknown"] += 1
            elif type(event) is h2.events.SettingsAcknowledged:
                self.conn.decoder.max_header_list_size = HARD_HEADER_LIST
            elif type(event) is h2.events.TrailersReceived:  # a StreamEnded follows
                trailers = list(event.headers)
                if any(name[:1] == b":" for name, _ in trailers) or _malformed_fields(trailers) is not None:
                    self.reset(event.stream_id, ErrorCodes.PROTOCOL_ERROR)
                    out.append(Aborted(event.stream_id, ErrorCodes.PROTOCOL_ERROR))
                else:
                    out.append(Trailers(event.stream_id, trailers))
        return False

    def _flood(self) -> str | None:
        counts = self.counts
        for kind, limit in FLOOD_LIMITS.items():
            if kind == "window update":
                limit += 2 * self.data_frames_sent  # a stream and a connection update for each DATA frame
            if counts[kind] > limit:
                return kind
        return None

    def _request(self, event: Any) -> Request:
        method, target, authority, fields, protocol, oversized, malformed = self._head(event.headers)
        return Request(event.stream_id, method, target, authority, fields, event.stream_ended is not None, protocol,
                       oversized, malformed)

    @staticmethod
    def _head(headers: Any) -> tuple[bytes, bytes, bytes | None, list[tuple[bytes, bytes]], bytes | None, bool,
                                     str | None]:
        """A request's header list as (method, target, authority, fields, protocol, oversized, malformed)."""
        method = target = authority = protocol = scheme = None
        fields = []
        size = 0
        malformed = None
        pseudo_done = False
        for name, value in headers:
            size += len(name) + len(value) + 32
            if name[:1] == b":":
                if pseudo_done:
                    malformed = "a pseudo-header after a header"
                elif name == b":method" and method is None:
                    method = value
                elif name == b":path" and target is None:
                    target = value
                elif name == b":authority" and authority is None:
                    authority = value
                elif name == b":scheme" and scheme is None:
                    scheme = value
                elif name == b":protocol" and protocol is None:
                    protocol = value
                else:
                    malformed = f"unknown or repeated pseudo-header {name[:40]!r}"
            else:
                pseudo_done = True
                fields.append((name, value))
        if malformed is None:
            malformed = _malformed_request(method, scheme, target, protocol, fields, authority)
        return method or b"", target or b"", authority, fields, protocol, size > MAX_HEADER_LIST, malformed


# RFC 9113 8.2.1, 8.2.2: a field name is a lower-case token; a value holds no control character but HTAB
# (NUL, CR and LF are what RFC 9113 forbids outright; the others would not pass an HTTP/1.1 backend either)
# and neither starts nor ends with whitespace; connection-specific fields have no place in HTTP/2.
_FIELD_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9a-z-]+")
_CONNECTION_SPECIFIC = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"))


def _malformed_fields(fields: list[tuple[bytes, bytes]]) -> str | None:
    """Why a header list (without pseudo-headers) is malformed; None if it is not."""
    for name, value in fields:
        if _FIELD_NAME.fullmatch(name) is None:
            return f"invalid header name {name[:40]!r}"
        if value and (value[0] in b" \t" or value[-1] in b" \t"):
            return f"whitespace around the value of {name[:40]!r}"
        if name in _CONNECTION_SPECIFIC or (name == b"te" and value.lower() != b"trailers"):
            return f"connection-specific header {name[:40]!r}"
    values = b"".join(value for _, value in fields)
    if len(values.translate(None, CONTROLS)) != len(values) or values.find(b"\r") >= 0 or values.find(b"\n") >= 0:
        return "control character in a header value"
    return None


_PSEUDO_VALUE = re.compile(rb"[!-~]+")  # visible ASCII: a pseudo-header ends up in an HTTP/1.1 request line or Host


def _malformed_request(method: bytes | None, scheme: bytes | None, target: bytes | None, protocol: bytes | None,
                       fields: list[tuple[bytes, bytes]], authority: bytes | None = None) -> str | None:
    """Why a request head breaks RFC 9113 8.3 (pseudo-headers) or 8.2 (fields); None if it does not."""
    if not method:
        return "missing :method"
    for name, value in ((b":method", method), (b":scheme", scheme), (b":path", target), (b":protocol", protocol),
                        (b":authority", authority)):
        if value is not None and _PSEUDO_VALUE.fullmatch(value) is None:
            return f"invalid {name.decode()}"
    if method == b"CONNECT":
        if protocol is None:
            return "CONNECT without :protocol"  # a tunnel to anywhere: edge is not a forward proxy
        if not scheme or not target:
            return "extended CONNECT without :scheme or :path"
    else:
        if protocol is not None:
            return ":protocol without CONNECT"
        if not scheme or not target:
            return "missing :scheme or :path"
    return _malformed_fields(fields)


_CLIENT_CONFIG = h2.config.H2Configuration(
    client_side=True, header_encoding=None, validate_inbound_headers=True, normalize_inbound_headers=False,
    validate_outbound_headers=False, normalize_outbound_headers=False)


class H2ClientCodec(_Streams):
    """One HTTP/2 connection to a backend server (h2c with prior knowledge, or ALPN ``h2``).

    The backend is trusted more than a client (no flood counting), but its
    header lists are bounded like a client's and a protocol error ends the
    connection.  Stream windows are 64 KiB: a response is acknowledged as the
    client takes it, so a slow client slows its stream, not the connection.
    """

    def __init__(self) -> None:
        conn = self.conn = _Connection(config=_CLIENT_CONFIG)
        conn.encoder = StaticEncoder()  # type: ignore[assignment]  # h2 types it hpack's Encoder; uses encode() and header_table_size
        S = h2.settings.SettingCodes
        conn.local_settings = h2.settings.Settings(client=True, initial_values={
            S.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST, S.INITIAL_WINDOW_SIZE: STREAM_WINDOW, S.ENABLE_PUSH: 0})
        conn.initiate_connection()
        conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.ended = False
        self.data_frames_sent = 0
        self.settings_seen = False
        self.draining = False  # the server said GOAWAY: the streams it took finish, no new one
        self.pinged = False  # a PING is out and its ACK not back
        self.frames = FrameScanner(0, 1 << 24)

    def room(self) -> int:
        """How many more streams the server takes now: at most MAX_STREAMS (one connection's 16 MiB window
        is shared by its streams), and a conservative 10 until the server's SETTINGS have come."""
        if self.ended or self.draining:
            return 0
        conn = self.conn
        limit = min(conn.remote_settings.max_concurrent_streams, MAX_STREAMS) if self.settings_seen else 10
        if conn.highest_outbound_stream_id is not None and conn.highest_outbound_stream_id > 2**31 - 20000:
            return 0  # stream ids run out: this connection takes no more
        return limit - conn.open_outbound_streams

    def ping(self) -> None:
        """Ask the server for a PING ACK (whether the connection still carries anything)."""
        if not self.pinged and not self.ended:
            self.pinged = True
            self.conn.ping(b"edge-ok?")

    def request(self, fields: list[tuple[bytes, bytes]], end: bool) -> int:
        """Open a stream with this request head (pseudo-headers first); its id."""
        stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream, fields, end_stream=end)
        return stream

    def receive(self, data: bytes) -> list[Any]:
        if self.ended:
            return []
        data, draining, _ = self.frames.scan(data)
        try:
            events = self.conn.receive_data(data) if data else []
        except h2.exceptions.ProtocolError as e:
            self.ended = True
            return [Ended(f"HTTP/2 protocol error from the server: {e}", True)]
        out: list[Any] = []
        if draining is not None:
            self.draining = True
            if draining.code:  # an error: the server is done with every stream
                self.ended = True
                self.conn.close_connection()
                return [Ended(f"the server sent GOAWAY (error {draining.code})", True)]
        for event in events:
            if type(event) is h2.events.DataReceived:
                out.append(Body(event.stream_id, event.data, event.flow_controlled_length))
            elif type(event) is h2.events.ResponseReceived:
                status, fields = 0, []
                for name, value in event.headers:
                    if name == b":status":
                        status = int(value)
                    elif name[0] != 58:
                        fields.append((name, value))
                out.append(Response(event.stream_id, status, fields, event.stream_ended is not None))
            elif type(event) is h2.events.TrailersReceived:
                out.append(Trailers(event.stream_id, list(event.headers)))
            elif type(event) is h2.events.StreamEnded:
                out.append(BodyEnd(event.stream_id))
            elif type(event) is h2.events.WindowUpdated:
                out.append(WindowOpened(event.stream_id))
            elif type(event) is h2.events.StreamReset:
                out.append(Aborted(event.stream_id, event.error_code))
            elif type(event) is h2.events.RemoteSettingsChanged:
                self.settings_seen = True
                out.append(WindowOpened(0))  # more streams or larger windows may be allowed
            elif type(event) is h2.events.PingAckReceived:
                self.pinged = False
            elif type(event) is h2.events.ConnectionTerminated:
                self.ended = True
                code = event.error_code
                out.append(Ended(f"the server sent GOAWAY ({getattr(code, 'name', code)})", code != 0))
                return out
            # InformationalResponseReceived (100, 103): the final response follows
        if draining is not None:
            out.append(draining)
        return out
