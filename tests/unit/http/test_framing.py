"""HTTP/1.1 framing: response heads and body readers, split at every byte and fuzzed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from edge.sniff import NEED_MORE, Malformed
from edge.http.h1 import drop_fields, field_pattern, parse_request_head
from edge.http.framing import (
    BodyTooLarge, ChunkedReader, LengthReader, UntilClose, parse_response_head, response_reader,
)

RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
            b"Connection: keep-alive\r\n\r\nhello")


def test_response_head():
    head = parse_response_head(RESPONSE)
    assert (head.version, head.status, head.reason) == (b"1.1", 200, b"OK")
    assert head.length == len(RESPONSE) - 5 and head.keep_alive
    assert head.values(b"content-type") == [b"text/plain"]
    reader = response_reader(head, b"GET")
    assert isinstance(reader, LengthReader) and reader.feed(b"hello, more") == (5, True)
    assert response_reader(head, b"HEAD") is None
    for cut in range(head.length):
        assert parse_response_head(RESPONSE[:cut]) is NEED_MORE


@pytest.mark.parametrize("data, kind", [
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", ChunkedReader),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", ChunkedReader),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", UntilClose),
    (b"HTTP/1.0 200 OK\r\n\r\n", UntilClose),
    (b"HTTP/1.1 204 No Content\r\n\r\n", type(None)),
    (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", type(None)),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", type(None)),
])
def test_response_body_framing(data, kind):
    assert isinstance(response_reader(parse_response_head(data), b"GET"), kind)


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
])
def test_conflicting_response_lengths(data):
    with pytest.raises(Malformed):
        response_reader(parse_response_head(data), b"GET")


@pytest.mark.parametrize("data", [
    b"HTTP/2 200 OK\r\n\r\n",
    b"HTTP/1.1 2x0 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n folded\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\nY: b\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
])
def test_malformed_response_heads(data):
    with pytest.raises(Malformed):
        parse_response_head(data)


def test_keep_alive_by_version_and_connection():
    assert not parse_response_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").keep_alive
    assert not parse_response_head(b"HTTP/1.0 200 OK\r\n\r\n").keep_alive
    assert parse_response_head(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\n\r\n").keep_alive


CHUNKED = b"5;ext=1\r\nhello\r\n1A\r\n" + b"z" * 26 + b"\r\n0\r\nTrailer: x\r\n\r\n"


def test_chunked_body_whole_and_byte_by_byte():
    reader = ChunkedReader(collect=True)
    assert reader.feed(CHUNKED + b"NEXT") == (len(CHUNKED), True)
    assert b"".join(reader.pieces) == b"hello" + b"z" * 26 and reader.total == 31
    reader = ChunkedReader(collect=True)
    for i in range(len(CHUNKED)):
        used, done = reader.feed(CHUNKED[i : i + 1])
        assert used == 1 and done == (i == len(CHUNKED) - 1)
    assert b"".join(reader.pieces) == b"hello" + b"z" * 26


@pytest.mark.parametrize("body", [
    b"5\r\nhello!\r\n0\r\n\r\n",  # data longer than its size
    b"x\r\n",  # not hex
    b"5\nhello\r\n",  # bare LF
    b"-5\r\n",
    b"1" * 5000,  # a size line without end
    b"5;ext=a\rb\r\nhello\r\n0\r\n\r\n",  # a bare CR in an extension
    b"5;\x00\r\nhello\r\n0\r\n\r\n",  # a NUL in an extension
    b"0\r\nX-T: a\x01b\r\n\r\n",  # a control character in a trailer
])
def test_malformed_chunked_bodies(body):
    with pytest.raises(Malformed):
        ChunkedReader().feed(body)


def test_chunked_limit():
    with pytest.raises(BodyTooLarge):
        ChunkedReader(limit=10).feed(b"6\r\nabcdef\r\n6\r\n")
    assert ChunkedReader(limit=12).feed(b"6\r\nabcdef\r\n6\r\nabcdef\r\n0\r\n\r\n")[1]


@st.composite
def chunked_bodies(draw):
    chunks = draw(st.lists(st.binary(min_size=1, max_size=40), max_size=6))
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=8)))
    return chunks, body, cuts


@settings(max_examples=300, deadline=None)
@given(chunked_bodies())
def test_chunked_bodies_cut_anywhere(case):
    chunks, body, cuts = case
    reader = ChunkedReader(collect=True)
    consumed, done, start = 0, False, 0
    for stop in cuts + [len(body)]:
        used, done = reader.feed(body[start:stop])
        consumed += used
        start = stop
    assert done and consumed == len(body) and b"".join(reader.pieces) == b"".join(chunks)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash_the_readers(data):
    try:
        ChunkedReader(limit=1000).feed(data)
    except Malformed:
        pass
    try:
        head = parse_response_head(b"HTTP/1.1 200 OK\r\n" + data, limit=1024)
        if head is not NEED_MORE:
            response_reader(head, b"GET")
            head.keep_alive
    except Malformed:
        pass


def test_drop_fields_keeps_everything_else_in_order():
    head = parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Secret\r\nX-Secret: s\r\n"
                              b"Keep-Alive: 5\r\nAccept: */*\r\n\r\n")
    kept, removed = drop_fields(head.fields, head.lower, field_pattern([b"connection", b"keep-alive"]))
    assert kept == b"\r\nHost: a\r\nX-Secret: s\r\nAccept: */*"
    assert removed == [(b"connection", b"close, X-Secret"), (b"keep-alive", b"5")]
