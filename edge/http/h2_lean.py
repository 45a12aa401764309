# -*- test-case-name: tests.http.test_h2_lean, tests.http.test_h2, tests.test_hostile_h2 -*-
"""Every use edge makes of h2's and hpack's internals: the lean path of a plain HTTP/2 request.

h2 turns every frame into objects, walks them through two state machines
with events for each step, and logs (an eager ``repr`` of each frame) on
the way: most of what an HTTP/2 request cost edge.  For the frames of a
plain request (a HEADERS frame that ends its stream and its header block
in, a HEADERS and DATA frames out) :class:`edge.http.h2.H2Codec` does the
frame work itself and uses these functions to keep h2's own state exactly
as h2 would have left it: the stream created by h2 and moved through h2's
stream state machine, flow-control windows, the bytes queued in h2's output
buffer, in order with h2's own frames.  Everything else (SETTINGS, PING,
WINDOW_UPDATE, RST_STREAM, bodies, trailers, CONTINUATION, any frame that
is not exactly the plain case, every error) goes through h2 as before.

What it relies on (private to h2 and hpack, no contract): ``H2Connection``'s
``_data_to_send`` (a bytearray), ``_begin_new_stream``,
``_terminate_connection``, ``h2.connection._decode_headers`` (hpack's errors
as h2's), the stream's ``state_machine`` and its inputs, and the decoder's
``header_table`` (``dynamic_entries``, ``_current_size``, ``maxsize``: what
tells that a header block left the table as it was, so that its decoding
can be reused).  At import a probe runs a request and its response through
a real pair of h2 connections with these functions and checks what the
client reads; if anything is not as expected the lean path is off and
:data:`MISSING` says why (the server shell logs it once).
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
from h2.connection import AllowedStreamIDs, ConnectionInputs, ConnectionState, H2Connection
from h2.stream import StreamInputs, StreamState

from edge.net.switches import parse_switch

NAME = "h2_lean"

_SERVER_OPEN = ConnectionState.SERVER_OPEN
_IDLE = ConnectionState.IDLE  # before the first request
_OPEN = StreamState.OPEN
_HALF_CLOSED_REMOTE = StreamState.HALF_CLOSED_REMOTE
_RECV_HEADERS = StreamInputs.RECV_HEADERS
_RECV_END_STREAM = StreamInputs.RECV_END_STREAM
_SEND_HEADERS = StreamInputs.SEND_HEADERS
_SEND_END_STREAM = StreamInputs.SEND_END_STREAM
_ODD = AllowedStreamIDs.ODD
_decode_headers = getattr(h2.connection, "_decode_headers", None)


# -- receiving -------------------------------------------------------------------------------

def can_open(conn: H2Connection, stream_id: int) -> bool:
    """Whether a client's HEADERS frame on ``stream_id`` opens a new stream that h2 would take without a word:
    the connection open (or not yet: the first request), the id odd and above every earlier one, a stream
    free under MAX_CONCURRENT_STREAMS."""
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
    """The stream of a request head that ended its stream, opened and half-closed as h2's receiving would
    (after :func:`can_open`)."""
    conn.state_machine.process_input(ConnectionInputs.RECV_HEADERS)
    machine = conn._begin_new_stream(stream_id, _ODD).state_machine
    machine.process_input(_RECV_HEADERS)
    machine.process_input(_RECV_END_STREAM)


# -- sending ---------------------------------------------------------------------------------

def sending(conn: H2Connection, stream_id: int) -> Any:
    """The h2 stream ``stream_id`` if frames can be sent on it the lean way (the connection open, the stream
    open or half closed by the client); None if not (h2's public API then says what is wrong)."""
    stream = conn.streams.get(stream_id)
    if stream is None or conn.state_machine.state is not _SERVER_OPEN:
        return None
    state = stream.state_machine.state
    return stream if state is _HALF_CLOSED_REMOTE or state is _OPEN else None


def send_head(conn: H2Connection, stream: Any, block: bytes, end: bool) -> bool:
    """Queue a final response head (HEADERS, and CONTINUATION frames if the block is larger than a frame) on a
    :func:`sending` stream; False if h2 must send it (its first head was sent already: these are trailers)."""
    machine = stream.state_machine
    if machine.headers_sent:
        return False
    machine.process_input(_SEND_HEADERS)
    if end:
        machine.process_input(_SEND_END_STREAM)
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
        stream.state_machine.process_input(_SEND_END_STREAM)
    size = len(data)
    stream.outbound_flow_control_window -= size
    conn.outbound_flow_control_window -= size
    out = conn._data_to_send
    out += size.to_bytes(3, "big") + (b"\x00\x01" if end else b"\x00\x00") + stream.stream_id.to_bytes(4, "big")
    out += data


# -- the probe -------------------------------------------------------------------------------

def _probe() -> list[str]:
    """What is not as expected: run a request and a response through a pair of real h2 connections."""
    missing = []
    if not callable(_decode_headers):
        missing.append("h2.connection._decode_headers")
    for owner, names in ((H2Connection, ("_begin_new_stream", "_terminate_connection")),):
        missing += [f"H2Connection.{n}" for n in names if not callable(getattr(owner, n, None))]
    if not missing:
        parameters = tuple(inspect.signature(H2Connection._begin_new_stream).parameters)
        if parameters != ("self", "stream_id", "allowed_ids"):
            missing.append(f"H2Connection._begin_new_stream{parameters}")
    if missing:
        return missing
    server = H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    client = H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    server.initiate_connection()
    client.initiate_connection()
    if not isinstance(server._data_to_send, bytearray):
        return ["H2Connection._data_to_send"]
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    request = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"https"), (b":authority", b"probe")]
    client.send_headers(1, request, end_stream=True)
    frame = client.data_to_send()
    if frame[3] != 1 or frame[4] != 5 or not can_open(server, 1):
        return [f"a client's HEADERS frame {frame[:9].hex()} taken"]
    mark = table_mark(server)
    if list(decode(server, frame[9:])) != request or same_table(mark, table_mark(server)):
        return ["hpack Decoder.header_table"]  # the probe's request was indexed: its table changed
    open_stream(server, 1)
    stream = sending(server, 1)
    if stream is None or not send_head(server, stream, server.encoder.encode([(b":status", b"200")]), False):
        return ["H2Stream.state_machine"]
    send_data(server, stream, b"probe", True)
    events = client.receive_data(server.data_to_send())
    kinds = [type(event) for event in events]
    if (kinds != [h2.events.ResponseReceived, h2.events.DataReceived, h2.events.StreamEnded]
            or events[1].data != b"probe" or not server.streams[1].closed
            or stream.outbound_flow_control_window != 65530 or server.outbound_flow_control_window != 65530):
        return [f"the stream after a response: {kinds}"]
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
