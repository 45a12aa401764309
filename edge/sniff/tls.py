# -*- test-case-name: tests.unit.sniff.test_tls, tests.e2e.test_passthrough -*-
"""Read SNI and ALPN out of a TLS ClientHello (RFC 8446 section 4.1.2).

The hello may be split over several TCP segments and over several TLS
records (large post-quantum key shares do that), so the parser reassembles
handshake bytes from consecutive handshake records before it decodes them.
It never looks past the hello and never decrypts anything.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from edge.sniff import NEED_MORE, NO_MATCH, Malformed, Verdict

HANDSHAKE = 22
CLIENT_HELLO = 1
EXT_SERVER_NAME = 0
EXT_ALPN = 16
MAX_RECORD = 16384 + 2048
_HOSTNAME = re.compile(rb"^[A-Za-z0-9_.-]{1,253}$")


class ClientHello(NamedTuple):
    """What routing needs from a hello: server name, ALPN protocols, size."""

    sni: str | None
    alpn: tuple[str, ...]
    length: int  # bytes of the records that carried the hello


def sniff_tls(data: bytes) -> ClientHello | Verdict:
    """Parse a ClientHello from the start of ``data``.

    Returns NO_MATCH if ``data`` does not start with a handshake record,
    NEED_MORE while the hello is incomplete, raises :class:`Malformed` for
    a broken one.
    """
    if not data:
        return NEED_MORE
    if data[0] != HANDSHAKE:
        return NO_MATCH
    # Nearly every hello comes whole in its first record: parse it in place, without copying.
    if len(data) >= 9 and data[1] == 3 and data[5] == CLIENT_HELLO:
        length = (data[3] << 8) | data[4]
        body_length = (data[6] << 16) | (data[7] << 8) | data[8]
        if 4 + body_length <= length <= MAX_RECORD and len(data) >= 5 + length:
            sni, alpn = _parse_body(data, 9, 9 + body_length)
            return ClientHello(sni, alpn, 5 + length)
    return _reassemble(data)


def _reassemble(data: bytes) -> ClientHello | Verdict:
    """A hello spread over several records: join their handshake bytes, then parse."""
    handshake = bytearray()
    offset = 0
    while True:
        if len(data) < offset + 5:
            return NEED_MORE
        content_type, major, _minor = data[offset], data[offset + 1], data[offset + 2]
        length = int.from_bytes(data[offset + 3 : offset + 5], "big")
        if content_type != HANDSHAKE:
            raise Malformed("record before the end of the ClientHello is not a handshake record")
        if major != 3:
            raise Malformed(f"record version {major}.{_minor} is not TLS")
        if length == 0 or length > MAX_RECORD:
            raise Malformed(f"handshake record length {length} is out of range")
        if len(data) < offset + 5 + length:
            handshake += data[offset + 5 :]
            if len(handshake) >= 1 and handshake[0] != CLIENT_HELLO:
                raise Malformed("first handshake message is not a ClientHello")
            return NEED_MORE
        handshake += data[offset + 5 : offset + 5 + length]
        offset += 5 + length
        if handshake[0] != CLIENT_HELLO:
            raise Malformed("first handshake message is not a ClientHello")
        if len(handshake) >= 4:
            body_length = int.from_bytes(handshake[1:4], "big")
            if len(handshake) >= 4 + body_length:
                sni, alpn = _parse_body(bytes(handshake), 4, 4 + body_length)
                return ClientHello(sni, alpn, offset)


def _overrun() -> Malformed:
    return Malformed("ClientHello field runs past its enclosing length")


def _parse_body(b: bytes, pos: int, end: int) -> tuple[str | None, tuple[str, ...]]:
    """The hello's body in ``b[pos:end]``, walked with index arithmetic (it runs once per connection)."""
    if pos + 35 > end:
        raise _overrun()
    if b[pos] != 3:
        raise Malformed(f"ClientHello version {(b[pos] << 8) | b[pos + 1]:#06x} is not TLS")
    pos += 34  # version, random
    n = b[pos]  # session id
    pos += 1 + n
    if pos + 2 > end:
        raise _overrun()
    if n > 32:
        raise Malformed("session id longer than 32 bytes")
    n = (b[pos] << 8) | b[pos + 1]  # cipher suites
    pos += 2 + n
    if pos + 1 > end:
        raise _overrun()
    if n == 0 or n % 2:
        raise Malformed("bad cipher suite list")
    n = b[pos]  # compression methods
    pos += 1 + n
    if pos > end:
        raise _overrun()
    if n == 0:
        raise Malformed("empty compression method list")
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    if pos == end:
        return sni, alpn
    if pos + 2 > end:
        raise _overrun()
    n = (b[pos] << 8) | b[pos + 1]
    pos += 2
    if pos + n > end:
        raise _overrun()
    if pos + n < end:
        raise Malformed("bytes after the extensions")
    seen: set[int] = set()
    while pos < end:
        if pos + 4 > end:
            raise _overrun()
        kind = (b[pos] << 8) | b[pos + 1]
        start = pos + 4
        pos = start + ((b[pos + 2] << 8) | b[pos + 3])
        if pos > end:
            raise _overrun()
        if kind in seen:
            raise Malformed(f"extension {kind} appears twice")
        seen.add(kind)
        if kind == EXT_SERVER_NAME:
            sni = _parse_server_name(b, start, pos)
        elif kind == EXT_ALPN:
            alpn = _parse_alpn(b, start, pos)
    return sni, alpn


def _vector2(b: bytes, pos: int, end: int, what: str) -> int:
    """The end of the 2-byte-length vector at ``pos``, which must fill ``b[pos:end]``."""
    if pos + 2 > end:
        raise _overrun()
    inner = pos + 2 + ((b[pos] << 8) | b[pos + 1])
    if inner > end:
        raise _overrun()
    if inner < end:
        raise Malformed(f"bytes after the {what}")
    return inner


def _parse_server_name(b: bytes, pos: int, end: int) -> str | None:
    end = _vector2(b, pos, end, "server name list")
    pos += 2
    host: str | None = None
    while pos < end:
        if pos + 3 > end:
            raise _overrun()
        name_type = b[pos]
        start = pos + 3
        pos = start + ((b[pos + 1] << 8) | b[pos + 2])
        if pos > end:
            raise _overrun()
        if name_type == 0:
            if host is not None:
                raise Malformed("two host names in the server name extension")
            value = b[start:pos]
            if not _HOSTNAME.match(value):
                raise Malformed("server name is not a valid host name")
            host = value.decode("ascii").lower().rstrip(".")
    return host


def _parse_alpn(b: bytes, pos: int, end: int) -> tuple[str, ...]:
    end = _vector2(b, pos, end, "ALPN list")
    pos += 2
    found = []
    while pos < end:
        start = pos + 1
        pos = start + b[pos]
        if pos > end:
            raise _overrun()
        if pos == start:
            raise Malformed("empty ALPN protocol name")
        found.append(b[start:pos].decode("latin-1"))
    return tuple(found)
