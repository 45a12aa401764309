"""The forwarding headers edge adds (edge.http.forwarded): X-Forwarded-* and Forwarded (RFC 7239)."""

from __future__ import annotations

import ipaddress

from hypothesis import given, strategies as st

from edge.http.forwarded import FORWARDING_FIELDS, forwarded_block, forwarded_fields


def test_ipv4_client():
    assert forwarded_fields("192.0.2.7", "https", b"a.test") == [
        (b"x-forwarded-for", b"192.0.2.7"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"a.test"),
        (b"forwarded", b'for=192.0.2.7;host="a.test";proto=https'),
    ]


def test_ipv6_client_is_bracketed_and_quoted_in_forwarded_only():
    assert forwarded_fields("2001:db8::1", "http", b"a.test:8080") == [
        (b"x-forwarded-for", b"2001:db8::1"),
        (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-host", b"a.test:8080"),
        (b"forwarded", b'for="[2001:db8::1]";host="a.test:8080";proto=http'),
    ]


def test_ipv4_mapped_ipv6_client():
    fields = dict(forwarded_fields("::ffff:192.0.2.1", "https", b"a.test"))
    assert fields[b"forwarded"] == b'for="[::ffff:192.0.2.1]";host="a.test";proto=https'


def test_prior_chains_come_first_in_order():
    fields = forwarded_fields(
        "192.0.2.7", "https", b"a.test",
        prior_for=[b"203.0.113.1", b"198.51.100.2, 198.51.100.3"],
        prior_forwarded=[b"for=203.0.113.1;proto=http", b'for="[2001:db8::2]", for=unknown'])
    assert fields == [
        (b"x-forwarded-for", b"203.0.113.1, 198.51.100.2, 198.51.100.3, 192.0.2.7"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"a.test"),
        (b"forwarded", b'for=203.0.113.1;proto=http, for="[2001:db8::2]", for=unknown, '
                       b'for=192.0.2.7;host="a.test";proto=https'),
    ]


def test_prior_chains_may_be_any_iterable_and_are_not_changed():
    prior = [b"203.0.113.1"]
    fields = forwarded_fields("192.0.2.7", "http", b"a.test", prior_for=prior,
                              prior_forwarded=(value for value in [b"for=203.0.113.1"]))
    assert prior == [b"203.0.113.1"]
    assert fields[0] == (b"x-forwarded-for", b"203.0.113.1, 192.0.2.7")
    assert fields[3] == (b"forwarded", b'for=203.0.113.1, for=192.0.2.7;host="a.test";proto=http')


def test_block_format():
    block = forwarded_block("2001:db8::1", "https", b"a.test", [b"203.0.113.1"], [b"for=203.0.113.1"])
    assert block == (b"\r\nx-forwarded-for: 203.0.113.1, 2001:db8::1"
                     b"\r\nx-forwarded-proto: https"
                     b"\r\nx-forwarded-host: a.test"
                     b'\r\nforwarded: for=203.0.113.1, for="[2001:db8::1]";host="a.test";proto=https')


def test_block_without_priors():
    assert forwarded_block("192.0.2.7", "http", b"a.test") == (
        b"\r\nx-forwarded-for: 192.0.2.7\r\nx-forwarded-proto: http\r\nx-forwarded-host: a.test"
        b'\r\nforwarded: for=192.0.2.7;host="a.test";proto=http')


def test_forwarding_fields_are_the_four_names_edge_writes():
    assert FORWARDING_FIELDS == {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"}
    assert {name for name, _ in forwarded_fields("192.0.2.7", "https", b"a.test")} == FORWARDING_FIELDS


# -- properties --------------------------------------------------------------------------------

FIELD_VALUE = st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b)
HOST = st.from_regex(rb"[A-Za-z0-9.-]{1,30}(:[0-9]{1,5})?", fullmatch=True)
CLIENT = st.ip_addresses().map(str)


@given(client=CLIENT, scheme=st.sampled_from(["http", "https"]), host=HOST,
       prior_for=st.lists(FIELD_VALUE, max_size=4), prior_forwarded=st.lists(FIELD_VALUE, max_size=4))
def test_no_line_breaks_when_inputs_have_none(client, scheme, host, prior_for, prior_forwarded):
    fields = forwarded_fields(client, scheme, host, prior_for, prior_forwarded)
    for name, value in fields:
        assert b"\r" not in name and b"\n" not in name
        assert b"\r" not in value and b"\n" not in value
    block = forwarded_block(client, scheme, host, prior_for, prior_forwarded)
    lines = block.split(b"\r\n")
    assert lines[0] == b"" and len(lines) == 5
    assert [line.split(b": ", 1) for line in lines[1:]] == [[name, value] for name, value in fields]


@given(client=CLIENT, scheme=st.sampled_from(["http", "https"]), host=HOST,
       prior_for=st.lists(FIELD_VALUE, max_size=4))
def test_edge_element_is_last(client, scheme, host, prior_for):
    fields = dict(forwarded_fields(client, scheme, host, prior_for))
    assert fields[b"x-forwarded-for"] == b", ".join([*prior_for, client.encode()])
    assert fields[b"x-forwarded-proto"] == scheme.encode()
    assert fields[b"x-forwarded-host"] == host
    node = f'"[{client}]"' if ipaddress.ip_address(client).version == 6 else client
    assert fields[b"forwarded"] == f'for={node};host="{host.decode()}";proto={scheme}'.encode()
