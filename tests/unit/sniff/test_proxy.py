"""PROXY protocol v1/v2: what the edge builds, it and HAProxy's spec parse back."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings, strategies as st

from edge.sniff import NEED_MORE, NO_MATCH, Malformed
from edge.sniff.proxy import ProxyHeader, V2_SIGNATURE, build_v1, build_v2, sniff_proxy

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
port = st.integers(0, 65535)


def test_v1_examples():
    assert build_v1(("192.0.2.1", 5000), ("127.0.0.1", 443)) == b"PROXY TCP4 192.0.2.1 127.0.0.1 5000 443\r\n"
    header = sniff_proxy(b"PROXY TCP6 2001:db8::1 ::1 1234 443\r\nSSH-2.0-x")
    assert header == ProxyHeader(1, ("2001:db8::1", 1234), ("::1", 443), 37)
    assert sniff_proxy(b"PROXY UNKNOWN\r\n").source is None


def test_v2_example_with_authority():
    data = build_v2(("192.0.2.1", 5000), ("127.0.0.1", 443), "app.example.test")
    assert data.startswith(V2_SIGNATURE + b"\x21\x11")
    header = sniff_proxy(data + b"rest")
    assert header == ProxyHeader(2, ("192.0.2.1", 5000), ("127.0.0.1", 443), len(data), "app.example.test")


def test_mixed_families_are_mapped_to_ipv6():
    header = sniff_proxy(build_v2(("192.0.2.1", 1), ("::1", 2)))
    assert header.source == ("::ffff:192.0.2.1", 1)


def test_local_command_has_no_address():
    data = V2_SIGNATURE + b"\x20\x00\x00\x00"
    assert sniff_proxy(data) == ProxyHeader(2, None, None, 16)


def test_prefixes_need_more_and_others_do_not_match():
    for data in (b"P", b"PROXY", b"PROXY TCP4 1.2.3.4", V2_SIGNATURE[:5], V2_SIGNATURE + b"\x21\x11\x00"):
        assert sniff_proxy(data) is NEED_MORE
    for data in (b"GET / HTTP/1.1", b"\x16\x03\x01", b"SSH-2.0", b"PROXX"):
        assert sniff_proxy(data) is NO_MATCH


@pytest.mark.parametrize(
    "data",
    [
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
        b"PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
        b"PROXY " + b"1" * 200,
        V2_SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12),
        V2_SIGNATURE + b"\x25\x11\x00\x0c" + bytes(12),
        V2_SIGNATURE + b"\x21\x11\x00\x04" + bytes(4),
        V2_SIGNATURE + b"\x21\x11\x00\x10" + bytes(12) + b"\x02\x00\x09x",
    ],
)
def test_malformed(data):
    with pytest.raises(Malformed):
        sniff_proxy(data)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)), port, port,
       st.one_of(st.none(), st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=60)))
def test_round_trip(addresses, sport, dport, authority):
    src, dst = addresses
    for data, version in ((build_v1((src, sport), (dst, dport)), 1), (build_v2((src, sport), (dst, dport), authority), 2)):
        header = sniff_proxy(data + b"tail")
        assert header.version == version and header.length == len(data)
        assert ipaddress.ip_address(header.source[0]) == ipaddress.ip_address(src)
        assert ipaddress.ip_address(header.destination[0]) == ipaddress.ip_address(dst)
        assert (header.source[1], header.destination[1]) == (sport, dport)
        if version == 2:
            assert header.authority == authority
        for cut in range(len(data)):
            assert sniff_proxy(data[:cut]) in (NEED_MORE, NO_MATCH) or cut == 0


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([b"PROXY ", V2_SIGNATURE, b""]), st.binary(max_size=200))
def test_random_input_never_crashes(prefix, data):
    try:
        sniff_proxy(prefix + data)
    except Malformed:
        pass
