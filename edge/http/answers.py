# -*- test-case-name: tests.e2e.test_redirect, tests.e2e.test_http1_proxy, tests.e2e.test_hostile_http -*-
"""The short answers the edge gives itself, for HTTP/1.1 and HTTP/2: errors, redirects, ACME tokens.

One text/plain body, its length, ``Connection: close`` when the edge closes
after it, and the body left out for a HEAD request.  With ``[edge] errors_dir``
an error whose status has a page there gets that page as text/html instead
(``pages``: status -> bytes, read by :mod:`edge.config`); the same page
replaces a backend's error answer on a route with ``intercept_errors``.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Mapping

ErrorPages = Mapping[int, bytes]

STATUS_TEXT = {
    200: "OK", 308: "Permanent Redirect", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    408: "Request Timeout",
    413: "Content Too Large", 421: "Misdirected Request", 431: "Request Header Fields Too Large",
    429: "Too Many Requests",
    499: "Client Closed Request", 501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}
# The one-line bodies of the errors that need no further explanation.
REASON_TEXT = {
    400: "bad request", 401: "authentication required", 403: "access denied", 429: "too many requests",
    404: "no route for this host and path", 408: "request head took too long",
    413: "request body larger than this route allows", 421: "the Host header does not match the TLS server name",
    431: "request header fields too large", 501: "not implemented",
}
# What a client is told when the service behind a route fails it.  The detail (which backend and server,
# what went wrong, and a hint) goes to the log only: public answers name no backend, server or TLS internals.
PUBLIC_TEXT = {
    502: "the service did not answer", 503: "no server available for this service",
    504: "the service did not answer in time",
}


TEXT_PLAIN = b"text/plain; charset=utf-8"
TEXT_HTML = b"text/html; charset=utf-8"
# At most this much of a backend's intercepted error body is read (and dropped) to keep its connection.
DISCARD_LIMIT = 1024 * 1024
_H1_NAMES = {b"content-type": b"Content-Type", b"content-length": b"Content-Length", b"location": b"Location"}


def answer_fields(body: bytes, location: str | None = None, headers: tuple[tuple[str, str], ...] = (),
                  content_type: bytes = TEXT_PLAIN) -> list[tuple[bytes, bytes]]:
    """The fields of an answer of edge's own with ``body``: its type and length, a ``location`` for a
    redirect, and any more ``headers`` (names lower-cased); HTTP/1.1 and HTTP/2 send the same ones."""
    fields = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
    if location is not None:
        fields.append((b"location", location.encode("latin-1")))
    fields.extend((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers)
    return fields


def own_answer(status: int, text: str, pages: ErrorPages | None = None, location: str | None = None,
               headers: tuple[tuple[str, str], ...] = ()) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The fields and body of edge's answer ``status``: the page of ``pages`` for it when there is one
    (text/html), else ``text`` (sent as it is) as text/plain."""
    page = pages.get(status) if pages else None
    if page is not None:
        return answer_fields(page, location, headers, TEXT_HTML), page
    body = text.encode("utf-8")
    return answer_fields(body, location, headers), body


def intercepts(enabled: bool, status: int, pages: ErrorPages | None) -> bool:
    """Whether a backend's answer ``status`` is replaced by edge's page: the route has ``intercept_errors``
    (``enabled``) and ``pages`` has one for that error."""
    return enabled and status >= 400 and pages is not None and status in pages


def reason_phrase(status: int) -> str:
    """The reason phrase of ``status`` for an HTTP/1.1 status line."""
    text = STATUS_TEXT.get(status)
    if text is None:
        try:
            text = HTTPStatus(status).phrase
        except ValueError:
            text = "Error"
    return text


def h1_message(status: int, fields: list[tuple[bytes, bytes]], body: bytes, close: bool,
               head_only: bool = False) -> bytes:
    """A complete HTTP/1.1 response of ``fields`` and ``body`` (left out for HEAD),
    ``Connection: close`` if ``close``."""
    head = b"HTTP/1.1 %d %s" % (status, reason_phrase(status).encode("ascii"))
    lines = b"".join(b"\r\n%s: %s" % (_H1_NAMES.get(name, name), value) for name, value in fields)
    return head + lines + (b"\r\nConnection: close" if close else b"") + b"\r\n\r\n" + (b"" if head_only else body)


def plain_response(status: int, body: str, close: bool, head_only: bool = False, location: str | None = None,
                   headers: tuple[tuple[str, str], ...] = (), pages: ErrorPages | None = None) -> bytes:
    """A complete response with ``body`` (sent as it is) as text/plain, or the page of ``pages`` for
    ``status``, and any more ``headers``."""
    fields, payload = own_answer(status, body, pages, location, headers)
    return h1_message(status, fields, payload, close, head_only)


def error_response(status: int, pages: ErrorPages | None = None) -> bytes:
    """The edge's answer for ``status`` with its standard reason line (or page), closing the connection."""
    return plain_response(status, f"{REASON_TEXT[status]}\n", close=True, pages=pages)


def failure_hint(reason: str) -> str:
    """A hint for the log line of a backend failure, when its reason suggests one (else "")."""
    if "certificate verify failed" in reason or "CERTIFICATE_VERIFY_FAILED" in reason:
        return " (the backend's certificate is not trusted: set ca = \"/path/to/its-ca.pem\" in its [backends] table," \
               " or verify = false)"
    if "hostname" in reason.lower() and "mismatch" in reason.lower():
        return " (the backend's certificate names another host: set server_name in its [backends] table)"
    return ""
