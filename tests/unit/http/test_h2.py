"""The HTTP/2 server codec (edge.http.h2), driven by a real h2 client with bytes passed by hand.

No sockets, no reactor: the client is an ``h2.connection.H2Connection`` on the
client side, and every test moves bytes between it and the codec itself
(``now`` is passed explicitly, so flood periods are exact).
"""

from __future__ import annotations

import functools
import struct

import h2.config
import h2.connection
import h2.events
import hpack
import pytest
from h2.errors import ErrorCodes
from h2.settings import SettingCodes, Settings
from hypothesis import given, settings, strategies as st
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from edge.http.events import Aborted, Body, BodyEnd, Draining, Ended, Request, WindowOpened, Trailers
from edge.http.h2 import (
    CONNECTION_WINDOW,
    FLOOD_LIMITS,
    FLOOD_PERIOD,
    HARD_HEADER_LIST,
    MAX_CLOSED_STREAMS,
    MAX_HEADER_LIST,
    MAX_STREAMS,
    H2Codec,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
LATER = 100.0  # a time well past the handshake's flood period
RAW_PING = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"12345678"  # a well-formed PING


# -- helpers -----------------------------------------------------------------------------------


def make_client(**settings: int) -> h2.connection.H2Connection:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    if settings:
        client.local_settings = Settings(
            client=True, initial_values={getattr(SettingCodes, k): v for k, v in settings.items()})
    client.initiate_connection()
    client.max_inbound_frame_size = client.local_settings.max_frame_size
    return client


def connect(client: h2.connection.H2Connection | None = None, now: float = 0.0):
    """A codec and a client that exchanged prefaces, SETTINGS and their ACKs."""
    client = client or make_client()
    codec = H2Codec()
    codec.receive(client.data_to_send(), now)
    client.receive_data(codec.data_to_send())
    assert codec.receive(client.data_to_send(), now) == []  # the client's SETTINGS ACK
    return client, codec


def to_codec(client, codec, now: float = 0.0) -> list:
    return codec.receive(client.data_to_send(), now)


def to_client(client, codec) -> list:
    return client.receive_data(codec.data_to_send())


def head(method: bytes = b"GET", path: bytes = b"/", authority: bytes = b"a.test", extra=()) -> list:
    return [(b":method", method), (b":scheme", b"https"), (b":authority", authority), (b":path", path), *extra]


def frames(data: bytes) -> list[Frame]:
    """The frames in ``data`` (whole frames only)."""
    out = []
    view = memoryview(data)
    while view:
        frame, length = Frame.parse_frame_header(view[:9])
        frame.parse_body(view[9 : 9 + length])
        out.append(frame)
        view = view[9 + length :]
    return out


def open_get(client, codec, now: float = 0.0) -> int:
    stream = client.get_next_available_stream_id()
    client.send_headers(stream, head(), end_stream=True)
    events = to_codec(client, codec, now)
    assert events[0].stream == stream and isinstance(events[0], Request)
    return stream


def ended(events) -> list[Ended]:
    return [e for e in events if isinstance(e, Ended)]


def goaway_code(client, codec) -> int:
    terminated = [e for e in to_client(client, codec) if isinstance(e, h2.events.ConnectionTerminated)]
    assert len(terminated) == 1
    return terminated[0].error_code


def raw_connection(now: float = 0.0) -> H2Codec:
    """A codec that took a preface and an empty SETTINGS frame written by hand."""
    codec = H2Codec()
    assert codec.receive(PREFACE + SettingsFrame(0).serialize(), now) == []
    codec.data_to_send()
    return codec


def header_size(fields) -> int:
    return sum(len(name) + len(value) + 32 for name, value in fields)


# -- requests ----------------------------------------------------------------------------------


def test_get_is_a_request_without_pseudo_headers_and_ended():
    client, codec = connect()
    client.send_headers(1, head(path=b"/x/y?z=1", authority=b"a.test:8443",
                                extra=[(b"accept", b"*/*"), (b"user-agent", b"t")]), end_stream=True)
    events = to_codec(client, codec)
    assert events == [
        Request(1, b"GET", b"/x/y?z=1", b"a.test:8443", [(b"accept", b"*/*"), (b"user-agent", b"t")], True),
        BodyEnd(1),
    ]
    assert events[0].protocol is None and events[0].oversized is False


def test_request_without_authority():
    client, codec = connect()
    client.send_headers(1, [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"),
                            (b"host", b"h.test")], end_stream=True)
    assert to_codec(client, codec) == [Request(1, b"GET", b"/", None, [(b"host", b"h.test")], True), BodyEnd(1)]


def test_post_body_events_count_padding():
    client, codec = connect()
    client.send_headers(1, head(b"POST", b"/upload", extra=[(b"content-length", b"11")]))
    client.send_data(1, b"hello", pad_length=10)  # 5 data + 10 padding + 1 pad-length byte
    client.send_data(1, b" world", end_stream=True)
    events = to_codec(client, codec)
    assert events == [
        Request(1, b"POST", b"/upload", b"a.test", [(b"content-length", b"11")], False),
        Body(1, b"hello", 16),
        Body(1, b" world", 6),
        BodyEnd(1),
    ]


def test_requests_on_several_streams_keep_their_ids():
    client, codec = connect()
    client.send_headers(1, head(path=b"/one"))
    client.send_headers(3, head(path=b"/three"), end_stream=True)
    client.send_data(1, b"a", end_stream=True)
    events = to_codec(client, codec)
    assert [(type(e).__name__, e.stream) for e in events] == [
        ("Request", 1), ("Request", 3), ("BodyEnd", 3), ("Body", 1), ("BodyEnd", 1)]
    assert events[0].target == b"/one" and events[1].target == b"/three"


def test_trailers_are_reported_and_the_body_ends():
    client, codec = connect()
    client.send_headers(1, head(b"POST"))
    client.send_data(1, b"x")
    client.send_headers(1, [(b"x-checksum", b"1")], end_stream=True)
    assert to_codec(client, codec) == [Request(1, b"POST", b"/", b"a.test", [], False), Body(1, b"x", 1),
                                       Trailers(1, [(b"x-checksum", b"1")]), BodyEnd(1)]


def test_client_reset_is_aborted():
    client, codec = connect()
    client.send_headers(1, head(b"POST"))
    client.reset_stream(1, ErrorCodes.CANCEL)
    assert to_codec(client, codec) == [Request(1, b"POST", b"/", b"a.test", [], False), Aborted(1, ErrorCodes.CANCEL)]


# -- settings and extended CONNECT -------------------------------------------------------------


def test_settings_advertised():
    client, codec = connect()
    remote = client.remote_settings
    assert remote.max_concurrent_streams == MAX_STREAMS == 100
    assert remote[SettingCodes.ENABLE_CONNECT_PROTOCOL] == 1
    assert remote.max_header_list_size == MAX_HEADER_LIST == 65536
    assert remote.initial_window_size == 65535
    # the connection window is 16 MiB, a stream's stays 64 KiB
    assert client.outbound_flow_control_window == CONNECTION_WINDOW == 16 * 1024 * 1024
    client.send_headers(1, head(b"POST"))
    to_codec(client, codec)
    assert client.local_flow_control_window(1) == 65535


def test_handshake_events():
    client = make_client()
    codec = H2Codec()
    # the client's SETTINGS (initial window size among them) and nothing else
    assert codec.receive(client.data_to_send(), 0.0) == [WindowOpened(0)]
    assert codec.progress is True
    server_frames = frames(codec.data_to_send())
    assert isinstance(server_frames[0], SettingsFrame) and "ACK" not in server_frames[0].flags
    assert any(isinstance(f, WindowUpdateFrame) and f.stream_id == 0
               and f.window_increment == CONNECTION_WINDOW - 65535 for f in server_frames)


def test_extended_connect_websocket():
    client, codec = connect()
    client.send_headers(1, [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"),
                            (b":path", b"/chat"), (b":authority", b"a.test"), (b"sec-websocket-version", b"13")])
    assert to_codec(client, codec) == [
        Request(1, b"CONNECT", b"/chat", b"a.test", [(b"sec-websocket-version", b"13")], False, b"websocket")]


# -- responses ---------------------------------------------------------------------------------


def test_respond_send_end_reach_the_client():
    client, codec = connect()
    stream = open_get(client, codec)
    codec.respond(stream, 200, [(b"content-type", b"text/plain")], False)
    assert codec.send(stream, b"hello", False) == 5
    assert codec.send(stream, b" there", False) == 6
    codec.end(stream)  # an empty DATA frame with END_STREAM
    events = to_client(client, codec)
    assert [type(e) for e in events] == [h2.events.ResponseReceived, h2.events.DataReceived,
                                         h2.events.DataReceived, h2.events.DataReceived, h2.events.StreamEnded]
    assert events[0].headers == [(b":status", b"200"), (b"content-type", b"text/plain")]
    assert [e.data for e in events[1:4]] == [b"hello", b" there", b""]
    codec.end(stream)  # ending a closed stream is harmless
    codec.reset(stream)
    assert codec.data_to_send() == b""


def test_respond_with_end_and_informational():
    client, codec = connect()
    stream = open_get(client, codec)
    codec.respond(stream, 103, [(b"link", b"</a.css>; rel=preload")], False)
    codec.respond(stream, 404, [], True)
    events = to_client(client, codec)
    assert [type(e) for e in events] == [h2.events.InformationalResponseReceived, h2.events.ResponseReceived,
                                         h2.events.StreamEnded]
    assert events[0].headers == [(b":status", b"103"), (b"link", b"</a.css>; rel=preload")]
    assert events[1].headers == [(b":status", b"404")]


def test_end_with_trailers():
    client, codec = connect()
    stream = open_get(client, codec)
    codec.respond(stream, 200, [], False)
    codec.send(stream, b"x", False)
    codec.end(stream, [(b"grpc-status", b"0")])
    events = to_client(client, codec)
    trailers = [e for e in events if isinstance(e, h2.events.TrailersReceived)]
    assert trailers[0].headers == [(b"grpc-status", b"0")]
    assert isinstance(events[-1], h2.events.StreamEnded)


def test_reset_and_goaway_from_edge():
    client, codec = connect()
    stream = open_get(client, codec)
    codec.reset(stream)
    events = to_client(client, codec)
    assert [(type(e), e.error_code) for e in events] == [(h2.events.StreamReset, ErrorCodes.CANCEL)]
    codec.goaway()
    assert codec.ended
    assert goaway_code(client, codec) == ErrorCodes.NO_ERROR
    assert codec.receive(RAW_PING, 1.0) == []
    codec.goaway()  # a second one queues nothing
    assert codec.data_to_send() == b""


def test_send_splits_into_client_frame_size_and_stops_at_the_window():
    client = make_client(MAX_FRAME_SIZE=20000, INITIAL_WINDOW_SIZE=50000)
    client.increment_flow_control_window(1_000_000)  # the connection window is not the limit
    client, codec = connect(client)
    assert codec.conn.max_outbound_frame_size == 20000
    stream = open_get(client, codec)
    codec.respond(stream, 200, [], False)
    body = bytes(range(256)) * 508  # 130,048 bytes
    assert codec.window(stream) == 50000

    sent = codec.send(stream, body, True)
    assert sent == 50000
    out = frames(codec.data_to_send())
    data = [f for f in out if isinstance(f, DataFrame)]
    assert [len(f.data) for f in data] == [20000, 20000, 10000]
    assert all("END_STREAM" not in f.flags for f in data)
    assert codec.window(stream) == 0
    assert codec.send(stream, body[sent:], True) == 0  # no room: nothing sent
    assert codec.data_to_send() == b""

    received = bytearray()

    def deliver(out_bytes):
        for event in client.receive_data(out_bytes):
            if isinstance(event, h2.events.DataReceived):
                received.extend(event.data)
                client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        return [e for e in to_codec(client, codec) if e == WindowOpened(stream)]

    # the client took the frames and opened the window again
    assert deliver(b"".join(f.serialize() for f in out)) != []
    assert codec.window(stream) == 50000
    more = codec.send(stream, body[sent:], True)
    assert more == 50000
    sent += more
    out = frames(codec.data_to_send())
    assert [len(f.data) for f in out if isinstance(f, DataFrame)] == [20000, 20000, 10000]
    assert all("END_STREAM" not in f.flags for f in out)
    deliver(b"".join(f.serialize() for f in out))

    rest = codec.send(stream, body[sent:], True)
    assert rest == len(body) - 100000 == 30048
    out = frames(codec.data_to_send())
    data = [f for f in out if isinstance(f, DataFrame)]
    assert [len(f.data) for f in data] == [20000, 10048]
    assert ["END_STREAM" in f.flags for f in data] == [False, True]  # the last frame only
    deliver(b"".join(f.serialize() for f in out))
    assert bytes(received) == body


def test_send_ends_the_stream_when_everything_fits_exactly():
    client = make_client(INITIAL_WINDOW_SIZE=40000)
    client, codec = connect(client)
    stream = open_get(client, codec)
    codec.respond(stream, 200, [], False)
    assert codec.send(stream, b"a" * 40000, True) == 40000
    data = [f for f in frames(codec.data_to_send()) if isinstance(f, DataFrame)]
    assert [len(f.data) for f in data] == [16384, 16384, 7232]  # h2's default SETTINGS_MAX_FRAME_SIZE
    assert ["END_STREAM" in f.flags for f in data] == [False, False, True]


def test_send_without_end_leaves_the_stream_open():
    client, codec = connect()
    stream = open_get(client, codec)
    codec.respond(stream, 200, [], False)
    assert codec.send(stream, b"a" * 100, False) == 100
    assert codec.send(stream, b"", True) == 0
    data = [f for f in frames(codec.data_to_send()) if isinstance(f, DataFrame)]
    assert [(len(f.data), "END_STREAM" in f.flags) for f in data] == [(100, False), (0, True)]


def test_send_is_bounded_by_the_connection_window_too():
    client = make_client(INITIAL_WINDOW_SIZE=1_000_000)
    client, codec = connect(client)
    stream = open_get(client, codec)
    codec.respond(stream, 200, [], False)
    assert codec.window(stream) == 65535  # the client did not open its connection window
    assert codec.send(stream, b"b" * 200000, True) == 65535
    data = [f for f in frames(codec.data_to_send()) if isinstance(f, DataFrame)]
    assert sum(len(f.data) for f in data) == 65535
    assert not any("END_STREAM" in f.flags for f in data)


def close_by_ending(client, codec, stream):
    codec.respond(stream, 200, [], False)
    codec.send(stream, b"done", True)
    to_client(client, codec)


def close_by_client_reset(client, codec, stream):
    codec.respond(stream, 200, [], False)
    to_client(client, codec)
    client.reset_stream(stream, ErrorCodes.CANCEL)
    assert to_codec(client, codec) == [Aborted(stream, ErrorCodes.CANCEL)]


def close_by_edge_reset(client, codec, stream):
    codec.reset(stream)
    to_client(client, codec)


CLOSINGS = [close_by_ending, close_by_client_reset, close_by_edge_reset]


@pytest.mark.parametrize("close", CLOSINGS, ids=["ended", "client-reset", "edge-reset"])
def test_send_and_window_on_a_closed_stream_return_minus_one(close):
    """``window`` and ``send`` say -1 for a closed stream (the docstrings' contract), right after it closed."""
    client, codec = connect()
    stream = open_get(client, codec)
    close(client, codec, stream)
    assert codec.send(stream, b"late", True) == -1
    assert codec.send(stream, b"", True) == -1
    assert codec.window(stream) == -1
    assert codec.data_to_send() == b""


@pytest.mark.parametrize("close", CLOSINGS, ids=["ended", "client-reset", "edge-reset"])
def test_send_on_a_closed_stream_h2_has_forgotten(close):
    client, codec = connect()
    stream = open_get(client, codec)
    close(client, codec, stream)
    open_get(client, codec)  # h2 drops closed streams from its table when it counts open ones
    assert stream not in codec.conn.streams
    assert codec.window(stream) == -1
    assert codec.send(stream, b"late", True) == -1


def test_window_update_and_reset_in_one_read_then_send():
    """The client opens the window of a stream with data pending and resets it, in one read: the relay
    reacts to WindowOpened by sending before it sees Aborted, and the codec must answer -1, not raise."""
    client, codec = connect()
    stream = open_get(client, codec)
    codec.respond(stream, 200, [], False)
    assert codec.send(stream, b"x" * 70000, False) == 65535
    to_client(client, codec)
    client.increment_flow_control_window(1000, stream)
    client.increment_flow_control_window(100000)
    client.reset_stream(stream, ErrorCodes.CANCEL)
    events = to_codec(client, codec)
    assert events == [WindowOpened(stream), WindowOpened(0), Aborted(stream, ErrorCodes.CANCEL)]
    assert codec.send(stream, b"x" * 4465, False) == -1


def test_respond_to_a_request_reset_in_the_same_read():
    """HEADERS and RST_STREAM in one read (rapid reset): the relay answers the Request (a 404, say) before it
    sees Aborted; like ``end`` and ``reset``, ``respond`` on a closed stream must not raise."""
    client, codec = connect()
    client.send_headers(1, head(authority=b"unrouted.test"), end_stream=True)
    client.reset_stream(1, ErrorCodes.CANCEL)
    events = to_codec(client, codec)
    assert events == [Request(1, b"GET", b"/", b"unrouted.test", [], True), BodyEnd(1), Aborted(1, ErrorCodes.CANCEL)]
    codec.respond(1, 404, [(b"content-length", b"3")], False)
    assert codec.send(1, b"no\n", True) == -1
    assert not any(isinstance(f, HeadersFrame) for f in frames(codec.data_to_send()))


def test_send_to_an_unknown_stream():
    client, codec = connect()
    open_get(client, codec)
    assert codec.send(7, b"x", True) == -1
    assert codec.window(7) == -1
    codec.end(7)
    codec.reset(7)
    assert codec.data_to_send() == b""


# -- acknowledgements --------------------------------------------------------------------------


def test_ack_reopens_the_client_window_only_after_ack():
    client, codec = connect()
    client.send_headers(1, head(b"POST"))
    for _ in range(4):
        client.send_data(1, b"z" * 10000)
    assert client.local_flow_control_window(1) == 65535 - 40000
    events = to_codec(client, codec)
    assert sum(e.size for e in events if isinstance(e, Body)) == 40000
    # received but not passed on: no WINDOW_UPDATE for the stream
    assert not any(isinstance(f, WindowUpdateFrame) for f in frames(codec.data_to_send()))
    to_client(client, codec)
    assert client.local_flow_control_window(1) == 65535 - 40000
    codec.ack(1, 0)  # nothing passed on: nothing sent
    assert codec.data_to_send() == b""
    codec.ack(1, 40000)
    updates = [f for f in frames(codec.data_to_send()) if isinstance(f, WindowUpdateFrame)]
    assert [(f.stream_id, f.window_increment) for f in updates] == [(1, 40000)]
    client.receive_data(b"".join(f.serialize() for f in updates))
    assert client.local_flow_control_window(1) == 65535


def test_ack_counts_padding():
    client, codec = connect()
    client.send_headers(1, head(b"POST"))
    for _ in range(4):
        client.send_data(1, b"p" * 10000, pad_length=255)
    events = to_codec(client, codec)
    size = sum(e.size for e in events if isinstance(e, Body))
    assert size == 4 * (10000 + 256)
    to_client(client, codec)
    assert client.local_flow_control_window(1) == 65535 - size
    codec.ack(1, size)
    to_client(client, codec)
    assert client.local_flow_control_window(1) == 65535


# -- header blocks -----------------------------------------------------------------------------


def without_huffman(client):
    """Pure-Python Huffman coding of a 256 KiB header block takes seconds: send literals instead."""
    client.encoder.encode = functools.partial(client.encoder.encode, huffman=False)
    return client


def padded_head(total: int) -> list:
    """A GET head whose header list is ``total`` bytes (RFC 7541 sizes)."""
    base = head() + [(b"x-pad", b"")]
    return head() + [(b"x-pad", b"v" * (total - header_size(base)))]


@pytest.mark.parametrize("total, oversized", [(MAX_HEADER_LIST, False), (MAX_HEADER_LIST + 1, True),
                                              (100_000, True), (HARD_HEADER_LIST, True)])
def test_header_list_over_the_limit_is_oversized_and_the_connection_survives(total, oversized):
    client, codec = connect(without_huffman(make_client()))
    fields = padded_head(total)
    assert header_size(fields) == total
    client.send_headers(1, fields, end_stream=True)
    events = to_codec(client, codec)
    assert [type(e) for e in events] == [Request, BodyEnd]
    assert events[0].oversized is oversized
    assert events[0].fields == [fields[-1]]
    assert not codec.ended
    # the HPACK state survived: the next requests decode
    client.send_headers(3, fields, end_stream=True)
    events = to_codec(client, codec)
    assert events[0] == Request(3, b"GET", b"/", b"a.test", [fields[-1]], True, None, oversized)
    client.send_headers(5, head(path=b"/small"), end_stream=True)
    assert to_codec(client, codec) == [Request(5, b"GET", b"/small", b"a.test", [], True), BodyEnd(5)]


def test_header_list_size_counts_cookie_crumbs_as_sent():
    """The limit is on the header list as sent (RFC 7541 sizes, what SETTINGS_MAX_HEADER_LIST_SIZE
    means): the ``cookie`` crumbs count one by one (the server joins them for an HTTP/1.1 backend)."""
    client, codec = connect(without_huffman(make_client()))
    fields = head() + [(b"cookie", b"c=%d" % i) for i in range(2000)]
    assert header_size(fields) == 87062 > MAX_HEADER_LIST
    client.send_headers(1, fields, end_stream=True)
    events = to_codec(client, codec)
    assert [type(e) for e in events] == [Request, BodyEnd]
    assert events[0].fields == [(b"cookie", b"c=%d" % i) for i in range(2000)]
    assert events[0].oversized is True


def test_oversized_headers_arriving_with_the_settings_ack():
    client = without_huffman(make_client())
    codec = H2Codec()
    codec.receive(client.data_to_send(), 0.0)
    client.receive_data(codec.data_to_send())
    # the client's SETTINGS ACK and a large request in one read
    client.send_headers(1, padded_head(100_000), end_stream=True)
    events = to_codec(client, codec)
    assert [type(e) for e in events] == [Request, BodyEnd] and events[0].oversized
    client.send_headers(3, padded_head(200_000), end_stream=True)
    events = to_codec(client, codec)
    assert [type(e) for e in events] == [Request, BodyEnd] and events[0].oversized


def test_header_list_over_the_hard_limit_ends_the_connection():
    client, codec = connect(without_huffman(make_client()))
    client.send_headers(1, head(), end_stream=True)
    to_codec(client, codec)
    client.send_headers(3, padded_head(HARD_HEADER_LIST + 1), end_stream=True)
    events = to_codec(client, codec)
    assert len(events) == 1 and isinstance(events[0], Ended) and events[0].error is True
    assert events[0].reason.startswith("HTTP/2 protocol error")
    assert goaway_code(client, codec) == ErrorCodes.ENHANCE_YOUR_CALM
    assert codec.receive(PREFACE, 1.0) == []
    assert codec.receive(b"\x00" * 100, 2.0) == []


def test_continuation_flood_ends_the_connection():
    codec = raw_connection()
    block = hpack.Encoder().encode(head(extra=[(b"x-a", b"b" * 50)]))
    headers = HeadersFrame(1)
    headers.data = block  # no END_HEADERS: CONTINUATION frames must follow
    assert codec.receive(headers.serialize(), 0.0) == []
    events = []
    count = 0
    while not events and count < 10000:
        continuation = ContinuationFrame(1)
        continuation.data = b"\x00" * 100
        events = codec.receive(continuation.serialize(), 0.0)
        count += 1
    assert count <= 100  # bounded long before the attacker ran out of patience
    assert len(events) == 1 and events[0].error is True and isinstance(events[0], Ended)
    goaway = [f for f in frames(codec.data_to_send()) if isinstance(f, GoAwayFrame)]
    assert len(goaway) == 1 and goaway[0].error_code != ErrorCodes.NO_ERROR
    assert codec.receive(ContinuationFrame(1, flags=["END_HEADERS"]).serialize(), 0.0) == []


def test_continuation_flood_in_one_read():
    codec = raw_connection()
    headers = HeadersFrame(1)
    headers.data = hpack.Encoder().encode(head())
    flood = headers.serialize() + ContinuationFrame(1).serialize() * 100_000
    events = codec.receive(flood, 0.0)
    assert len(events) == 1 and isinstance(events[0], Ended) and events[0].error is True
    assert codec.receive(ContinuationFrame(1).serialize(), 0.0) == []


# -- errors and GOAWAY -------------------------------------------------------------------------


GARBAGE = [
    # DATA on stream 0
    (struct.pack(">I", 1)[1:] + b"\x00\x00" + struct.pack(">I", 0) + b"x", ErrorCodes.PROTOCOL_ERROR),
    # PING whose payload is not 8 bytes
    (struct.pack(">I", 3)[1:] + b"\x06\x00" + struct.pack(">I", 0) + b"abc", ErrorCodes.FRAME_SIZE_ERROR),
    # CONTINUATION with no HEADERS before it
    (ContinuationFrame(1, flags=["END_HEADERS"]).serialize(), ErrorCodes.PROTOCOL_ERROR),
    # WINDOW_UPDATE of 0 on the connection
    (struct.pack(">I", 4)[1:] + b"\x08\x00" + struct.pack(">I", 0) + struct.pack(">I", 0), ErrorCodes.PROTOCOL_ERROR),
]


@pytest.mark.parametrize("garbage, code", GARBAGE, ids=["data-on-0", "short-ping", "lone-continuation", "zero-window"])
def test_protocol_error_after_the_preface(garbage, code):
    client, codec = connect()
    events = codec.receive(garbage, 1.0)
    assert len(events) == 1 and isinstance(events[0], Ended) and events[0].error is True
    assert events[0].reason.startswith("HTTP/2 protocol error: ")
    assert codec.ended
    assert goaway_code(client, codec) == code
    client2 = make_client()
    assert codec.receive(client2.data_to_send(), 2.0) == []
    assert codec.receive(b"GET / HTTP/1.1\r\n\r\n", 3.0) == []


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n",  # a frame header announcing 4,670,804 bytes
    struct.pack(">I", 1 << 20)[1:] + b"\x00\x00" + struct.pack(">I", 1),  # DATA announcing 1 MiB
], ids=["http1-text", "1MiB-data"])
def test_an_overlong_frame_is_refused_on_its_header(garbage):
    """Edge advertises SETTINGS_MAX_FRAME_SIZE 16,384: a frame header announcing more is a connection
    error (FRAME_SIZE_ERROR) as soon as it is read, not after the codec has buffered its whole body."""
    client, codec = connect()
    open_get(client, codec)
    events = codec.receive(garbage, 1.0)
    assert [type(e) for e in events] == [Ended] and events[0].error is True
    assert goaway_code(client, codec) == ErrorCodes.FRAME_SIZE_ERROR
    assert codec.receive(b"\x00" * 100_000, 2.0) == []


