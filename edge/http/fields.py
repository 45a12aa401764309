# -*- test-case-name: tests.unit.http.test_fields, tests.e2e.test_h1_to_h2, tests.e2e.test_h2_server -*-
"""Request and response fields across protocols: one place for what passes a hop and what edge redoes.

Used by both client codecs on their way to an HTTP/2 backend (and by the
HTTP/2 front end towards HTTP/1.1 backends): a request's fields are sorted
once (:func:`sort_fields`) into those passed on as they are, the cookies,
the forwarding chain a client brought, and the framing edge redoes itself;
:func:`h2_request_fields` makes the HTTP/2 request head of them.  Values
only, no I/O.
"""

from __future__ import annotations

from typing import Any, Iterable, NamedTuple

from edge.http.forwarded import FORWARDING_FIELDS, forwarded_fields
from edge.http.h1 import CONTROLS, HOP_BY_HOP, BadRequest, drop_fields, field_pattern

# Request headers not passed on: hop-by-hop ones, framing edge redoes (Content-Length is re-added when
# valid; Expect is answered here), and the forwarding headers (edge writes its own).
REQUEST_SKIP = HOP_BY_HOP | FORWARDING_FIELDS | {b"host", b"content-length", b"expect"}
# Response headers not passed on (an HTTP/2 backend should send none of them anyway).
RESPONSE_SKIP = HOP_BY_HOP
_NOT_IN_LINE = CONTROLS + b"\r\n"  # what an HTTP/1.1 header line cannot hold
_PATTERNS: dict[frozenset[bytes], Any] = {}


def names_pattern(names: frozenset[bytes]) -> Any:
    """The (cached) :func:`edge.http.h1.field_pattern` of ``names``."""
    pattern = _PATTERNS.get(names)
    if pattern is None:
        if len(_PATTERNS) > 256:
            _PATTERNS.clear()
        pattern = _PATTERNS[names] = field_pattern(names)
    return pattern


def edit_fields(fields: bytes, drop: frozenset[bytes], add: Iterable[tuple[bytes, bytes]]) -> bytes:
    """A header block (``\r\nname: value`` lines) without the ``drop`` headers and with the ``add`` ones."""
    if drop:
        fields = drop_fields(fields, fields.lower(), names_pattern(drop))[0]
    return fields + b"".join(b"\r\n%s: %s" % field for field in add)


def block_fields(fields: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Fields as a header block (``\r\nname: value`` lines)."""
    return b"".join(b"\r\n%s: %s" % field for field in fields)


class SortedFields(NamedTuple):
    """A request's fields sorted for relaying."""

    kept: list[tuple[bytes, bytes]]  # passed on as they are
    cookies: list[bytes]
    prior_for: list[bytes]  # X-Forwarded-For and Forwarded from before edge
    prior_forwarded: list[bytes]
    length: int | None
    expect: bool  # Expect: 100-continue
    te_trailers: bool  # TE names "trailers": the client takes trailer fields


def sort_fields(fields: Iterable[tuple[bytes, bytes]], also_skip: frozenset[bytes] | set[bytes] = frozenset()) \
        -> SortedFields:
    """``fields`` (lower-case names) sorted for relaying; ``also_skip``: more names to drop (those an
    HTTP/1.1 Connection header lists).  An invalid or conflicting Content-Length is a 400."""
    kept: list[tuple[bytes, bytes]] = []
    cookies: list[bytes] = []
    prior_for: list[bytes] = []
    prior_forwarded: list[bytes] = []
    length = None
    expect = te_trailers = False
    for name, value in fields:
        if name == b"cookie":
            cookies.append(value)
        elif name not in REQUEST_SKIP:
            if name not in also_skip:
                kept.append((name, value))
        elif name == b"content-length":
            if not value.isdigit() or len(value) > 18 or (length is not None and int(value) != length):
                raise BadRequest(400, "invalid Content-Length")
            length = int(value)
        elif name == b"x-forwarded-for":
            prior_for.append(value)
        elif name == b"forwarded":
            prior_forwarded.append(value)
        elif name == b"expect":
            expect = value.lower() == b"100-continue"
        elif name == b"te":  # HTTP/2 allows "trailers" only; HTTP/1.1 a list of codings that may name it
            te_trailers = te_trailers or any(token.split(b";", 1)[0].strip(b" \t") == b"trailers"
                                             for token in value.lower().split(b","))
    return SortedFields(kept, cookies, prior_for, prior_forwarded, length, expect, te_trailers)


def h2_request_fields(sorted_: SortedFields, method: bytes, scheme: bytes, authority: bytes, path: bytes,
                      client: str, client_scheme: str) -> list[tuple[bytes, bytes]]:
    """The HTTP/2 request head for a backend: pseudo-headers first, the kept fields, cookies apart (as
    HTTP/2 keeps them), the length when the client gave one, ``te: trailers`` when it takes trailers (gRPC
    needs it), then edge's forwarding headers for ``client`` that came over ``client_scheme``."""
    fields = [(b":method", method), (b":scheme", scheme), (b":authority", authority), (b":path", path)]
    fields += sorted_.kept
    fields += ((b"cookie", crumb) for crumb in sorted_.cookies)
    if sorted_.length is not None:
        fields.append((b"content-length", b"%d" % sorted_.length))
    if sorted_.te_trailers:
        fields.append((b"te", b"trailers"))
    fields += forwarded_fields(client, client_scheme, authority, sorted_.prior_for, sorted_.prior_forwarded)
    return fields


def admitted_fields(fields: list[tuple[bytes, bytes]], drop: frozenset[bytes],
                    add: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``fields`` as a route's access rules change them: credentials dropped, identity headers added."""
    return [field for field in fields if field[0] not in drop] + list(add)


def response_fields(fields: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """A backend's response fields for the client: no hop-by-hop ones, and none whose name or value holds
    a control character (an HTTP/1.1 head must not be split by CR or LF from an HTTP/2 value)."""
    return [(name, value) for name, value in fields
            if name not in RESPONSE_SKIP and len(value.translate(None, _NOT_IN_LINE)) == len(value)
            and len(name.translate(None, _NOT_IN_LINE)) == len(name) and name.find(b":") < 0]
