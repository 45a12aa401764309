# -*- test-case-name: tests.unit.http.test_h1, tests.e2e.test_http1_proxy, tests.e2e.test_hostile_http -*-
"""Recognise and read a plain HTTP/1.x request head (RFC 9112).

Just enough HTTP for the port-80 redirector and for plain HTTP that lands
on 443: the request line, the headers, and a bounded size.  Anything that
could be smuggled (obsolete line folding, whitespace before the colon,
conflicting framing headers) is rejected.

Substring tests on the hot path are written ``block.find(b"...") >= 0``
rather than ``b"..." in block``: on Python 3.11 the ``in`` operator first
tries its operand as an integer and builds (then discards) a formatted
TypeError, which made it the most expensive step of a request.
"""

from __future__ import annotations

import re
from typing import Iterable

from edge.sniff import NEED_MORE, Malformed, NeedMore

_REQUEST_LINE = re.compile(rb"([A-Z]+) ([^\s\x00-\x1f\x7f]+) HTTP/(1\.[01])\Z")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TARGET_CHARS = re.compile(rb"[^\s\x00-\x1f\x7f]+")
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]{1,253})(:\d{1,5})?")  # fullmatch: "$" would pass a final "\n"


class BadRequest(Malformed):
    """A request the server answers with ``status`` and then closes."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class RequestHead:
    """A parsed request head.  The header lines stay one block of bytes (``fields``, each line
    starting with CRLF) with a lower-cased twin for lookups: relaying them costs no re-encoding."""

    __slots__ = ("method", "target", "version", "fields", "lower", "length", "line")

    def __init__(self, method: str, target: str, version: str, fields: bytes, length: int,
                 line: bytes = b"") -> None:
        self.method = method
        self.target = target
        self.version = version
        self.fields = fields
        self.lower = fields.lower()
        self.length = length  # bytes up to and including the blank line
        self.line = line  # the request line as sent, without its version: b"GET /path"

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        """Every header as (lower-case name, value), in order."""
        return tuple((name.decode("ascii"), value.decode("latin-1"))
                     for name, value in field_list(self.fields, self.lower))

    def pairs(self) -> list[tuple[bytes, bytes]]:
        """Every header as (lower-case name, value) bytes, in order."""
        return field_list(self.fields, self.lower)

    def header(self, name: str) -> str | None:
        """The (first) value of ``name``; None if absent."""
        value = field_value(self.fields, self.lower, name.encode("ascii"))
        return None if value is None else value.decode("latin-1")

    def get(self, name: bytes) -> bytes | None:
        """The (first) value of the header ``name`` (lower-case bytes), as bytes; None if absent."""
        return field_value(self.fields, self.lower, name)

    def values(self, name: str) -> list[str]:
        return [v.decode("latin-1") for v in field_values(self.fields, self.lower, name.encode("ascii"))]

    @property
    def host(self) -> str | None:
        """The Host header's name part, lower-cased, without port."""
        value = self.header("host")
        if value is None:
            return None
        return split_host(value)[0]

    @property
    def path(self) -> str:
        """The path and query of an origin-form or absolute-form target.

        An origin-form target (``/...``) is returned as it is, even when its query holds a URL
        (``/login?next=https://x/y``): only a target that starts with a scheme is cut down.
        """
        target = self.target
        if target.startswith("/"):
            return target
        if target[:8].lower().startswith(("http://", "https://")):
            rest = target.split("://", 1)[1]
            cut = min((at for at in (rest.find("/"), rest.find("?")) if at >= 0), default=-1)
            if cut < 0:
                return "/"
            return rest[cut:] if rest[cut] == "/" else "/" + rest[cut:]
        return target  # "*" (OPTIONS); other forms are refused by parse_request_head

    @property
    def keep_alive(self) -> bool:
        if self.lower.find(b"\r\nconnection:") < 0:  # the usual request: no Connection header
            return self.version != "1.0"
        connection = (self.header("connection") or "").lower()
        if self.version == "1.0":
            return "keep-alive" in connection
        return "close" not in connection

    @property
    def has_body(self) -> bool:
        return self.lower.find(b"\r\ntransfer-encoding:") >= 0 or (self.header("content-length") or "0") != "0"


# A header block (lines each starting with CRLF) is valid when every line is "token:" and more.
# (Kept apart from the control-character check: one pattern for both has no literal prefix to
# search for, and costs three times as much on a typical head.)
_BAD_FIELD_LINE = re.compile(rb"\r\n(?![!#$%&'*+.^_`|~0-9A-Za-z-]+:)")


