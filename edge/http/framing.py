# -*- test-case-name: tests.unit.http.test_framing, tests.e2e.test_http1_proxy -*-
"""HTTP/1.1 message framing (RFC 9112), sans-I/O: response heads and body readers.

The HTTP/1.1 proxy relays bodies as the bytes they arrived as (a chunked
body stays chunked), so all it needs to know is where a message ends.
These readers say that and nothing more: ``feed(data)`` returns how many
bytes of ``data`` belong to the body and whether the body is complete; the
rest belongs to the next message.  Work is per chunk, never per byte.
Anything that could desynchronise the two ends (bad chunk sizes, bare LF,
conflicting lengths) raises :class:`Malformed` rather than being guessed.
"""

from __future__ import annotations

from edge.sniff import NEED_MORE, Malformed, NeedMore
from edge.http.h1 import CONTROLS, check_fields, field_values

MAX_LINE = 4096  # a chunk-size or trailer line
MAX_TRAILERS = 64  # trailer lines kept by a collecting reader
_HEX = frozenset(b"0123456789abcdefABCDEF")
_LINE_CONTROLS = CONTROLS + b"\r"  # a chunk-size or trailer line, its CRLF taken off


class BodyTooLarge(Malformed):
    """A chunked body went past the limit it was read with."""


class ResponseHead:
    """A parsed response head; the header lines stay one block of bytes (``fields``, each line
    starting with CRLF) with a lower-cased twin for lookups, so relaying them costs no re-encoding."""

    __slots__ = ("version", "status", "reason", "fields", "lower", "length")

    def __init__(self, version: bytes, status: int, reason: bytes, fields: bytes, length: int) -> None:
        self.version = version  # b"1.1" or b"1.0"
        self.status = status
        self.reason = reason
        self.fields = fields
        self.lower = fields.lower()
        self.length = length  # bytes up to and including the blank line

    def values(self, name: bytes) -> list[bytes]:
        return field_values(self.fields, self.lower, name)

    def tokens(self, name: bytes) -> set[bytes]:
        """The comma-separated, lower-cased tokens of every ``name`` header (Connection, Transfer-Encoding)."""
        return {token.strip() for value in field_values(self.lower, self.lower, name)
                for token in value.split(b",") if token.strip()}

    @property
    def keep_alive(self) -> bool:
        if self.version == b"1.0":
            return b"keep-alive" in self.tokens(b"connection")
        lower = self.lower
        return (lower.find(b"\r\nconnection:") < 0 or lower.find(b"close") < 0
                or b"close" not in self.tokens(b"connection"))


def parse_response_head(data: bytes, limit: int = 65536) -> ResponseHead | NeedMore:
    """Parse one response head; NEED_MORE until its blank line has arrived."""
    end = data.find(b"\r\n\r\n", 0, limit)
    if end < 0:
        if len(data) >= limit:
            raise Malformed("response head too large")
        return NEED_MORE
    first = data.find(b"\r\n", 0, end)
    line, fields = (data[:end], b"") if first < 0 else (data[:first], data[first:end])
    if not line.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")) or len(line) < 12:
        raise Malformed("malformed status line")
    code = line[9:12]
    if not code.isdigit() or (len(line) > 12 and line[12:13] != b" "):
        raise Malformed("malformed status line")
    check_fields(fields)
    return ResponseHead(line[5:8], int(code), line[13:], fields, end + 4)


class LengthReader:
    """A body of a declared length (Content-Length)."""

    __slots__ = ("remaining",)

    def __init__(self, length: int) -> None:
        self.remaining = length

    def feed(self, data: bytes) -> tuple[int, bool]:
        take = min(self.remaining, len(data))
        self.remaining -= take
        return take, self.remaining == 0


class UntilClose:
    """A response body delimited by the server closing the connection."""

    __slots__ = ()

    def feed(self, data: bytes) -> tuple[int, bool]:
        return len(data), False