def test_bad_preface():
    codec = H2Codec()
    events = codec.receive(b"GET / HTTP/1.1\r\n\r\n", 0.0)
    assert [type(e) for e in events] == [Ended] and events[0].error is True
    assert codec.receive(PREFACE, 0.0) == []


def test_client_goaway_no_error_lets_its_streams_finish():
    """A client's graceful GOAWAY is taken out before h2 (which would refuse to send anything more): the
    streams it opened can still be answered; the server closes once they are."""
    client, codec = connect()
    client.send_headers(1, head(), end_stream=True)
    client.close_connection(last_stream_id=0)
    events = to_codec(client, codec, 1.0)
    assert events == [Request(1, b"GET", b"/", b"a.test", [], True), BodyEnd(1), Draining(0, 0)]
    assert codec.draining and not codec.ended
    assert codec.respond(1, 200, [], end=False) and codec.send(1, b"ok", True) == 2
    sent = frames(codec.data_to_send())  # (h2 as the client would refuse them after its own GOAWAY)
    assert [type(f).__name__ for f in sent] == ["HeadersFrame", "DataFrame"] and "END_STREAM" in sent[-1].flags


def test_client_goaway_with_an_error():
    client, codec = connect()
    client.close_connection(ErrorCodes.INTERNAL_ERROR)
    assert to_codec(client, codec) == [Ended("client sent GOAWAY (error 2)", True)]


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.lists(st.integers(1, 200), max_size=12))
def test_the_frame_scanner_cuts_out_goaways_however_the_bytes_come(cuts):
    from hyperframe.frame import GoAwayFrame, PingFrame

    from edge.http.h2 import FrameScanner

    frames = [DataFrame(1, b"first"), GoAwayFrame(0, last_stream_id=1, additional_data=b"bye"),
              DataFrame(1, b"second", flags=["END_STREAM"]), GoAwayFrame(0, last_stream_id=1), PingFrame(0, b"12345678")]
    data = b"".join(f.serialize() for f in frames)
    kept = frames[0].serialize() + frames[2].serialize() + frames[4].serialize()
    scanner, out, drains, at = FrameScanner(0, 1 << 24), b"", [], 0
    for cut in sorted({min(c, len(data)) for c in cuts}) + [len(data)]:
        piece, draining, too_long = scanner.scan(data[at:cut])
        at = cut
        out += piece
        drains += [draining] if draining else []
        assert too_long == 0
    assert out == kept and drains and drains[-1] == Draining(1, 0)
