"""The shared field rules and the HTTP/2-to-HTTP/1.1 response writer, without sockets."""

from __future__ import annotations

import pytest

from edge.http.fields import h2_request_fields, response_fields, sort_fields
from edge.http.h1 import BadRequest
from edge.http.h1_to_h2 import H1Response


def test_sorting_drops_hop_by_hop_and_listed_fields_and_reads_the_framing():
    fields = [(b"connection", b"keep-alive, x-private"), (b"x-private", b"1"), (b"keep-alive", b"timeout=5"),
              (b"te", b"deflate, trailers;q=0.5"), (b"transfer-encoding", b"chunked"), (b"upgrade", b"h2c"),
              (b"proxy-connection", b"keep-alive"), (b"host", b"a.test"), (b"content-length", b"5"),
              (b"expect", b"100-continue"), (b"cookie", b"a=1"), (b"cookie", b"b=2"),
              (b"x-forwarded-for", b"192.0.2.1"), (b"accept", b"*/*")]
    sorted_ = sort_fields(fields, {b"keep-alive", b"x-private"})
    assert sorted_.kept == [(b"accept", b"*/*")]
    assert (sorted_.length, sorted_.expect, sorted_.te_trailers) == (5, True, True)
    assert sorted_.cookies == [b"a=1", b"b=2"] and sorted_.prior_for == [b"192.0.2.1"]
    assert not sort_fields([(b"te", b"gzip")]).te_trailers


def test_conflicting_lengths_are_400():
    with pytest.raises(BadRequest):
        sort_fields([(b"content-length", b"5"), (b"content-length", b"6")])


def test_the_http2_head_has_pseudo_headers_first_then_forwarding():
    sorted_ = sort_fields([(b"accept", b"*/*"), (b"te", b"trailers"), (b"content-length", b"3")])
    fields = h2_request_fields(sorted_, b"POST", b"http", b"a.test", b"/p?q", "192.0.2.9", "https")
    assert fields[:4] == [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"a.test"), (b":path", b"/p?q")]
    assert fields[4:7] == [(b"accept", b"*/*"), (b"content-length", b"3"), (b"te", b"trailers")]
    assert (b"x-forwarded-proto", b"https") in fields and (b"x-forwarded-for", b"192.0.2.9") in fields


def test_response_fields_cannot_split_an_http1_head():
    fields = [(b"x-ok", b"1"), (b"x-bad", b"a\r\nset-cookie: evil"), (b"x-nul", b"a\x00"), (b"connection", b"close")]
    assert response_fields(fields) == [(b"x-ok", b"1")]


def test_length_is_kept_else_chunked_with_trailers_for_te_trailers():
    response = H1Response("GET", "1.1", te_trailers=True)
    head = response.head(200, [(b"content-length", b"5")], ended=False, close=False)
    assert head == b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"
    assert response.body(b"hello") == b"hello" and response.end([(b"x-t", b"1")]) == b""
    response = H1Response("GET", "1.1", te_trailers=True)
    head = response.head(201, [(b"content-type", b"text/plain")], ended=False, close=True)
    assert head == b"HTTP/1.1 201 Created\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    assert response.body(b"hello") == b"5\r\nhello\r\n"
    assert response.end([(b"grpc-status", b"0"), (b"content-length", b"9")]) == b"0\r\ngrpc-status: 0\r\n\r\n"
    without = H1Response("GET", "1.1", te_trailers=False)
    without.head(200, [], ended=False, close=False)
    assert without.end([(b"grpc-status", b"0")]) == b"0\r\n\r\n"


def test_http10_ends_by_closing_and_bodiless_answers_have_no_body():
    old = H1Response("GET", "1.0", te_trailers=False)
    head = old.head(200, [], ended=False, close=False)
    assert old.close and head.endswith(b"\r\nconnection: close\r\n\r\n") and b"transfer-encoding" not in head
    assert old.body(b"x") == b"x" and old.end(None) == b""
    kept = H1Response("GET", "1.0", te_trailers=False)
    assert kept.head(200, [(b"content-length", b"1")], ended=False, close=False).endswith(b"connection: keep-alive\r\n\r\n")
    head_request = H1Response("HEAD", "1.1", te_trailers=False)
    assert head_request.head(200, [(b"content-length", b"10")], ended=True, close=False) == \
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"
    empty = H1Response("GET", "1.1", te_trailers=False)
    assert empty.head(200, [], ended=True, close=False) == b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
    for status in (204, 304):
        response = H1Response("GET", "1.1", te_trailers=False)
        assert b"transfer-encoding" not in response.head(status, [], ended=False, close=False)
        assert response.body(b"stray") == b"" and response.end(None) == b""
