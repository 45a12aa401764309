# -*- test-case-name: tests.unit.http.test_hpack_encoder, tests.e2e.test_h2_server -*-
"""An HPACK encoder for edge's responses that never uses the dynamic table (as HAProxy's does not).

h2 encodes headers with ``hpack.Encoder``, which indexes every field into
the dynamic table and so must search and update it field by field: about
two fifths of the CPU an HTTP/2 request cost edge.  Without the dynamic
table a field's encoding depends on the field alone, so it is cached: a
field from the static table (``:status: 200``) is its index, any other a
literal "without indexing" (RFC 7541 6.2.2), its name by static index when
there is one, strings as they are (no Huffman).  The block is a little
larger on the wire; the decoder's table is never touched.

h2 sets :attr:`header_table_size` when the client changes
SETTINGS_HEADER_TABLE_SIZE; the next block then starts with the dynamic
table size update RFC 7541 4.2 requires.  The object stands in for
``H2Connection.encoder`` (its ``encode`` and ``header_table_size``).
"""

from __future__ import annotations

from typing import Iterable

from hpack.table import HeaderTable

_FIELDS: dict[tuple[bytes, bytes], int] = {}
_NAMES: dict[bytes, int] = {}
for _index, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, start=1):
    _FIELDS.setdefault((_name, _value), _index)
    _NAMES.setdefault(_name, _index)

CACHE_SIZE = 4096
CACHE_FIELD = 256  # bytes of name and value at most, for a field to be cached


def integer(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """RFC 7541 5.1: ``value`` with an N-bit prefix, ``first`` giving the bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def string(data: bytes) -> bytes:
    """RFC 7541 5.2, without Huffman coding."""
    return integer(len(data), 7) + data


def field(name: bytes, value: bytes) -> bytes:
    """One header field: its static index, or a literal without indexing."""
    index = _FIELDS.get((name, value))
    if index is not None:
        return integer(index, 7, 0x80)
    index = _NAMES.get(name)
    if index is not None:
        return integer(index, 4) + string(value)
    return b"\x00" + string(name) + string(value)


class StaticEncoder:
    """Encodes header lists of (lower-case bytes name, bytes value) without a dynamic table."""

    def __init__(self) -> None:
        self.cache: dict[tuple[bytes, bytes], bytes] = {}
        self._table_size = 4096
        self.resize: int | None = None  # a size update owed at the start of the next block

    @property
    def header_table_size(self) -> int:
        return self._table_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._table_size = value
        self.resize = value if self.resize is None else min(self.resize, value)

    def encode(self, headers: Iterable[tuple[bytes, bytes]], huffman: bool = True) -> bytes:
        cache = self.cache
        pieces = []
        if self.resize is not None:
            pieces.append(integer(min(self.resize, self._table_size), 5, 0x20))
            if self.resize != self._table_size:
                pieces.append(integer(self._table_size, 5, 0x20))
            self.resize = None
        for header in headers:
            encoded = cache.get(header)
            if encoded is None:
                name, value = header[0], header[1]
                encoded = field(name, value)
                if len(name) + len(value) <= CACHE_FIELD:  # large fields are not kept: they would pin memory
                    if len(cache) >= CACHE_SIZE:
                        cache.clear()
                    cache[(name, value)] = encoded
            pieces.append(encoded)
        return b"".join(pieces)