# -- floods ------------------------------------------------------------------------------------


def pings(client, n):
    for i in range(n):
        client.ping(b"%08d" % i)
    return client.data_to_send()


def settings(client, n):
    for _ in range(n):
        client.update_settings({})
    return client.data_to_send()


def priorities(client, n):
    for _ in range(n):
        client.prioritize(1, weight=32)
    return client.data_to_send()


def empty_data(client, n):
    stream = client.get_next_available_stream_id()
    client.send_headers(stream, head(b"POST"))
    for _ in range(n):
        client.send_data(stream, b"")
    return client.data_to_send()


def rapid_resets(client, n):
    for _ in range(n):
        stream = client.get_next_available_stream_id()
        client.send_headers(stream, head(), end_stream=True)
        client.reset_stream(stream, ErrorCodes.CANCEL)
    return client.data_to_send()


def window_updates(client, n):
    for _ in range(n):
        client.increment_flow_control_window(1)
    return client.data_to_send()


def unknown_frames(client, n):
    frame = struct.pack(">I", 4)[1:] + b"\xfa\x00" + struct.pack(">I", 0) + b"abcd"  # type 0xfa
    return client.data_to_send() + frame * n


FLOODS = [("ping", pings), ("settings", settings), ("priority", priorities), ("empty data", empty_data),
          ("reset", rapid_resets), ("window update", window_updates), ("unknown", unknown_frames)]


