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


# -- what a route does to one request (forwarding, ResponsePolicy, BodyCoder) -----------------------

from edge.config import Route  # noqa: E402
from edge.http.transform import BodyCoder, forwarding, response_policy  # noqa: E402


def route(**kwargs) -> Route:
    return Route(hosts=("a.test",), tls="edge", backend="web", **kwargs)


def test_forwarding_strips_the_prefix_and_says_so():
    r = route(paths=("/app",), strip_prefix="/app", request_headers=HeaderRules(set=((b"x-a", b"1"),)))
    path, rules = forwarding(r, "/app/x?y")
    assert path == "/x?y"
    fields = [(b"x-forwarded-prefix", b"/forged"), (b"x-a", b"0"), (b"x-b", b"2")]
    assert rules.apply(fields) == [(b"x-b", b"2"), (b"x-forwarded-prefix", b"/app"), (b"x-a", b"1")]
    path, rules = forwarding(r, "/apple")  # no segment boundary: as it is, and no prefix said
    assert path == "/apple" and rules.apply(fields) == [(b"x-b", b"2"), (b"x-a", b"1")]


def test_response_policy_hsts_only_on_https_and_rules_first():
    r = route(hsts=b"max-age=60", response_headers=HeaderRules(remove=frozenset({b"server"})))
    fields = [(b"server", b"nginx"), (b"strict-transport-security", b"max-age=1")]
    assert response_policy(r, "https", b"GET").fields(fields) == [(b"strict-transport-security", b"max-age=60")]
    assert response_policy(r, "http", b"GET").fields(fields) == [(b"strict-transport-security", b"max-age=1")]
    assert response_policy(route(), "https", b"GET") is None  # nothing to do: the servers' fast path


def test_response_policy_compresses_what_the_client_accepts():
    r = route(compress=True)
    text = [(b"content-type", b"text/plain"), (b"content-length", b"5000")]
    fields, encoding = response_policy(r, "https", b"GET", [b"gzip"]).backend(200, text)
    assert encoding == b"gzip" and (b"content-encoding", b"gzip") in fields and b"content-length" not in dict(fields)
    assert response_policy(r, "https", b"GET", []).backend(200, text) == (text, None)
    assert response_policy(r, "https", b"GET", [b"gzip;q=1," * 1000]).backend(200, text)[1] is None  # too long


@pytest.mark.parametrize("chunked", [False, True])
def test_body_coder_dechunks_compresses_and_chunks_again_keeping_trailers(chunked):
    coder = BodyCoder(True, b"gzip", chunked)
    body = b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 1\r\n\r\n"
    out = b"".join(coder.feed(body[i:i + 7], i + 7 >= len(body)) for i in range(0, len(body), 7))
    if chunked:
        assert out.endswith(b"0\r\nx-sum: 1\r\n\r\n")
        payload, rest = b"", out
        while not rest.startswith(b"0\r\n"):
            size, _, rest = rest.partition(b"\r\n")
            payload, rest = payload + rest[: int(size, 16)], rest[int(size, 16) + 2:]
        out = payload
    assert gzip.decompress(out) == b"hello world"