_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class ChunkedReader:
    """A chunked body: finds its end, counts its payload, optionally collects it (to de-chunk)."""

    __slots__ = ("state", "remaining", "line", "total", "limit", "pieces", "trailers")

    def __init__(self, limit: int | None = None, collect: bool = False) -> None:
        self.state = _SIZE
        self.remaining = 0
        self.line = b""  # a size or trailer line split across reads
        self.total = 0  # payload bytes so far
        self.limit = limit
        self.pieces: list[bytes] | None = [] if collect else None
        self.trailers: list[bytes] | None = [] if collect else None  # the trailer lines, when collecting

    def feed(self, data: bytes) -> tuple[int, bool]:
        pos, size = 0, len(data)
        while pos < size:
            state = self.state
            if state == _DONE:
                break
            if state == _DATA:
                take = min(self.remaining, size - pos)
                if self.pieces is not None:
                    self.pieces.append(data[pos : pos + take])
                pos += take
                self.remaining -= take
                if not self.remaining:
                    self.state = _DATA_END
                continue
            end = data.find(b"\n", pos)
            if end < 0:
                self.line += data[pos:]
                if len(self.line) > MAX_LINE:
                    raise Malformed("chunk line too long")
                return size, False
            line = self.line + data[pos:end]
            self.line = b""
            pos = end + 1
            if len(line) > MAX_LINE or not line.endswith(b"\r"):
                raise Malformed("chunk line not ended by CRLF")
            line = line[:-1]
            if len(line.translate(None, _LINE_CONTROLS)) != len(line):  # in an extension or trailer: no CR, NUL, ...
                raise Malformed("control character in a chunk line")
            if state == _SIZE:
                self._size_line(line)
            elif state == _DATA_END:
                if line:
                    raise Malformed("chunk data longer than its size")
                self.state = _SIZE
            elif not line:  # _TRAILER: the blank line ends the body
                self.state = _DONE
            elif self.trailers is not None:
                if len(self.trailers) >= MAX_TRAILERS:
                    raise Malformed("too many trailer fields")
                self.trailers.append(line)
        return pos, self.state == _DONE

    def _size_line(self, line: bytes) -> None:
        digits = line.split(b";", 1)[0].rstrip(b" \t")
        if not digits or len(digits) > 15 or not _HEX.issuperset(digits):
            raise Malformed("invalid chunk size")
        chunk = int(digits, 16)
        self.total += chunk
        if self.limit is not None and self.total > self.limit:
            raise BodyTooLarge("chunked body larger than allowed")
        if chunk:
            self.remaining = chunk
            self.state = _DATA
        else:
            self.state = _TRAILER

    @property
    def done(self) -> bool:
        return self.state == _DONE


def response_reader(head: ResponseHead, request_method: bytes) -> LengthReader | ChunkedReader | UntilClose | None:
    """How the body of ``head`` (answering ``request_method``) is framed; None when it has none."""
    if request_method == b"HEAD" or head.status in (204, 304) or head.status < 200:
        return None
    lower = head.lower
    if lower.find(b"\r\ntransfer-encoding:") >= 0:
        codings = field_values(lower, lower, b"transfer-encoding")[-1].rsplit(b",", 1)
        return ChunkedReader() if codings[-1].strip() == b"chunked" else UntilClose()
    at = lower.find(b"\r\ncontent-length:")
    if at < 0:
        return UntilClose()
    if lower.find(b"\r\ncontent-length:", at + 17) < 0:  # the usual single header
        end = lower.find(b"\r\n", at + 17)
        value = lower[at + 17 : end if end >= 0 else len(lower)].strip(b" \t")
        if not value.isdigit():
            raise Malformed("invalid Content-Length in response")
        length = int(value)
        return LengthReader(length) if length else None
    lengths = set(field_values(head.fields, lower, b"content-length"))
    if len(lengths) > 1 or not next(iter(lengths)).isdigit():
        raise Malformed("invalid Content-Length in response")
    length = int(next(iter(lengths)))
    return LengthReader(length) if length else None


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked body (for bodies the server delimited by closing)."""
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


LAST_CHUNK = b"0\r\n\r\n"