def test_flood_limits_are_the_documented_ones():
    assert FLOOD_PERIOD == 10.0
    assert FLOOD_LIMITS == {"reset": 500, "settings": 100, "ping": 100, "priority": 1000, "empty data": 1000,
                            "unknown": 1000, "window update": 1000}


@pytest.mark.parametrize("kind, make", FLOODS, ids=[k for k, _ in FLOODS])
def test_flood_at_the_limit_is_served(kind, make):
    client, codec = connect()
    events = codec.receive(make(client, FLOOD_LIMITS[kind]), LATER)
    assert ended(events) == []
    assert codec.counts[kind] == FLOOD_LIMITS[kind]
    assert not codec.ended
    to_client(client, codec)
    stream = client.get_next_available_stream_id()
    client.send_headers(stream, head(path=b"/after"), end_stream=True)
    events = to_codec(client, codec, LATER + 1)
    assert events[0] == Request(stream, b"GET", b"/after", b"a.test", [], True)


@pytest.mark.parametrize("kind, make", FLOODS, ids=[k for k, _ in FLOODS])
def test_flood_over_the_limit_ends_with_enhance_your_calm(kind, make):
    client, codec = connect()
    limit = FLOOD_LIMITS[kind]
    events = codec.receive(make(client, limit + 1), LATER)
    assert ended(events) == [Ended(f"HTTP/2 flood: more than {limit} {kind} frames in 10s", True)]
    assert events[-1] == ended(events)[0]
    assert codec.ended
    assert goaway_code(client, codec) == ErrorCodes.ENHANCE_YOUR_CALM
    assert codec.receive(RAW_PING, LATER + 1) == []
    assert codec.data_to_send() == b""


