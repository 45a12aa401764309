# -*- test-case-name: tests.unit.http.test_h2, tests.e2e.test_h2_server -*-
"""The events an HTTP codec reports to the relay: a request began, body bytes, its end, an abort.

Plain tuples, the way h11 and h2 report theirs, so that the relay does not
care which codec read the bytes.  ``stream`` names the request within its
connection (the HTTP/2 stream id).
"""

from __future__ import annotations

from typing import NamedTuple


class Request(NamedTuple):
    """A request head.  ``fields`` are (lower-case name, value) without pseudo-headers; ``ended``: no body
    follows; ``protocol``: an extended CONNECT's ``:protocol`` (RFC 8441); ``oversized``: the header block
    decoded to more than the limit (answered 431); ``malformed``: why the head breaks HTTP/2's rules
    (answered 400 on its stream, RFC 9113 8.1.1)."""

    stream: int
    method: bytes
    target: bytes
    authority: bytes | None
    fields: list[tuple[bytes, bytes]]
    ended: bool
    protocol: bytes | None = None
    oversized: bool = False
    malformed: str | None = None


class Response(NamedTuple):
    """A backend's response head (HTTP/2 backends): ``fields`` without ``:status``; ``ended``: no body."""

    stream: int
    status: int
    fields: list[tuple[bytes, bytes]]
    ended: bool


class Trailers(NamedTuple):
    """Trailer fields at the end of a body (gRPC's status travels in them); a BodyEnd follows."""

    stream: int
    fields: list[tuple[bytes, bytes]]


class Body(NamedTuple):
    """Request body bytes; ``size`` is what they count against flow control (padding included)."""

    stream: int
    data: bytes
    size: int


class BodyEnd(NamedTuple):
    """The client's side of the request is complete."""

    stream: int


class Aborted(NamedTuple):
    """The client reset this request (HTTP/2 RST_STREAM)."""

    stream: int
    code: int


class WindowOpened(NamedTuple):
    """The client can take more data on ``stream`` (0: on every stream)."""

    stream: int


class Draining(NamedTuple):
    """A backend's graceful GOAWAY: streams up to ``last_stream`` are still answered, later ones never
    were (and may go again elsewhere); the connection takes no new stream."""

    last_stream: int
    code: int


class Ended(NamedTuple):
    """The connection is over: the client said GOAWAY (``error`` False for a graceful one), or edge
    did after a protocol error or a flood (``error`` True; the GOAWAY is queued to send)."""

    reason: str
    error: bool
