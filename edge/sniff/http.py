"""Recognise and read a plain HTTP/1.x request head (RFC 9112).

Just enough HTTP for the port-80 redirector and for plain HTTP that lands
on 443: the request line, the headers, and a bounded size.  Anything that
could be smuggled (obsolete line folding, whitespace before the colon,
conflicting framing headers) is rejected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edge.sniff import NEED_MORE, NO_MATCH, Malformed, Verdict

METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE", b"CONNECT")
_LONGEST_METHOD = max(len(m) for m in METHODS) + 1
_REQUEST_LINE = re.compile(rb"^([A-Z]+) (\S+) HTTP/(1\.[01])$")
_TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(:\d{1,5})?$")


class BadRequest(Malformed):
    """A request the server answers with ``status`` and then closes."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class RequestHead:
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]  # names lower-cased, in order
    length: int  # bytes up to and including the blank line

    def header(self, name: str) -> str | None:
        """The single value of ``name``; None if absent."""
        values = [v for k, v in self.headers if k == name]
        return values[0] if values else None

    @property
    def host(self) -> str | None:
        """The Host header's name part, lower-cased, without port."""
        value = self.header("host")
        if value is None:
            return None
        return split_host(value)[0]

    @property
    def path(self) -> str:
        """The path and query of an origin-form or absolute-form target."""
        target = self.target
        if "://" in target:
            rest = target.split("://", 1)[1]
            slash = rest.find("/")
            return rest[slash:] if slash >= 0 else "/"
        return target

    @property
    def keep_alive(self) -> bool:
        connection = (self.header("connection") or "").lower()
        if self.version == "1.0":
            return "keep-alive" in connection
        return "close" not in connection

    @property
    def has_body(self) -> bool:
        return self.header("transfer-encoding") is not None or (self.header("content-length") or "0") != "0"


def split_host(value: str) -> tuple[str, int | None]:
    """Split a Host header into a lower-case name and an optional port."""
    if not _HOST.match(value):
        raise BadRequest(400, "invalid Host header")
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        port = rest[1:] if rest else None
    else:
        name, _, port = value.partition(":")
        port = port or None
    return name.lower().rstrip("."), (int(port) if port else None)


def sniff_http(data: bytes) -> bool | Verdict:
    """True if ``data`` starts with an HTTP method and a space."""
    space = data.find(b" ", 0, _LONGEST_METHOD)
    if space >= 0:
        return True if data[:space] in METHODS else NO_MATCH
    if len(data) < _LONGEST_METHOD and any(m.startswith(data) for m in METHODS):
        return NEED_MORE
    return NO_MATCH


def parse_request_head(data: bytes, limit: int = 65536) -> RequestHead | Verdict:
    """Parse one request head; NEED_MORE until the blank line arrives."""
    end = data.find(b"\r\n\r\n", 0, limit)
    if end < 0:
        if len(data) >= limit:
            raise BadRequest(431, "request header fields too large")
        return NEED_MORE
    lines = data[:end].split(b"\r\n")
    match = _REQUEST_LINE.match(lines[0])
    if not match:
        raise BadRequest(400, "malformed request line")
    method, target, version = (g.decode("latin-1") for g in match.groups())
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            raise BadRequest(400, "malformed header line")
        value = value.strip(b" \t")
        if b"\n" in value or b"\r" in value or b"\x00" in value:
            raise BadRequest(400, "control character in a header value")
        headers.append((name.decode("ascii").lower(), value.decode("latin-1")))
    head = RequestHead(method, target, version, tuple(headers), end + 4)
    _check_framing(head)
    return head


def _check_framing(head: RequestHead) -> None:
    lengths = [v for k, v in head.headers if k == "content-length"]
    if head.header("transfer-encoding") is not None and lengths:
        raise BadRequest(400, "both Content-Length and Transfer-Encoding")
    if len(set(lengths)) > 1 or any(not v.isdigit() for v in lengths):
        raise BadRequest(400, "invalid Content-Length")
    if [k for k, _ in head.headers].count("host") > 1:
        raise BadRequest(400, "more than one Host header")
    if head.version == "1.1" and head.header("host") is None:
        raise BadRequest(400, "missing Host header")