@pytest.mark.parametrize("kind, make", FLOODS, ids=[k for k, _ in FLOODS])
def test_flood_counts_across_reads_within_a_period(kind, make):
    client, codec = connect()
    limit = FLOOD_LIMITS[kind]
    assert ended(codec.receive(make(client, limit), LATER)) == []
    to_client(client, codec)
    events = codec.receive(make(client, 1), LATER + FLOOD_PERIOD - 0.01)
    assert ended(events) == [Ended(f"HTTP/2 flood: more than {limit} {kind} frames in 10s", True)]
    assert goaway_code(client, codec) == ErrorCodes.ENHANCE_YOUR_CALM


@pytest.mark.parametrize("kind, make", FLOODS, ids=[k for k, _ in FLOODS])
def test_flood_counts_reset_after_the_period(kind, make):
    client, codec = connect()
    limit = FLOOD_LIMITS[kind]
    assert ended(codec.receive(make(client, limit), LATER)) == []
    to_client(client, codec)
    assert ended(codec.receive(make(client, limit), LATER + FLOOD_PERIOD)) == []
    assert codec.counts[kind] == limit
    to_client(client, codec)
    assert ended(codec.receive(make(client, limit), LATER + 2 * FLOOD_PERIOD + 5)) == []
    assert not codec.ended


