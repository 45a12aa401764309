"""The sniffers that tell plain HTTP and SSH from TLS on 443."""

from __future__ import annotations

from edge.sniff import NEED_MORE, NO_MATCH
from edge.sniff.http import sniff_http
from edge.sniff.ssh import sniff_ssh


def test_sniff_http_and_ssh():
    assert sniff_http(b"GET / HTTP/1.1\r\n") is True
    assert sniff_http(b"OPTI") is NEED_MORE
    assert sniff_http(b"\x16\x03\x01") is NO_MATCH
    assert sniff_http(b"FOO / HTTP/1.1") is NO_MATCH
    assert sniff_ssh(b"SSH-2.0-OpenSSH_9.2\r\n") is True
    assert sniff_ssh(b"SS") is NEED_MORE
    assert sniff_ssh(b"GET") is NO_MATCH