# Control characters other than HTAB have no place in a field value (RFC 9110 5.5); CR and LF are counted apart.
# (Deleting them and comparing lengths is three times as fast as a regex search on a typical head.)
CONTROLS = bytes(range(0x00, 0x09)) + b"\x0b\x0c" + bytes(range(0x0e, 0x20)) + b"\x7f"
_CONTROLS_CR_LF = CONTROLS + b"\r\n"


def check_fields(fields: bytes) -> None:
    """Reject malformed header lines, obsolete folding, and control characters (CR, LF, NUL, ...) inside a line."""
    if _BAD_FIELD_LINE.search(fields):
        raise Malformed("malformed header line")
    # One pass for both: deleting the controls, CR and LF removes two bytes per CRLF exactly when there is no
    # other control, no lone CR and no lone LF (each CR and each LF outside a CRLF would be one byte more).
    if len(fields.translate(None, _CONTROLS_CR_LF)) + 2 * fields.count(b"\r\n") != len(fields):
        raise Malformed("control character in a header line")


def field_values(fields: bytes, lower: bytes, name: bytes) -> list[bytes]:
    """Every value of the header ``name`` (lower case) in a header block."""
    key = b"\r\n" + name + b":"
    values, at = [], lower.find(key)
    while at >= 0:
        start = at + len(key)
        stop = fields.find(b"\r\n", start)
        values.append(fields[start : stop if stop >= 0 else len(fields)].strip(b" \t"))
        at = lower.find(key, start)
    return values


def field_value(fields: bytes, lower: bytes, name: bytes) -> bytes | None:
    """The first value of the header ``name`` (lower case) in a header block."""
    key = b"\r\n" + name + b":"
    at = lower.find(key)
    if at < 0:
        return None
    start = at + len(key)
    stop = fields.find(b"\r\n", start)
    return fields[start : stop if stop >= 0 else len(fields)].strip(b" \t")


def field_list(fields: bytes, lower: bytes) -> list[tuple[bytes, bytes]]:
    """Every header of a block as (lower-case name, value)."""
    out = []
    for line, lower_line in zip(fields.split(b"\r\n")[1:], lower.split(b"\r\n")[1:]):
        colon = line.index(b":")
        out.append((lower_line[:colon], line[colon + 1 :].strip(b" \t")))
    return out