def test_slow_pings_never_flood():
    client, codec = connect()
    for i in range(1000):
        assert codec.receive(pings(client, 1), LATER + i * 0.11) == []
        to_client(client, codec)
    assert not codec.ended


def test_rapid_reset_one_stream_per_read():
    client, codec = connect()
    limit = FLOOD_LIMITS["reset"]
    for i in range(limit):
        events = codec.receive(rapid_resets(client, 1), LATER + i * 0.001)
        assert [type(e) for e in events] == [Request, BodyEnd, Aborted]
    events = codec.receive(rapid_resets(client, 1), LATER + 1)
    assert ended(events) == [Ended(f"HTTP/2 flood: more than {limit} reset frames in 10s", True)]
    assert goaway_code(client, codec) == ErrorCodes.ENHANCE_YOUR_CALM


def test_edge_resets_do_not_count_as_rapid_reset():
    client, codec = connect()
    for _ in range(FLOOD_LIMITS["reset"] + 10):
        stream = open_get(client, codec, LATER)
        codec.reset(stream)
        to_client(client, codec)
    assert codec.counts["reset"] == 0
    assert not codec.ended


def test_empty_data_ending_the_stream_is_not_counted():
    client, codec = connect()
    for _ in range(FLOOD_LIMITS["empty data"] + 10):
        stream = client.get_next_available_stream_id()
        client.send_headers(stream, head(b"POST"))
        client.send_data(stream, b"", end_stream=True)
        events = to_codec(client, codec, LATER)
        assert ended(events) == [] and events[-1] == BodyEnd(stream)
        codec.respond(stream, 200, [], True)
        to_client(client, codec)
    assert codec.counts["empty data"] == 0


