"""ClientHello parsing: real OpenSSL hellos, re-fragmented, truncated and fuzzed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st
from OpenSSL import SSL

from edge.sniff import NEED_MORE, NO_MATCH, Malformed
from edge.sniff.tls import ClientHello, sniff_tls


def openssl_hello(sni: str | None = "app.example.test", alpn: list[bytes] | None = None) -> bytes:
    """The first flight of a real OpenSSL client, captured from a memory BIO."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if alpn:
        ctx.set_alpn_protos(alpn)
    conn = SSL.Connection(ctx, None)
    conn.set_connect_state()
    if sni:
        conn.set_tlsext_host_name(sni.encode())
    with pytest.raises(SSL.WantReadError):
        conn.do_handshake()
    return conn.bio_read(65536)


def refragment(hello: bytes, size: int) -> bytes:
    """The same handshake bytes, carried in records of at most ``size`` bytes."""
    payload = hello[5:]
    out = b""
    for i in range(0, len(payload), size):
        chunk = payload[i : i + size]
        out += bytes((22, 3, 1)) + len(chunk).to_bytes(2, "big") + chunk
    return out


HELLO = openssl_hello(alpn=[b"h2", b"http/1.1"])


def test_real_hello_gives_sni_and_alpn():
    result = sniff_tls(HELLO)
    assert result == ClientHello("app.example.test", ("h2", "http/1.1"), len(HELLO))


def test_hello_without_sni():
    result = sniff_tls(openssl_hello(sni=None))
    assert isinstance(result, ClientHello) and result.sni is None and result.alpn == ()


def test_sni_is_lowercased_and_trailing_dot_dropped():
    assert sniff_tls(openssl_hello(sni="App.Example.TEST.")).sni == "app.example.test"


def test_every_truncation_needs_more():
    for cut in range(len(HELLO)):
        assert sniff_tls(HELLO[:cut]) is NEED_MORE, cut


@pytest.mark.parametrize("size", [1, 7, 100, 512])
def test_hello_split_over_many_records(size):
    data = refragment(HELLO, size)
    result = sniff_tls(data)
    assert isinstance(result, ClientHello) and result.sni == "app.example.test"
    assert result.length == len(data)
    for cut in range(0, len(data), max(1, len(data) // 50)):
        assert sniff_tls(data[:cut]) is NEED_MORE


def test_large_post_quantum_sized_hello():
    """A hello padded past one packet (as ML-KEM key shares make them) parses."""
    big = openssl_hello(sni="big.example.test")
    assert isinstance(sniff_tls(big + b"\x17\x03\x03\x00\x01x"), ClientHello)
    assert len(refragment(big, 200)) > len(big)


def test_not_tls():
    assert sniff_tls(b"GET / HTTP/1.1\r\n") is NO_MATCH
    assert sniff_tls(b"SSH-2.0-OpenSSH") is NO_MATCH


@pytest.mark.parametrize(
    "data",
    [
        b"\x16\x03\x01\x00\x00",  # empty record
        b"\x16\x02\x00\x00\x05hello",  # SSLv2-ish version
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # ServerHello, not ClientHello
        b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00",  # body too short
        b"\x16\x03\x01\x50\x00",  # record longer than allowed
    ],
)
def test_malformed(data):
    with pytest.raises(Malformed):
        sniff_tls(data)


def test_wrong_record_type_inside_hello():
    data = refragment(HELLO, 100)
    broken = data[:105] + b"\x17" + data[106:]
    with pytest.raises(Malformed):
        sniff_tls(broken)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_crash(data):
    try:
        sniff_tls(data)
    except Malformed:
        pass


@settings(max_examples=500, deadline=None)
@given(st.integers(0, len(HELLO) - 1), st.integers(0, 255))
def test_corrupted_hello_never_crashes(position, value):
    data = bytearray(HELLO)
    data[position] = value
    try:
        result = sniff_tls(bytes(data))
    except Malformed:
        return
    assert result is NEED_MORE or result is NO_MATCH or isinstance(result, ClientHello)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=30))
def test_any_record_split_parses(sizes):
    payload, out, i = HELLO[5:], b"", 0
    for size in sizes * (len(HELLO) // sum(sizes) + 1):
        if i >= len(payload):
            break
        chunk = payload[i : i + size]
        out += bytes((22, 3, 1)) + len(chunk).to_bytes(2, "big") + chunk
        i += size
    assert sniff_tls(out).sni == "app.example.test"
