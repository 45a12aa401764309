"""Header rules, HSTS, strip_prefix and streaming compression, without sockets."""

from __future__ import annotations

import gzip
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.http.transform import (HeaderRules, choose_encoding, compressed_fields, compressor, hsts_value,
                                 should_compress, strip_prefix)


def test_header_rules_set_replaces_and_remove_drops():
    rules = HeaderRules(set=((b"x-frame-options", b"DENY"),), remove=frozenset({b"server"}))
    fields = [(b"server", b"nginx"), (b"x-frame-options", b"ALLOW"), (b"content-type", b"text/html")]
    assert rules.apply(fields) == [(b"content-type", b"text/html"), (b"x-frame-options", b"DENY")]
    assert not HeaderRules()


def test_hsts_value():
    assert hsts_value(31536000) == b"max-age=31536000"
    assert hsts_value(60, subdomains=True, preload=True) == b"max-age=60; includeSubDomains; preload"


@pytest.mark.parametrize("path, prefix, out", [
    ("/app/x?y=1", "/app", "/x?y=1"), ("/app", "/app", "/"), ("/app?q", "/app", "/?q"), ("/app/", "/app/", "/"),
    ("/apple", "/app", None), ("/other", "/app", None), ("/x", "/", "/x"),
])
def test_strip_prefix_at_segment_boundaries(path, prefix, out):
    assert strip_prefix(path, prefix) == out


@pytest.mark.parametrize("header, chosen", [
    (b"gzip, deflate, br, zstd", b"zstd"), (b"gzip", b"gzip"), (b"gzip;q=1, zstd;q=0.5", b"gzip"),
    (b"*", b"zstd"), (b"*;q=0", None), (b"zstd;q=0, gzip", b"gzip"), (b"identity", None), (None, None),
    (b"gzip;q=bogus", None),
])
def test_choose_encoding_follows_q_values(header, chosen):
    assert choose_encoding(header) == chosen


@pytest.mark.parametrize("method, status, fields, ok", [
    (b"GET", 200, [(b"content-type", b"text/html; charset=utf-8")], True),
    (b"GET", 200, [(b"content-type", b"application/json"), (b"content-length", b"100000")], True),
    (b"GET", 200, [(b"content-type", b"application/json"), (b"content-length", b"20")], False),
    (b"HEAD", 200, [(b"content-type", b"text/html")], False),
    (b"GET", 304, [(b"content-type", b"text/html")], False),
    (b"GET", 206, [(b"content-type", b"text/html")], False),
    (b"GET", 200, [(b"content-type", b"image/png")], False),
    (b"GET", 200, [(b"content-type", b"text/html"), (b"content-encoding", b"br")], False),
    (b"GET", 200, [(b"content-type", b"text/html"), (b"cache-control", b"public, no-transform")], False),
])
def test_should_compress(method, status, fields, ok):
    assert should_compress(method, status, fields) is ok


def test_compressed_fields():
    fields = [(b"content-type", b"text/html"), (b"content-length", b"9000"), (b"etag", b'"abc"'), (b"vary", b"cookie")]
    assert compressed_fields(fields, b"gzip") == [(b"content-type", b"text/html"), (b"etag", b'W/"abc"'),
                                                  (b"vary", b"cookie, accept-encoding"), (b"content-encoding", b"gzip")]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=5000), max_size=20), st.sampled_from([b"gzip", b"zstd"]))
def test_streaming_compression_decodes_to_the_same_bytes_with_the_real_tools(pieces, encoding):
    z = compressor(encoding)
    out = b"".join(z.feed(piece) for piece in pieces) + z.finish()
    tool = ["gzip", "-dc"] if encoding == b"gzip" else ["zstd", "-dcq"]
    decoded = subprocess.run(tool, input=out, capture_output=True, timeout=30)
    assert decoded.returncode == 0 and decoded.stdout == b"".join(pieces)


def test_each_piece_is_flushed_so_a_stream_is_not_held_back():
    z = compressor(b"gzip")
    first = z.feed(b"data: hello\n\n")
    assert gzip.decompress(first + z.finish()) == b"data: hello\n\n"
    z = compressor(b"gzip")
    partial = z.feed(b"event one\n")
    d = __import__("zlib").decompressobj(31)
    assert d.decompress(partial) == b"event one\n"  # readable before the stream ends
