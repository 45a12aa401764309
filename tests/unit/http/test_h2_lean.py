"""The HTTP/2 codec's lean path (edge.http.h2_lean): the probe, the switch, and the same bytes and events as h2's path.

The main test drives two codecs with the same client bytes, one with the
lean path and one through h2's public API only (what edge does when the
probe fails or ``EDGE_FASTPATH=off:h2_lean``), their input cut at the same
arbitrary places (the lean path holds frames cut short itself): they must
report the same events and send the client the same bytes.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import h2.config
import h2.connection
import h2.events
from h2.errors import ErrorCodes
from hypothesis import given, settings, strategies as st

from edge.http import h2_lean
from edge.http.events import Aborted, BodyEnd, Ended, Request
from edge.http.h2 import BLOCK_SIZE, BLOCKS, H2Codec
from edge.http.hpack_encoder import field

ROOT = Path(__file__).resolve().parents[3]
PATHS = [b"/", b"/1k", b"/a/b?c=d", b"/" + b"x" * 300]
EXTRA = [[], [(b"accept", b"*/*")], [(b"user-agent", b"h2load"), (b"accept-encoding", b"gzip")],
         [(b"te", b"gzip")]]  # the last is malformed: a 400 on its stream


def client() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None,
                                                                validate_outbound_headers=False))
    conn.initiate_connection()
    return conn


def same(events: list) -> list:
    """``events`` with the addresses of objects in error messages taken out."""
    return [Ended(re.sub(r" at 0x[0-9a-f]+", "", e.reason), e.error) if isinstance(e, Ended) else e for e in events]


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


action = st.one_of(
    st.tuples(st.just("get"), st.integers(0, len(PATHS) - 1), st.integers(0, len(EXTRA) - 1), st.booleans()),
    st.tuples(st.just("post"), st.integers(0, 3)),
    st.tuples(st.just("respond"), st.integers(0, 7), st.integers(0, 70000), st.booleans()),
    st.tuples(st.just("reset"), st.integers(0, 7)),
    st.tuples(st.just("ping")),
    st.tuples(st.just("window"), st.integers(1, 100000)),
    st.tuples(st.just("settings"), st.integers(0, 2)),
    st.tuples(st.just("raw"), st.sampled_from([
        b"\x00\x00\x00\x01\x05\x00\x00\x00\x02",  # HEADERS on an even stream: a protocol error
        b"\x00\x00\x01\x01\x05\x00\x00\x00\x63\xff",  # a block that does not decode
        b"\x00\x00\x00\x01\x04\x00\x00\x00\x61",  # no END_STREAM: a request with a body, through h2
        b"\x00\x00\x06\x01\x25\x00\x00\x00\x65\x00\x00\x00\x65\x10\x82",  # depends on itself: an error
        b"\x00\x00\x03\x01\x25\x00\x00\x00\x67\x00\x00\x00",  # PRIORITY flag, shorter than its 5 bytes
        b"\x00\x00\x06\x01\x25\x00\x00\x00\x69\x80\x00\x00\x01\xff\x82",  # PRIORITY, exclusive on 1
    ])),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(action, max_size=25), st.lists(st.integers(0, 5000), max_size=6))
def test_lean_and_public_paths_agree(actions, cuts):
    peer = client()
    lean, public = H2Codec(), H2Codec()
    public.lean = False
    assert lean.lean == h2_lean.ON
    streams: list[int] = []  # opened by the client, in order
    now = 0.0
    for act in actions + [("ping",)]:
        kind = act[0]
        if kind == "get":
            stream = peer.get_next_available_stream_id()
            priority = {"priority_weight": 42, "priority_depends_on": streams[-1] if streams else 0,
                        "priority_exclusive": True} if act[3] else {}  # as browsers send it
            peer.send_headers(stream, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a.test"),
                                       (b":path", PATHS[act[1]]), *EXTRA[act[2]]], end_stream=True, **priority)
            streams.append(stream)
        elif kind == "post":
            stream = peer.get_next_available_stream_id()
            peer.send_headers(stream, [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"a.test"),
                                       (b":path", b"/up")])
            peer.send_data(stream, b"y" * act[1], end_stream=True)
            streams.append(stream)
        elif kind == "respond" and streams:
            stream = streams[act[1] % len(streams)]
            size, end = act[2], act[3]
            fields = [(b"content-type", b"text/plain"), (b"x-big", b"v" * (size // 4))]
            assert lean.respond(stream, 200, list(fields), end) == public.respond(stream, 200, list(fields), end)
            if not end:
                assert lean.send(stream, b"z" * size, True) == public.send(stream, b"z" * size, True)
            assert lean.window(stream) == public.window(stream)
        elif kind == "reset" and streams:
            stream = streams[act[1] % len(streams)]
            if stream in peer.streams and not peer.streams[stream].closed:
                peer.reset_stream(stream, ErrorCodes.CANCEL)
        elif kind == "ping":
            peer.ping(b"12345678")
        elif kind == "window":
            peer.increment_flow_control_window(act[1])
        elif kind == "settings":
            peer.update_settings({1: (0, 4096, 100)[act[1]]} if act[1] < 2 else {4: 100})  # table size, window
        elif kind == "raw":
            peer._data_to_send += act[1]  # bytes no client would send
        data = peer.data_to_send()
        expected = [event for piece in pieces(data, cuts) for event in public.receive(piece, now)]
        got = [event for piece in pieces(data, cuts) for event in lean.receive(piece, now)]
        assert same(got) == same(expected)
        out = public.data_to_send()
        assert lean.data_to_send() == out
        if any(isinstance(event, Ended) for event in expected):
            return
        assert lean.counts == public.counts  # what the flood limits count
        try:
            events = peer.receive_data(out)
        except h2.exceptions.ProtocolError:
            return
        if any(isinstance(event, h2.events.ConnectionTerminated) for event in events):
            return
        now += 0.1


def test_a_repeated_header_block_is_decoded_once():
    peer = client()
    codec = H2Codec()
    request = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a.test"), (b":path", b"/")]
    for stream in (1, 3, 5, 7):
        peer.send_headers(stream, request, end_stream=True)
        events = codec.receive(peer.data_to_send(), 0.0)[-2:]  # after the handshake's WindowOpened
        assert events == [Request(stream, b"GET", b"/", b"a.test", [], True), BodyEnd(stream)]
        events[0].fields.append((b"x", b"y"))  # the server's copy: the cached one is not touched
        codec.respond(stream, 200, [], True)
        peer.receive_data(codec.data_to_send())
    if h2_lean.ON:
        # the first block indexed :authority (the table changed: not kept); the next ones are the same bytes
        assert len(codec.blocks) == 1 and len(codec.blocks) <= BLOCKS


def test_a_block_seen_before_is_decoded_again_once_the_table_changed():
    codec = H2Codec()
    codec.receive(client().data_to_send(), 0.0)

    def request(stream: int, block: bytes) -> Request:
        frame = len(block).to_bytes(3, "big") + b"\x01\x05" + stream.to_bytes(4, "big") + block
        return codec.receive(frame, 0.0)[-2]

    get = b"\x82\x87\x84"  # GET, https, / from the static table
    indexed = get + b"\xbe"  # the dynamic table's newest entry
    assert request(1, get + b"\x41\x06a.test").authority == b"a.test"  # indexed: the newest entry
    assert request(3, indexed).authority == b"a.test"
    assert request(5, indexed).authority == b"a.test"
    assert request(7, get + b"\x41\x06b.test").authority == b"b.test"  # the same index names another now
    assert request(9, indexed).authority == b"b.test"
    assert request(11, b"\x20").malformed == "missing :method"  # a table size update to 0: the table is empty
    assert isinstance(codec.receive(b"\x00\x00\x04\x01\x05\x00\x00\x00\x0d" + indexed, 0.0)[0], Ended)


def test_the_cache_of_header_blocks_stays_small():
    codec = H2Codec()
    codec.receive(client().data_to_send(), 0.0)
    stream = 1
    for size in [*range(1, 3 * BLOCKS), BLOCK_SIZE]:  # :path literals never indexed: the table never changes
        path = b"/" + b"p" * size
        block = b"\x82\x87" + field(b":authority", b"a") + field(b":path", path)
        frame = len(block).to_bytes(3, "big") + b"\x01\x05" + stream.to_bytes(4, "big") + block
        assert codec.receive(frame, 0.0)[-2].target == path
        assert 1 <= len(codec.blocks) <= BLOCKS or len(block) > BLOCK_SIZE
        stream += 2
    assert block not in codec.blocks  # larger than BLOCK_SIZE: decoded, not kept


def test_a_reset_stream_gets_no_lean_frames():
    peer = client()
    codec = H2Codec()
    peer.send_headers(1, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a"), (b":path", b"/")],
                      end_stream=True)
    peer.reset_stream(1, ErrorCodes.CANCEL)
    assert codec.receive(peer.data_to_send(), 0.0)[-1] == Aborted(1, ErrorCodes.CANCEL)
    assert codec.respond(1, 200, [], False) is False
    assert codec.send(1, b"x", True) == -1


def test_the_probe_names_what_is_missing(monkeypatch):
    monkeypatch.setattr(h2_lean, "_decode_headers", None)
    monkeypatch.delenv("EDGE_FASTPATH", raising=False)
    monkeypatch.delenv("EDGE_FAST_PATHS", raising=False)
    assert h2_lean._decide() == (False, ("h2.connection._decode_headers",))
    monkeypatch.setattr(h2.connection.H2Connection, "_begin_new_stream", lambda self, stream_id: None)
    assert h2_lean._decide()[0] is False


def test_on_unless_switched_off():
    assert h2_lean.MISSING == () and h2_lean.ON
    code = "from edge.http import h2_lean, h2; print(h2_lean.ON, h2_lean.MISSING, h2.H2Codec().lean)"
    for value in ("off", "off:h2_lean", "off:epoll,h2_lean"):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
                              env={"EDGE_FASTPATH": value, "PATH": ""})
        assert done.stdout.split() == ["False", "()", "False"], done.stderr
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={"EDGE_FASTPATH": "off:epoll", "PATH": ""})
    assert done.stdout.split() == ["True", "()", "True"], done.stderr