def test_window_updates_allowed_in_proportion_to_data_sent():
    client, codec = connect()
    stream = open_get(client, codec, LATER)  # starts the period
    codec.respond(stream, 200, [], False)
    for _ in range(200):
        assert codec.send(stream, b"x", False) == 1
    assert codec.data_frames_sent == 200
    to_client(client, codec)
    allowed = FLOOD_LIMITS["window update"] + 2 * 200  # a stream and a connection update per DATA frame
    assert ended(codec.receive(window_updates(client, allowed), LATER + 1)) == []
    assert codec.counts["window update"] == allowed
    events = codec.receive(window_updates(client, 1), LATER + 2)
    # (the reason names the base limit)
    assert ended(events) == [Ended("HTTP/2 flood: more than 1000 window update frames in 10s", True)]
    assert goaway_code(client, codec) == ErrorCodes.ENHANCE_YOUR_CALM


def test_data_frames_sent_are_counted_per_frame():
    client = make_client(INITIAL_WINDOW_SIZE=1_000_000)
    client.increment_flow_control_window(1_000_000)
    client, codec = connect(client)
    stream = open_get(client, codec, LATER)
    codec.respond(stream, 200, [], False)
    assert codec.send(stream, b"y" * 100_000, False) == 100_000
    assert codec.data_frames_sent == 7  # 6 * 16384 + 1696
    assert codec.send(stream, b"y", True) == 1
    assert codec.data_frames_sent == 8


def test_window_update_allowance_ends_with_the_period():
    client, codec = connect()
    stream = open_get(client, codec, LATER)
    codec.respond(stream, 200, [], False)
    for _ in range(200):
        codec.send(stream, b"x", False)
    to_client(client, codec)
    limit = FLOOD_LIMITS["window update"]
    events = codec.receive(window_updates(client, limit + 1), LATER + FLOOD_PERIOD)
    assert ended(events) == [Ended(f"HTTP/2 flood: more than {limit} window update frames in 10s", True)]


# -- memory of closed streams ------------------------------------------------------------------


def test_a_long_lived_connection_forgets_old_closed_streams():
    client, codec = connect()
    for i in range(5000):  # a browser tab open for a day
        stream = client.get_next_available_stream_id()
        client.send_headers(stream, head(), end_stream=True)
        for event in codec.receive(client.data_to_send(), i * 20.0):
            if isinstance(event, Request):
                codec.respond(event.stream, 200, [], True)
        to_client(client, codec)
    assert MAX_CLOSED_STREAMS == type(codec.conn).MAX_CLOSED_STREAMS == 1000
    assert 0 < len(codec.conn._closed_streams) <= MAX_CLOSED_STREAMS
    assert 1 not in codec.conn._closed_streams
    # a late frame for a stream forgotten long ago is not a connection error
    late = RstStreamFrame(1)
    late.error_code = ErrorCodes.CANCEL
    update = WindowUpdateFrame(3)
    update.window_increment = 100
    events = codec.receive(late.serialize() + update.serialize(), 200_000.0)
    assert ended(events) == []
    assert not codec.ended
    assert codec.conn.state_machine.state != h2.connection.ConnectionState.CLOSED
    codec.data_to_send()
    stream = client.get_next_available_stream_id()
    client.send_headers(stream, head(path=b"/still"), end_stream=True)
    assert to_codec(client, codec, 200_001.0) == [Request(stream, b"GET", b"/still", b"a.test", [], True),
                                                  BodyEnd(stream)]


# -- malformed requests: a stream error (400 on that stream), not the connection's end (RFC 9113 8.1.1) ------


