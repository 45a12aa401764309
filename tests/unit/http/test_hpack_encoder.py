"""The static-table HPACK encoder: what hpack's decoder reads back, and what it keeps."""

from __future__ import annotations

import hpack
from hypothesis import given, settings, strategies as st

from edge.http.hpack_encoder import CACHE_FIELD, StaticEncoder, integer

names = st.sampled_from([b":status", b"content-type", b"date", b"server", b"etag", b"x-custom", b"set-cookie",
                         b"grpc-status", b"cache-control"])
values = st.binary(min_size=0, max_size=300).map(lambda b: bytes(c for c in b if 0x20 <= c < 0x7f))


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.lists(st.lists(st.tuples(names, values), max_size=12), max_size=6),
       st.lists(st.integers(0, 65536), max_size=3))
def test_every_block_decodes_to_what_was_encoded(blocks, resizes):
    encoder, decoder = StaticEncoder(), hpack.Decoder()
    for n, fields in enumerate(blocks):
        if n < len(resizes):  # the client changed SETTINGS_HEADER_TABLE_SIZE: the next block says so first
            decoder.max_allowed_table_size = resizes[n]
            encoder.header_table_size = resizes[n]
        assert decoder.decode(encoder.encode(fields), raw=True) == fields
    assert len(decoder.header_table.dynamic_entries) == 0  # nothing was ever indexed


def test_static_fields_are_one_byte_and_others_literal_without_indexing():
    encoder = StaticEncoder()
    assert encoder.encode([(b":status", b"200")]) == bytes([0x80 | 8])
    assert encoder.encode([(b":status", b"204")]) == bytes([0x80 | 9])
    # content-type is static entry 31: a literal without indexing with an indexed name (4-bit prefix: 15 + 16)
    assert encoder.encode([(b"content-type", b"a")]) == bytes([0x0F, 31 - 15, 1]) + b"a"
    assert encoder.encode([(b"x-a", b"b")]) == b"\x00\x03x-a\x01b"


def test_integers_follow_rfc_7541_5_1():
    assert integer(10, 5) == bytes([10])
    assert integer(1337, 5) == bytes([31, 154, 10])  # RFC 7541 C.1.2
    assert integer(42, 8) == bytes([42])


def test_table_size_updates_come_first_smallest_then_final():
    encoder, decoder = StaticEncoder(), hpack.Decoder()
    encoder.header_table_size = 0
    encoder.header_table_size = 1000
    block = encoder.encode([(b":status", b"200")])
    assert block[:1] == bytes([0x20])  # size 0 first (the smallest since the last block)
    decoder.max_allowed_table_size = 1000
    assert decoder.decode(block, raw=True) == [(b":status", b"200")]
    assert decoder.header_table.maxsize == 1000


def test_large_fields_are_not_cached():
    encoder = StaticEncoder()
    big = (b"x-big", b"v" * (CACHE_FIELD + 1))
    small = (b"x-small", b"v")
    encoder.encode([big, small])
    assert small in encoder.cache and big not in encoder.cache
