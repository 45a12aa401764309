# -*- test-case-name: tests.unit.http.test_transform, tests.e2e.test_transform_e2e -*-
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
from typing import Iterable, NamedTuple, Protocol

import zstandard

from edge.config.headers import Fields, HeaderRules, hsts_value  # noqa: F401 (the rules' values live below config)
from edge.config import Route
from edge.http.framing import LAST_CHUNK, ChunkedReader, chunk


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


# -- what a route does to one request and its response ---------------------------------------------

PREFIX_FIELD = b"x-forwarded-prefix"  # Traefik's name for the prefix strip_prefix took off


class Forwarding(NamedTuple):
    """How a request goes on to the backend: its path (and query), and the rules for its head."""

    path: str
    rules: HeaderRules


def forwarding(route: "Route", path: str) -> Forwarding:
    """``route``'s ``strip_prefix`` and ``headers.request`` for a request for ``path``: the backend gets
    the path without the prefix and ``X-Forwarded-Prefix`` (a client's own is never passed on), then the
    route's request rules, applied after edge's forwarding headers."""
    rules = route.request_headers
    prefix = route.strip_prefix
    if prefix is None:
        return Forwarding(path, rules)
    stripped = strip_prefix(path, prefix)
    gone = rules.gone
    own: tuple[tuple[bytes, bytes], ...] = ()
    if stripped is not None and PREFIX_FIELD not in gone:
        own = ((PREFIX_FIELD, prefix.rstrip("/").encode("latin-1")),)
    return Forwarding(path if stripped is None else stripped,
                      HeaderRules(own + rules.set, rules.remove | {PREFIX_FIELD}))


def edits_request(route: "Route") -> bool:
    """Whether ``route`` changes the requests it relays (else the servers take their fast path)."""
    return route.strip_prefix is not None or bool(route.request_headers)


class ResponsePolicy:
    """What a route does to the responses of one request: its response rules, HSTS on HTTPS, and
    compression when the request's ``Accept-Encoding`` allows it.  Edge's own answers get the first
    two (:meth:`fields`), the backend's all three (:meth:`backend`)."""

    __slots__ = ("rules", "hsts", "method", "accept")

    def __init__(self, rules: HeaderRules, hsts: bytes | None, method: bytes, accept: bytes | None) -> None:
        self.rules = rules
        self.hsts = hsts
        self.method = method
        self.accept = accept  # None: no compression for this request

    def fields(self, fields: Iterable[tuple[bytes, bytes]]) -> Fields:
        """``fields`` with the route's response rules, then Strict-Transport-Security (replacing the backend's)."""
        out = self.rules.apply(fields) if self.rules else list(fields)
        if self.hsts is not None:
            out = [item for item in out if item[0] != b"strict-transport-security"]
            out.append((b"strict-transport-security", self.hsts))
        return out

    def backend(self, status: int, fields: Iterable[tuple[bytes, bytes]]) -> tuple[Fields, bytes | None]:
        """A backend's response fields for the client, and the encoding its body gets (None: as it is)."""
        out = self.fields(fields)
        if self.accept is None or not should_compress(self.method, status, out):
            return out, None
        encoding = choose_encoding(self.accept)
        if encoding is None:
            return out, None
        return compressed_fields(out, encoding), encoding


def response_policy(route: "Route | None", scheme: str, method: bytes,
                    accept_encoding: "Iterable[bytes]" = ()) -> ResponsePolicy | None:
    """The :class:`ResponsePolicy` of a request to ``route`` over ``scheme`` ("https" or "http"); None
    when the route changes nothing in its responses.  ``accept_encoding``: the request's values of it."""
    if route is None:
        return None
    hsts = route.hsts if scheme == "https" else None
    if hsts is None and not route.response_headers and not route.compress:
        return None
    accept = None
    if route.compress:
        accept = b", ".join(accept_encoding) or None
        if accept is not None and len(accept) > 4096:  # no client needs more: a longer one is not parsed
            accept = None
    return ResponsePolicy(route.response_headers, hsts, method, accept)


class BodyCoder:
    """A response body on its way to the client, each stage optional and streaming: de-chunked (a
    chunked HTTP/1.1 backend body), compressed, chunked again (an HTTP/1.1 client without a length).
    Trailers of a de-chunked body are kept when it is chunked again."""

    __slots__ = ("reader", "compressor", "chunked")

    def __init__(self, dechunk: bool, encoding: bytes | None, chunked: bool) -> None:
        self.reader = ChunkedReader(collect=True) if dechunk else None
        self.compressor = compressor(encoding) if encoding is not None else None
        self.chunked = chunked

    def feed(self, data: bytes, done: bool = False) -> bytes:
        """The client's bytes for ``data``; ``done``: the body ended (the end's bytes come too)."""
        reader = self.reader
        if reader is not None:
            reader.feed(data)
            pieces, data = reader.pieces, b""  # a list: the reader collects
            if pieces:
                data = b"".join(pieces)
                pieces.clear()
        z = self.compressor
        if z is not None:
            data = (z.feed(data) if data else b"") + (z.finish() if done else b"")
        if not self.chunked:
            return data
        out = chunk(data)
        if done:
            trailers = reader.trailers if reader is not None else None
            out += b"0\r\n" + b"".join(line + b"\r\n" for line in trailers) + b"\r\n" if trailers else LAST_CHUNK
        return out