def raw_client():
    """A client that sends whatever it is given (its own header checks off)."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False))
    client.initiate_connection()
    return client


@pytest.mark.parametrize("fields, why", [
    (head(extra=[(b"host", b"other.test")]), None),  # Host against :authority: the server's decision (400)
    (head(extra=[(b"X-Upper", b"1")]), "invalid header name"),
    (head(extra=[(b"x:colon", b"1")]), "invalid header name"),
    (head(extra=[(b"x-space", b" padded")]), "whitespace"),
    (head(extra=[(b"x-ctl", b"a\x01b")]), "control character"),
    (head(extra=[(b"x-crlf", b"a\r\nx-injected: 1")]), "control character"),
    (head(extra=[(b"connection", b"close")]), "connection-specific"),
    (head(extra=[(b"transfer-encoding", b"chunked")]), "connection-specific"),
    (head(extra=[(b"te", b"gzip")]), "connection-specific"),
    (head(extra=[(b"te", b"trailers")]), None),
    ([(b":method", b"GET"), (b":authority", b"a.test"), (b":path", b"/")], "missing :scheme"),
    ([(b":method", b"CONNECT"), (b":authority", b"a.test:443")], "CONNECT without :protocol"),
    (head(extra=[(b":protocol", b"websocket")]), ":protocol without CONNECT"),
    (head() + [(b":method", b"POST")], "pseudo-header"),
    ([(b"x-a", b"1")] + head(), "pseudo-header after a header"),
    (head() + [(b":custom", b"1")], "pseudo-header"),
])
def test_a_malformed_request_is_reported_on_its_stream(fields, why):
    client = raw_client()
    codec = H2Codec()
    codec.receive(client.data_to_send(), 0.0)
    client.receive_data(codec.data_to_send())
    codec.receive(client.data_to_send(), 0.0)
    client.send_headers(1, fields, end_stream=True)
    request = codec.receive(client.data_to_send(), 0.0)[0]
    assert isinstance(request, Request) and not codec.ended
    if why is None:
        assert request.malformed is None
    else:
        assert why in request.malformed
    # the connection goes on: the next request is fine
    client.send_headers(3, head(path=b"/next"), end_stream=True)
    assert codec.receive(client.data_to_send(), 0.0)[0] == Request(3, b"GET", b"/next", b"a.test", [], True)


def test_malformed_trailers_reset_their_stream_only():
    client = raw_client()
    codec = H2Codec()
    codec.receive(client.data_to_send(), 0.0)
    client.receive_data(codec.data_to_send())
    codec.receive(client.data_to_send(), 0.0)
    client.send_headers(1, head(b"POST"))
    client.send_data(1, b"x")
    client.send_headers(1, [(b"x-bad", b"a\nb")], end_stream=True)
    events = codec.receive(client.data_to_send(), 0.0)
    assert Aborted(1, ErrorCodes.PROTOCOL_ERROR) in events and not codec.ended
    assert not any(isinstance(e, Trailers) for e in events)


def test_an_extended_connect_path_with_crlf_is_malformed():
    """A tunnel's :path becomes a GET request line: CR, LF or a space in it would inject headers."""
    client = raw_client()
    codec = H2Codec()
    codec.receive(client.data_to_send(), 0.0)
    client.receive_data(codec.data_to_send())
    codec.receive(client.data_to_send(), 0.0)
    client.send_headers(1, [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"),
                            (b":authority", b"a.test"),
                            (b":path", b"/ws HTTP/1.1\r\nx-forwarded-for: 1.2.3.4\r\n\r\nGET /admin HTTP/1.1\r\nx: ")])
    request = codec.receive(client.data_to_send(), 0.0)[0]
    assert request.malformed == "invalid :path"
    client.send_headers(3, head(authority=b"a.test\r\nx: 1"), end_stream=True)
    assert codec.receive(client.data_to_send(), 0.0)[0].malformed == "invalid :authority"


def test_a_backend_connection_opens_few_streams_before_its_settings():
    from edge.http.h2 import H2ClientCodec

    codec = H2ClientCodec()
    assert codec.room() == 10  # h2's default before SETTINGS is unlimited: the server may refuse them
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    server.initiate_connection()
    server.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: 1000})
    codec.receive(server.data_to_send())
    assert codec.room() == 100  # capped: the streams share one connection window


@pytest.mark.parametrize("piece", [1, 7, 1 << 20])
def test_a_backend_goaway_lets_its_streams_finish(piece):
    """A graceful GOAWAY is taken out of the bytes before h2 (which would refuse every later frame): the
    stream below it still gets its body and end, however the bytes are cut into reads."""
    from hyperframe.frame import GoAwayFrame

    from edge.http.events import Draining, Response
    from edge.http.h2 import H2ClientCodec

    codec = H2ClientCodec()
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    server.initiate_connection()
    server.receive_data(codec.data_to_send())
    stream = codec.request([(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"b"), (b":path", b"/")],
                           True)
    server.receive_data(codec.data_to_send())
    server.send_headers(stream, [(b":status", b"200")])
    server.send_data(stream, b"first")
    goaway = GoAwayFrame(0, last_stream_id=stream, error_code=0, additional_data=b"bye").serialize()
    before = server.data_to_send()
    server.send_data(stream, b"second", end_stream=True)
    data = before + goaway + server.data_to_send()
    events = []
    for at in range(0, len(data), piece):
        events += codec.receive(data[at : at + piece])
    kinds = [type(e) for e in events]
    assert Response in kinds and Draining(stream, 0) in events
    assert [e for e in events if type(e) is not Draining][-1] == BodyEnd(stream)
    assert b"".join(e.data for e in events if type(e) is Body) == b"firstsecond"
    assert codec.room() == 0 and not codec.ended
