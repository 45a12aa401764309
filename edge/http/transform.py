# -*- test-case-name: tests.http.test_transform -*-
"""What a route changes in the requests and responses it relays (sans-IO): header rules, ``hsts``,
``strip_prefix`` and compression.

Both HTTP servers call these on the fields they already hold (lists of ``(name, value)`` byte pairs,
names lower-case), so HTTP/1.1 and HTTP/2 clients get the same result.  Compression is decided once
per response from the request's ``Accept-Encoding`` and the response's head, then streams: each body
piece in, compressed bytes out, flushed per piece so a slow stream (server-sent events, a long
download) is not held back; never the whole body in memory.
"""

from __future__ import annotations

import zlib
from typing import Iterable, Protocol

import zstandard

from edge.headers import Fields, HeaderRules, hsts_value  # noqa: F401 (the rules' values live below config)


def strip_prefix(path: str, prefix: str) -> str | None:
    """``path`` (with its query) without ``prefix``, at a segment boundary; None if it does not start
    with it.  ``/app/x?y`` -> ``/x?y``, ``/app`` -> ``/``, ``/apple`` -> None."""
    prefix = prefix.rstrip("/")
    if not prefix:
        return path
    rest = path[len(prefix):]
    if not path.startswith(prefix) or (rest and rest[0] not in "/?"):
        return None
    if not rest or rest[0] == "?":
        return "/" + rest
    return rest


# -- compression ---------------------------------------------------------------------------------

COMPRESSIBLE = (b"text/", b"application/json", b"application/javascript", b"application/xml",
                b"application/xhtml+xml", b"application/rss+xml", b"application/atom+xml", b"application/ld+json",
                b"application/manifest+json", b"application/wasm", b"image/svg+xml", b"application/x-javascript",
                b"font/ttf", b"font/otf", b"application/vnd.ms-fontobject")
ENCODINGS = (b"zstd", b"gzip")  # preferred first, at equal q
MIN_SIZE = 512  # smaller bodies grow or gain nothing


def choose_encoding(accept_encoding: bytes | None, offered: tuple[bytes, ...] = ENCODINGS) -> bytes | None:
    """The best of ``offered`` the client accepts (RFC 9110 12.5.3: q-values, ``*``, ``q=0`` refuses)."""
    if not accept_encoding:
        return None
    weights: dict[bytes, float] = {}
    for item in accept_encoding.lower().split(b","):
        name, _, params = item.strip().partition(b";")
        q = 1.0
        for param in params.split(b";"):
            key, _, value = param.strip().partition(b"=")
            if key == b"q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if name:
            weights[name.strip()] = q
    best, best_q = None, 0.0
    for encoding in offered:
        q = weights.get(encoding, weights.get(b"*", 0.0))
        if q > best_q:
            best, best_q = encoding, q
    return best


def _field(fields: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for n, v in fields:
        if n == name:
            return v
    return None


def should_compress(method: bytes, status: int, fields: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a response may be compressed: a body of a compressible type, not encoded already, not
    ``no-transform``, not a range, and not known to be tiny."""
    fields = list(fields)
    if method == b"HEAD" or status < 200 or status in (204, 206, 304):
        return False
    if _field(fields, b"content-encoding") not in (None, b"identity") or _field(fields, b"content-range"):
        return False
    if b"no-transform" in (_field(fields, b"cache-control") or b"").lower():
        return False
    kind = (_field(fields, b"content-type") or b"").lower()
    if not kind.startswith(COMPRESSIBLE):
        return False
    length = _field(fields, b"content-length")
    if length is not None and length.isdigit() and int(length) < MIN_SIZE:
        return False
    return True


def compressed_fields(fields: Iterable[tuple[bytes, bytes]], encoding: bytes) -> Fields:
    """The response's fields once compressed: no Content-Length (the size is not known before the end),
    Content-Encoding set, Vary naming Accept-Encoding, a strong ETag made weak (RFC 9110 8.8.1)."""
    out: Fields = []
    vary = None
    for name, value in fields:
        if name == b"content-length":
            continue
        if name == b"vary":
            vary = value
            continue
        if name == b"etag" and not value.startswith(b"W/"):
            value = b"W/" + value
        out.append((name, value))
    if vary is None:
        vary = b"accept-encoding"
    elif b"accept-encoding" not in vary.lower() and vary.strip() != b"*":
        vary = vary + b", accept-encoding"
    out.append((b"vary", vary))
    out.append((b"content-encoding", encoding))
    return out


class Compressor(Protocol):
    def feed(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


class _Gzip:
    def __init__(self, level: int = 5) -> None:
        self._z = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: a gzip header and trailer

    def feed(self, data: bytes) -> bytes:
        return self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._z.flush(zlib.Z_FINISH)


class _Zstd:
    def __init__(self, level: int = 3) -> None:
        self._z = zstandard.ZstdCompressor(level=level).compressobj()

    def feed(self, data: bytes) -> bytes:
        return self._z.compress(data) + self._z.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def finish(self) -> bytes:
        return self._z.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)


def compressor(encoding: bytes) -> Compressor:
    return _Zstd() if encoding == b"zstd" else _Gzip()
