"""The HTTP request-head reader used by the redirector."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from edge.sniff import NEED_MORE, NO_MATCH, Malformed
from edge.sniff.http import BadRequest, parse_request_head, sniff_http
from edge.sniff.ssh import sniff_ssh


def test_sniff_http_and_ssh():
    assert sniff_http(b"GET / HTTP/1.1\r\n") is True
    assert sniff_http(b"OPTI") is NEED_MORE
    assert sniff_http(b"\x16\x03\x01") is NO_MATCH
    assert sniff_http(b"FOO / HTTP/1.1") is NO_MATCH
    assert sniff_ssh(b"SSH-2.0-OpenSSH_9.2\r\n") is True
    assert sniff_ssh(b"SS") is NEED_MORE
    assert sniff_ssh(b"GET") is NO_MATCH


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
    ],
)
def test_bad_requests(data, status):
    with pytest.raises(BadRequest) as caught:
        parse_request_head(data)
    assert caught.value.status == status


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
