"""Read SNI and ALPN out of a TLS ClientHello (RFC 8446 section 4.1.2).

The hello may be split over several TCP segments and over several TLS
records (large post-quantum key shares do that), so the parser reassembles
handshake bytes from consecutive handshake records before it decodes them.
It never looks past the hello and never decrypts anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edge.sniff import NEED_MORE, NO_MATCH, Malformed, Verdict

HANDSHAKE = 22
CLIENT_HELLO = 1
EXT_SERVER_NAME = 0
EXT_ALPN = 16
MAX_RECORD = 16384 + 2048
_HOSTNAME = re.compile(rb"^[A-Za-z0-9_.-]{1,253}$")


@dataclass(frozen=True)
class ClientHello:
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
                sni, alpn = _parse_body(bytes(handshake[4 : 4 + body_length]))
                return ClientHello(sni, alpn, offset)


class _Reader:
    """Bounds-checked reads over one buffer; every overrun is Malformed."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data, self.pos = data, pos
        self.end = len(data) if end is None else end

    def take(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise Malformed("ClientHello field runs past its enclosing length")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, length_bytes: int) -> "_Reader":
        n = self.uint(length_bytes)
        start = self.pos
        self.take(n)
        return _Reader(self.data, start, start + n)

    @property
    def left(self) -> int:
        return self.end - self.pos


def _parse_body(body: bytes) -> tuple[str | None, tuple[str, ...]]:
    r = _Reader(body)
    version = r.uint(2)
    if version >> 8 != 3:
        raise Malformed(f"ClientHello version {version:#06x} is not TLS")
    r.take(32)  # random
    session_id = r.vector(1)
    if session_id.left > 32:
        raise Malformed("session id longer than 32 bytes")
    suites = r.vector(2)
    if suites.left == 0 or suites.left % 2:
        raise Malformed("bad cipher suite list")
    if r.vector(1).left == 0:
        raise Malformed("empty compression method list")
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    if r.left == 0:
        return sni, alpn
    extensions = r.vector(2)
    if r.left:
        raise Malformed("bytes after the extensions")
    # A hello carries a dozen or more extensions: walk them with plain index arithmetic.
    pos, end = extensions.pos, extensions.end
    seen: set[int] = set()
    while pos < end:
        if pos + 4 > end:
            raise Malformed("ClientHello field runs past its enclosing length")
        kind = (body[pos] << 8) | body[pos + 1]
        start = pos + 4
        pos = start + ((body[pos + 2] << 8) | body[pos + 3])
        if pos > end:
            raise Malformed("ClientHello field runs past its enclosing length")
        if kind in seen:
            raise Malformed(f"extension {kind} appears twice")
        seen.add(kind)
        if kind == EXT_SERVER_NAME:
            sni = _parse_server_name(_Reader(body, start, pos))
        elif kind == EXT_ALPN:
            alpn = _parse_alpn(_Reader(body, start, pos))
    return sni, alpn


def _parse_server_name(ext: _Reader) -> str | None:
    names = ext.vector(2)
    if ext.left:
        raise Malformed("bytes after the server name list")
    host: str | None = None
    while names.left:
        name_type = names.uint(1)
        name = names.vector(2)
        value = name.take(name.left)
        if name_type == 0:
            if host is not None:
                raise Malformed("two host names in the server name extension")
            if not _HOSTNAME.match(value):
                raise Malformed("server name is not a valid host name")
            host = value.decode("ascii").lower().rstrip(".")
    return host


def _parse_alpn(ext: _Reader) -> tuple[str, ...]:
    protocols = ext.vector(2)
    if ext.left:
        raise Malformed("bytes after the ALPN list")
    found = []
    while protocols.left:
        proto = protocols.vector(1)
        if proto.left == 0:
            raise Malformed("empty ALPN protocol name")
        found.append(proto.take(proto.left).decode("latin-1"))
    return tuple(found)
