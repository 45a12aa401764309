# -*- test-case-name: tests.unit.http.test_h2_lean, tests.unit.http.test_h2, tests.e2e.test_hostile_h2 -*-
"""Every use edge makes of h2's and hpack's internals: the lean path of a plain HTTP/2 request.

h2 turns every frame into objects, walks them through two state machines
with events for each step, and logs (an eager ``repr`` of each frame) on
the way: most of what an HTTP/2 request cost edge.  For the frames of a
plain request (a HEADERS frame that ends its stream and its header block
in, with or without priority fields, a HEADERS and DATA frames out) :class:`edge.http.h2.H2Codec` does the
frame work itself and uses these functions to keep h2's own state exactly
as h2 would have left it: h2's stream object in h2's table, its state
machine's attributes, flow-control windows, the bytes queued in h2's output
buffer, in order with h2's own frames.  Everything else (SETTINGS, PING,
WINDOW_UPDATE, RST_STREAM, bodies, trailers, CONTINUATION, any frame that
is not exactly the plain case, every error) goes through h2 as before.

What it relies on (private to h2 and hpack, no contract): ``H2Connection``'s
``_data_to_send`` (a bytearray), ``_closed_streams``, ``_terminate_connection``,
``h2.connection._decode_headers`` (hpack's errors as h2's), ``H2Stream``'s
constructor and the attributes of its ``state_machine`` that the transitions
of a plain request set (written out here, not run through h2's transition
table: the probe compares the two), and the decoder's
``header_table`` (``dynamic_entries``, ``_current_size``, ``maxsize``: what
tells that a header block left the table as it was, so that its decoding
can be reused).  At import a probe runs two requests and their responses
through the lean path and through h2's public API with the same bytes from
a real h2 client, and wants every stream, window and byte the same; if
anything is not as expected the lean path is off and
:data:`MISSING` says why (the HTTP/2 server records it in :mod:`edge.net.fastpath`, one warning).
``EDGE_FASTPATH=off`` or ``EDGE_FASTPATH=off:h2_lean`` switches it off
(:mod:`edge.net.switches`); then every frame goes through h2's public API.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.stream
from h2.connection import ConnectionInputs, ConnectionState, H2Connection
from h2.stream import StreamClosedBy, StreamState

from edge.net.switches import parse_switch

NAME = "h2_lean"

_SERVER_OPEN = ConnectionState.SERVER_OPEN
_IDLE = ConnectionState.IDLE  # before the first request
_OPEN = StreamState.OPEN
_HALF_CLOSED_REMOTE = StreamState.HALF_CLOSED_REMOTE
_HALF_CLOSED_LOCAL = StreamState.HALF_CLOSED_LOCAL
_CLOSED = StreamState.CLOSED
_BY_SEND_END = StreamClosedBy.SEND_END_STREAM
_H2Stream = h2.stream.H2Stream
_decode_headers = getattr(h2.connection, "_decode_headers", None)

# -- receiving -------------------------------------------------------------------------------

def can_open(conn: H2Connection, stream_id: int) -> bool:
    """Whether a client's HEADERS frame on ``stream_id`` opens a new stream that h2 would take without a word:
    the connection open (or not yet: the first request), the id odd and above every earlier one, a stream
    free under MAX_CONCURRENT_STREAMS (h2's count, which moves the closed streams out of its table)."""
    state = conn.state_machine.state
    if state is not _SERVER_OPEN and state is not _IDLE:
        return False
    if not stream_id & 1 or stream_id <= conn.highest_inbound_stream_id:
        return False
    return conn.open_inbound_streams < conn.local_settings.max_concurrent_streams


def decode(conn: H2Connection, block: bytes) -> list[tuple[bytes, bytes]]:
    """A header block decoded as h2 decodes it; on an HPACK error the connection ends as h2 ends it (GOAWAY
    queued) and h2's ``ProtocolError`` is raised."""
    try:
        return _decode_headers(conn.decoder, block)  # type: ignore[misc]
    except h2.exceptions.ProtocolError as e:
        conn._terminate_connection(e.error_code)
        raise


def table_mark(conn: H2Connection) -> tuple[int, int, int, Any]:
    """What the HPACK decoder's dynamic table holds, in four values: equal marks (the last compared with
    ``is``: each entry added is a new tuple) mean an unchanged table."""
    table = conn.decoder.header_table
    entries = table.dynamic_entries
    return table.maxsize, table._current_size, len(entries), entries[0] if entries else None


def same_table(mark: tuple[int, int, int, Any], other: tuple[int, int, int, Any]) -> bool:
    return mark[3] is other[3] and mark[:3] == other[:3]


def open_stream(conn: H2Connection, stream_id: int) -> None:
    """The stream of a request head that ended its stream, opened and half-closed as h2's receiving leaves it
    (after :func:`can_open`): what ``_begin_new_stream`` and the stream machine's RECV_HEADERS and
    RECV_END_STREAM do, written out (the probe compares the two)."""
    if conn.state_machine.state is not _SERVER_OPEN:
        conn.state_machine.process_input(ConnectionInputs.RECV_HEADERS)
    stream = _H2Stream(stream_id, conn.config, conn.local_settings.initial_window_size,
                       conn.remote_settings.initial_window_size)
    stream.max_outbound_frame_size = conn.max_outbound_frame_size
    machine = stream.state_machine
    machine.client = False
    machine.headers_received = True
    machine.state = _HALF_CLOSED_REMOTE
    conn.streams[stream_id] = stream
    conn.highest_inbound_stream_id = stream_id


# -- sending ---------------------------------------------------------------------------------

def sending(conn: H2Connection, stream_id: int) -> Any:
    """The h2 stream ``stream_id`` if frames can be sent on it the lean way (the connection open, the stream
    open or half closed by the client); None if not (h2's public API then says what is wrong)."""
    stream = conn.streams.get(stream_id)
    if stream is None or conn.state_machine.state is not _SERVER_OPEN:
        return None
    state = stream.state_machine.state
    return stream if state is _HALF_CLOSED_REMOTE or state is _OPEN else None


def _end(conn: H2Connection, stream: Any) -> None:
    """The stream machine's SEND_END_STREAM from OPEN or HALF_CLOSED_REMOTE.  A stream closed so is moved out of
    h2's table at once, as h2 does when it next counts open streams (``_open_streams``): that count, made for
    every new stream, then walks the open streams only."""
    machine = stream.state_machine
    if machine.state is _HALF_CLOSED_REMOTE:
        machine.state = _CLOSED
        machine.stream_closed_by = _BY_SEND_END
        del conn.streams[stream.stream_id]
        conn._closed_streams[stream.stream_id] = _BY_SEND_END
    else:
        machine.state = _HALF_CLOSED_LOCAL


def send_head(conn: H2Connection, stream: Any, block: bytes, end: bool) -> bool:
    """Queue a final response head (HEADERS, and CONTINUATION frames if the block is larger than a frame) on a
    :func:`sending` stream; False if h2 must send it (a head was sent already: these are trailers)."""
    machine = stream.state_machine
    if machine.headers_sent or machine.client is not False:
        return False
    machine.headers_sent = True  # SEND_HEADERS: a response
    if end:
        _end(conn, stream)
    out = conn._data_to_send
    size, limit, ident = len(block), conn.max_outbound_frame_size, stream.stream_id.to_bytes(4, "big")
    if size <= limit:
        out += size.to_bytes(3, "big") + (b"\x01\x05" if end else b"\x01\x04") + ident
        out += block
        return True
    out += limit.to_bytes(3, "big") + (b"\x01\x01" if end else b"\x01\x00") + ident
    out += block[:limit]
    for start in range(limit, size, limit):
        piece = block[start : start + limit]
        out += len(piece).to_bytes(3, "big") + (b"\x09\x04" if start + limit >= size else b"\x09\x00") + ident
        out += piece
    return True


def send_data(conn: H2Connection, stream: Any, data: bytes, end: bool) -> None:
    """Queue one DATA frame on a :func:`sending` stream; the caller checked the windows and the frame size."""
    if end:
        _end(conn, stream)
    size = len(data)
    stream.outbound_flow_control_window -= size
    conn.outbound_flow_control_window -= size
    out = conn._data_to_send
    out += size.to_bytes(3, "big") + (b"\x00\x01" if end else b"\x00\x00") + stream.stream_id.to_bytes(4, "big")
    out += data


# -- the probe -------------------------------------------------------------------------------

def _state(stream: Any) -> dict[str, Any]:
    """What h2 keeps of a stream, compared between the lean and h2's path."""
    skip = ("config", "state_machine", "_inbound_window_manager")
    return {**{k: v for k, v in vars(stream).items() if k not in skip}, **vars(stream.state_machine),
            **{f"window.{k}": v for k, v in vars(stream._inbound_window_manager).items()}}


def _probe() -> list[str]:
    """What is not as expected: a request and its response through the lean path and through h2's public API,
    with the same bytes from a real h2 client; every stream and window must end up the same, and the client
    must read the same."""
    missing = []
    if not callable(_decode_headers):
        missing.append("h2.connection._decode_headers")
    if not callable(getattr(H2Connection, "_terminate_connection", None)):
        missing.append("H2Connection._terminate_connection")
    parameters = tuple(inspect.signature(_H2Stream.__init__).parameters)
    if parameters != ("self", "stream_id", "config", "inbound_window_size", "outbound_window_size"):
        missing.append(f"H2Stream.__init__{parameters}")
    if missing:
        return missing
    config = h2.config.H2Configuration(client_side=False, header_encoding=None, validate_inbound_headers=False,
                                       normalize_inbound_headers=False, validate_outbound_headers=False,
                                       normalize_outbound_headers=False)  # as edge.http.h2's
    lean, public = H2Connection(config), H2Connection(config)
    client = H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    for conn in (lean, public, client):
        conn.initiate_connection()
    if not isinstance(lean._data_to_send, bytearray):
        return ["H2Connection._data_to_send"]
    hello = client.data_to_send()
    for conn in (lean, public):
        conn.receive_data(hello)
    client.receive_data(public.data_to_send())
    lean.data_to_send()
    ack = client.data_to_send()
    for conn in (lean, public):
        conn.receive_data(ack)
    request = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"https"), (b":authority", b"probe")]
    client.send_headers(1, request, end_stream=True)
    client.send_headers(3, request)  # a request with a body: its stream stays open (h2 opens it)
    frames = client.data_to_send()
    first = 9 + int.from_bytes(frames[:3], "big")
    if frames[3] != 1 or frames[4] != 5 or not can_open(lean, 1):
        return [f"a client's HEADERS frame {frames[:9].hex()} taken"]
    mark = table_mark(lean)
    if list(decode(lean, frames[9:first])) != request or same_table(mark, table_mark(lean)):
        return ["hpack Decoder.header_table"]  # the probe's request was indexed: its table changed
    open_stream(lean, 1)
    lean.receive_data(frames[first:])
    public.receive_data(frames)
    for stream_id in (1, 3):
        if _state(lean.streams[stream_id]) != _state(public.streams[stream_id]):
            return [f"H2Stream after a request: {_state(lean.streams[stream_id])}"]
    head = public.encoder.encode([(b":status", b"200")])
    for stream_id in (1, 3):
        stream = sending(lean, stream_id)
        if stream is None or not send_head(lean, stream, head, False):
            return ["H2Stream.state_machine"]
        send_data(lean, stream, b"probe", True)
        public.send_headers(stream_id, [(b":status", b"200")])
        public.send_data(stream_id, b"probe", end_stream=True)
        if _state(stream) != _state(public.streams[stream_id]):
            return [f"H2Stream after a response: {_state(stream)}"]
    out = lean.data_to_send()
    if out != public.data_to_send() or lean.outbound_flow_control_window != public.outbound_flow_control_window:
        return ["H2Connection's output"]
    if (lean.open_inbound_streams, list(lean.streams), dict(lean._closed_streams)) != (
            public.open_inbound_streams, list(public.streams), dict(public._closed_streams)):
        return ["H2Connection._closed_streams"]
    events = client.receive_data(out)
    kinds = [type(event) for event in events]
    if kinds != [h2.events.ResponseReceived, h2.events.DataReceived, h2.events.StreamEnded] * 2:
        return [f"the client read {kinds}"]
    return []


def _switched_off() -> bool:
    everything, names = parse_switch(os.environ)
    return everything or NAME in names


def _decide() -> tuple[bool, tuple[str, ...]]:
    if _switched_off():
        return False, ()
    try:
        missing = tuple(_probe())
    except Exception as e:  # a probe that cannot even look: the internals are not what it knows
        missing = (f"probe failed: {e!r}",)
    return not missing, missing


SWITCHED_OFF = _switched_off()
ON, MISSING = _decide()
