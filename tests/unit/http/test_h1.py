"""The HTTP/1.1 request-head reader (edge.http.h1)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from edge.sniff import NEED_MORE, Malformed
from edge.http.h1 import BadRequest, parse_request_head


def test_parse_head():
    data = b"GET /a?b=1 HTTP/1.1\r\nHost: Example.TEST:8080\r\nX: y\r\n\r\nBODY"
    head = parse_request_head(data)
    assert (head.method, head.path, head.version, head.host) == ("GET", "/a?b=1", "1.1", "example.test")
    assert head.length == len(data) - 4 and head.keep_alive and not head.has_body
    for cut in range(head.length):
        assert parse_request_head(data[:cut]) is NEED_MORE


@pytest.mark.parametrize(
    "data, status",
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
        (b"GET /  HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 70000, 431),
        (b"POST / HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\nContent-Length: 3\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nConnection: close, Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: HOST\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \xb2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1234567890123456789\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", 400),
        (b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET ftp://a/b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ],
)
def test_bad_requests(data, status):
    with pytest.raises(BadRequest) as caught:
        parse_request_head(data)
    assert caught.value.status == status


def test_targets_and_connection_tokens_that_are_fine():
    for data, path in [
        (b"GET /q?next=https://x.test/other HTTP/1.1\r\nHost: a\r\n\r\n", "/q?next=https://x.test/other"),
        (b"GET http://a/b?c=d HTTP/1.1\r\nHost: a\r\n\r\n", "/b?c=d"),
        (b"GET HTTPS://a HTTP/1.1\r\nHost: a\r\n\r\n", "/"),
        (b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", "*"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close, x-trace, upgrade\r\n\r\n", "/"),
    ]:
        assert parse_request_head(data).path == path


def test_request_lines_built_from_http2_pseudo_headers():
    from edge.http.h1 import request_line_ok

    assert request_line_ok(b"GET", b"/a?b=https://c/d") and request_line_ok(b"OPTIONS", b"*")
    for method, target in [(b"G T", b"/"), (b"GET", b"/a b"), (b"GET", b"/\x01"), (b"GET", b"x"), (b"GET", b"*"),
                           (b"", b"/"), (b"GET", b"")]:
        assert not request_line_ok(method, target), (method, target)


def test_invalid_host_header():
    head = parse_request_head(b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n")
    with pytest.raises(BadRequest):
        head.host


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_random_input_never_crashes(data):
    try:
        head = parse_request_head(b"GET / HTTP/1.1\r\n" + data, limit=1024)
        if head is not NEED_MORE:
            head.host, head.path, head.keep_alive, head.has_body
    except Malformed:
        pass


def test_a_host_with_a_final_newline_is_invalid():
    """``$`` in a Python pattern matches before a final newline: the Host pattern must match whole."""
    from edge.http.h1 import split_host

    for value in ("a.example\n", "a.example:80\n", "a.example\r", "a" * 254):
        with pytest.raises(BadRequest):
            split_host(value)
    assert split_host("A.Example:8443") == ("a.example", 8443)


def _three_counts(fields: bytes) -> bool:
    """The control-character check as it was first written: what check_fields's one pass must agree with."""
    from edge.http.h1 import CONTROLS

    return (len(fields.translate(None, CONTROLS)) == len(fields) and fields.count(b"\n") == fields.count(b"\r\n")
            and fields.count(b"\r") == fields.count(b"\n"))


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from([b"\r\n", b"\r", b"\n", b"\x00", b"\x7f", b"\t", b"a", b": ", b"\r\r\n", b"\n\r"]),
                max_size=12))
def test_the_one_pass_control_check_agrees_with_the_three_counts(pieces):
    from edge.http.h1 import _BAD_FIELD_LINE, check_fields

    fields = b"\r\nx-a:" + b"".join(pieces) + b"\r\nx-b: c"
    try:
        check_fields(fields)
        refused = None
    except Malformed as e:
        refused = str(e)
    if _BAD_FIELD_LINE.search(fields):  # the line check comes first
        assert refused == "malformed header line"
    else:
        assert (refused is None) == _three_counts(fields)
        assert refused in (None, "control character in a header line")


@pytest.mark.parametrize("version, connection, keep", [
    ("1.1", None, True), ("1.0", None, False), ("1.1", b"close", False), ("1.1", b"keep-alive", True),
    ("1.0", b"keep-alive", True), ("1.0", b"Keep-Alive", True), ("1.0", b"close", False)])
def test_keep_alive(version, connection, keep):
    line = b"" if connection is None else b"Connection: " + connection + b"\r\n"
    head = parse_request_head(b"GET / HTTP/%s\r\nHost: a\r\n%s\r\n" % (version.encode(), line))
    assert head.keep_alive is keep
