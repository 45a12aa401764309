# -*- test-case-name: tests.unit.sniff.test_proxy, tests.e2e.test_proxy_protocol -*-
"""The PROXY protocol, versions 1 and 2: parse a received header, build one to send.

Specification: HAProxy's ``proxy-protocol.txt``.  Twisted ships private
parsers for v1/v2, but they neither report an incomplete prefix nor read
TLVs nor build headers, which the dispatcher and forwarder need.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

from edge.config.access import IPAddress
from edge.sniff import NEED_MORE, NO_MATCH, Malformed, Verdict

V1_PREFIX = b"PROXY "
V1_MAX = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
TLV_AUTHORITY = 0x02
_V2_MAX_BODY = 4096  # far above any real header; a bound on what is buffered


@dataclass(frozen=True)
class ProxyHeader:
    """A parsed header; ``source``/``destination`` are None for LOCAL/UNKNOWN."""

    version: int
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    length: int
    authority: str | None = None


def sniff_proxy(data: bytes) -> ProxyHeader | Verdict:
    """Parse a v1 or v2 header at the start of ``data``."""
    if data.startswith(V2_SIGNATURE):
        return _parse_v2(data)
    if data.startswith(V1_PREFIX):
        return _parse_v1(data)
    if data and (V2_SIGNATURE.startswith(data) or V1_PREFIX.startswith(data)):
        return NEED_MORE
    return NO_MATCH


def _parse_v1(data: bytes) -> ProxyHeader | Verdict:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise Malformed("PROXY v1 header longer than 107 bytes")
        if data.find(b"\n") >= 0:
            raise Malformed("PROXY v1 header not ended by CRLF")
        return NEED_MORE
    parts = data[:end].split(b" ")
    if len(parts) >= 2 and parts[1] == b"UNKNOWN":
        return ProxyHeader(1, None, None, end + 2)
    if len(parts) != 6 or parts[1] not in (b"TCP4", b"TCP6"):
        raise Malformed("PROXY v1 header is not 'PROXY TCP4|TCP6 src dst sport dport'")
    family = ipaddress.IPv4Address if parts[1] == b"TCP4" else ipaddress.IPv6Address
    try:
        src = str(family(parts[2].decode("ascii")))
        dst = str(family(parts[3].decode("ascii")))
        sport, dport = (_port(p) for p in parts[4:6])
    except (ValueError, UnicodeDecodeError):
        raise Malformed("PROXY v1 header has a bad address or port") from None
    return ProxyHeader(1, (src, sport), (dst, dport), end + 2)


def _port(text: bytes) -> int:
    if not text.isdigit() or (len(text) > 1 and text.startswith(b"0")) or int(text) > 65535:
        raise ValueError(text)
    return int(text)


def _parse_v2(data: bytes) -> ProxyHeader | Verdict:
    if len(data) < 16:
        return NEED_MORE
    ver_cmd, fam, length = data[12], data[13], int.from_bytes(data[14:16], "big")
    if ver_cmd >> 4 != 2:
        raise Malformed("PROXY v2 header with an unknown version")
    command = ver_cmd & 0x0F
    if command not in (0, 1):
        raise Malformed("PROXY v2 header with an unknown command")
    if length > _V2_MAX_BODY:
        raise Malformed("PROXY v2 header too long")
    if len(data) < 16 + length:
        return NEED_MORE
    body = data[16 : 16 + length]
    total = 16 + length
    if command == 0:  # LOCAL: the balancer's own connection (health check)
        return ProxyHeader(2, None, None, total)
    family, transport = fam >> 4, fam & 0x0F
    if family == 0:  # UNSPEC
        return ProxyHeader(2, None, None, total)
    if transport not in (1, 2):
        raise Malformed("PROXY v2 header with an unknown transport")
    if family == 1:
        size, packed = 12, socket.AF_INET
    elif family == 2:
        size, packed = 36, socket.AF_INET6
    elif family == 3:
        return ProxyHeader(2, None, None, total)  # AF_UNIX: no IP address to use
    else:
        raise Malformed("PROXY v2 header with an unknown address family")
    if length < size:
        raise Malformed("PROXY v2 header shorter than its addresses")
    half = (size - 4) // 2
    src = socket.inet_ntop(packed, body[:half])
    dst = socket.inet_ntop(packed, body[half : 2 * half])
    sport, dport = struct.unpack("!HH", body[2 * half : size])
    authority = _authority(body[size:])
    return ProxyHeader(2, (src, sport), (dst, dport), total, authority)


def _authority(tlvs: bytes) -> str | None:
    authority = None
    pos = 0
    while pos < len(tlvs):
        if pos + 3 > len(tlvs):
            raise Malformed("PROXY v2 TLV truncated")
        kind, size = tlvs[pos], int.from_bytes(tlvs[pos + 1 : pos + 3], "big")
        value = tlvs[pos + 3 : pos + 3 + size]
        if len(value) != size:
            raise Malformed("PROXY v2 TLV runs past the header")
        if kind == TLV_AUTHORITY:
            authority = value.decode("utf-8", "replace")
        pos += 3 + size
    return authority


def _same_family(src: str, dst: str) -> tuple[IPAddress, IPAddress]:
    a, b = ipaddress.ip_address(src.split("%")[0]), ipaddress.ip_address(dst.split("%")[0])
    if a.version != b.version:
        a, b = (ipaddress.IPv6Address(f"::ffff:{x}") if x.version == 4 else x for x in (a, b))
    return a, b


def build_v1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A v1 header for a TCP connection from ``source`` to ``destination``."""
    src, dst = _same_family(source[0], destination[0])
    proto = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {proto} {src} {dst} {source[1]} {destination[1]}\r\n".encode("ascii")


def build_v2(
    source: tuple[str, int], destination: tuple[str, int], authority: str | None = None
) -> bytes:
    """A v2 PROXY header, with the SNI in the AUTHORITY TLV when known."""
    src, dst = _same_family(source[0], destination[0])
    fam = 0x11 if src.version == 4 else 0x21
    body = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    if authority:
        value = authority.encode("utf-8")
        body += struct.pack("!BH", TLV_AUTHORITY, len(value)) + value
    return V2_SIGNATURE + bytes((0x21, fam)) + struct.pack("!H", len(body)) + body