def drop_fields(fields: bytes, lower: bytes, pattern: re.Pattern) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Remove the header lines ``pattern`` matches (on the lower-cased block); returns the rest and
    the removed (lower-case name, value) pairs.  ``pattern`` is made by :func:`field_pattern`."""
    pieces, removed, pos = [], [], 0
    for match in pattern.finditer(lower):
        removed.append((match.group(1), fields[match.start(2) : match.end(2)].strip(b" \t")))
        pieces.append(fields[pos : match.start()])
        pos = match.end()
    if not removed:
        return fields, removed
    pieces.append(fields[pos:])
    return b"".join(pieces), removed


def field_pattern(names: "Iterable[bytes]") -> re.Pattern:
    """A pattern for :func:`drop_fields` matching whole header lines with one of ``names``."""
    return re.compile(rb"\r\n(" + b"|".join(re.escape(n) for n in sorted(names)) + rb"):([^\r]*)")


# Headers that concern one connection only (RFC 9110 7.6.1); a proxy never relays them.
HOP_BY_HOP = frozenset(
    b"connection keep-alive proxy-connection te trailer transfer-encoding upgrade "
    b"proxy-authenticate proxy-authorization".split()
)

_SPLIT_HOSTS: dict[str, tuple[str, int | None]] = {}


def split_host(value: str) -> tuple[str, int | None]:
    """Split a Host header into a lower-case name and an optional port."""
    known = _SPLIT_HOSTS.get(value)
    if known is not None:
        return known
    if len(_SPLIT_HOSTS) > 4096:
        _SPLIT_HOSTS.clear()
    _SPLIT_HOSTS[value] = result = _split_host(value)
    return result


def _split_host(value: str) -> tuple[str, int | None]:
    if not _HOST.fullmatch(value):
        raise BadRequest(400, "invalid Host header")
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        port = rest[1:] if rest else None
    else:
        name, _, port = value.partition(":")
        port = port or None
    return name.lower().rstrip("."), (int(port) if port else None)


def parse_request_head(data: bytes, limit: int = 65536) -> RequestHead | NeedMore:
    """Parse one request head; NEED_MORE until the blank line arrives."""
    end = data.find(b"\r\n\r\n", 0, limit)
    if end < 0:
        if len(data) >= limit:
            raise BadRequest(431, "request header fields too large")
        return NEED_MORE
    first = data.find(b"\r\n", 0, end)
    line, fields = (data[:end], b"") if first < 0 else (data[:first], data[first:end])
    match = _REQUEST_LINE.match(line)
    if not match:
        raise BadRequest(400, "malformed request line")
    try:
        check_fields(fields)
    except Malformed as e:
        raise BadRequest(400, str(e)) from None
    method, target, version = match.groups()
    head = RequestHead(method.decode("latin-1"), target.decode("latin-1"), version.decode("latin-1"), fields,
                       end + 4, line[: match.end(2)])
    _check_target(head)
    _check_framing(head)
    return head


# Fields a Connection header may not name: the message is framed and routed by them, so a proxy that
# removed them as hop-by-hop would send the origin another message than the one it read (smuggling).
PROTECTED_FIELDS = frozenset((b"content-length", b"transfer-encoding", b"host"))
_PLAIN_CONNECTION = frozenset((b"keep-alive", b"Keep-Alive", b"close", b"Close", b"upgrade", b"Upgrade"))


def connection_tokens(fields: bytes, lower: bytes) -> set[bytes]:
    """The lower-cased tokens of every Connection header of a block."""
    return {token.strip(b" \t") for value in field_values(lower, lower, b"connection")
            for token in value.split(b",") if token.strip(b" \t")}


def _check_target(head: RequestHead) -> None:
    if not target_form_ok(head.method, head.target):
        raise BadRequest(400, "unsupported request target")


def target_form_ok(method: str, target: str) -> bool:
    """An origin-form target (``/path?query``), an absolute http(s) URL, or ``*`` for OPTIONS."""
    if target.startswith("/"):
        return True
    if target == "*":
        return method == "OPTIONS"
    scheme, sep, rest = target.partition("://")
    return bool(sep) and scheme.lower() in ("http", "https") and bool(rest) and not rest.startswith("/")


def request_line_ok(method: bytes, target: bytes) -> bool:
    """Whether ``method`` and ``target`` (an HTTP/2 ``:method`` and ``:path``) make a valid HTTP/1.1
    request line (RFC 9112 3; RFC 9113 8.3.1): a token, and a target of visible characters."""
    return _TOKEN.fullmatch(method) is not None and _TARGET_CHARS.fullmatch(target) is not None \
        and target_form_ok(method.decode("ascii"), target.decode("latin-1"))


def _check_framing(head: RequestHead) -> None:
    lower = head.lower
    at = lower.find(b"\r\nconnection:")
    if at >= 0:
        value = head.get(b"connection")
        if value not in _PLAIN_CONNECTION or lower.find(b"\r\nconnection:", at + 13) >= 0:
            if PROTECTED_FIELDS & connection_tokens(head.fields, lower):
                raise BadRequest(400, "Connection names a framing or Host header")
    if lower.find(b"\r\ncontent-length:") < 0 and lower.find(b"\r\ntransfer-encoding:") < 0 \
            and lower.count(b"\r\nhost:") == 1:
        return  # the usual bodiless request with its one Host header
    lengths = field_values(head.fields, lower, b"content-length")
    if lower.find(b"\r\ntransfer-encoding:") >= 0:
        if lengths:
            raise BadRequest(400, "both Content-Length and Transfer-Encoding")
        # Every Transfer-Encoding line counts (the backend joins them): chunked once, and last.
        codings = [token.strip(b" \t") for value in field_values(lower, lower, b"transfer-encoding")
                   for token in value.split(b",")]
        if head.version == "1.0":
            raise BadRequest(400, "Transfer-Encoding in an HTTP/1.0 request")
        if codings != [b"chunked"]:  # the one coding the edge reads; a backend might read others differently
            raise BadRequest(501, "unsupported Transfer-Encoding")
    # bytes.isdigit is ASCII only ("\xb2", a superscript two in Latin-1, is not a digit here; str.isdigit says it is)
    if len(lengths) > 1 or any(not v.isdigit() or len(v) > 18 for v in lengths):  # one, even if repeated alike
        raise BadRequest(400, "invalid Content-Length")
    if head.lower.count(b"\r\nhost:") > 1:
        raise BadRequest(400, "more than one Host header")
    if head.version == "1.1" and head.lower.find(b"\r\nhost:") < 0:
        raise BadRequest(400, "missing Host header")
