"""What to do with a request: the one routing decision for HTTP/1.1, HTTP/2 and port 80.

Given the Host (or ``:authority``), the path and how the request arrived,
:func:`decide` returns the route to forward it to, or the :class:`Answer`
edge gives itself (404 no route, 421 Host against SNI, 308 to HTTPS or 404
for ``http = "redirect"|"deny"`` on plain HTTP).  :func:`body_limit` and
:func:`is_websocket` decide the rest: ``max_body`` and whether a request
asks for a WebSocket tunnel.  No sockets, no Twisted: plain values in,
plain values out.
"""

from __future__ import annotations

from typing import NamedTuple

from edge.config import Route
from edge.http.answers import REASON_TEXT
from edge.http.h1 import BadRequest, split_host
from edge.routes import HostEntry, RouteTable


class Answer(NamedTuple):
    """Edge answers the request itself: ``status`` with ``text``, and a ``location`` for a redirect."""

    status: int
    text: str
    location: str | None = None


NO_ROUTE = Answer(404, REASON_TEXT[404])
MISDIRECTED = Answer(421, REASON_TEXT[421])
NO_PLAIN_HTTP = Answer(404, REASON_TEXT[404])


def https_location(host: str, path: str, port: int) -> str:
    """Where a plain-HTTP request for ``host`` (a Host header) and ``path`` goes on HTTPS ``port``."""
    name = host[: host.index("]") + 1] if host.startswith("[") else host.partition(":")[0]
    return f"https://{name if port == 443 else f'{name}:{port}'}{path}"


def host_entry(routes: RouteTable, host_value: str) -> tuple[str, HostEntry | None]:
    """The host name of a Host header (lower case, no port) and its routes; BadRequest (400) if invalid."""
    name, _ = split_host(host_value)
    return name, routes.lookup(name)


def decide(entry: HostEntry | None, host: str, host_value: str, path: str, scheme: str, sni: str | None,
           https_port: int) -> Route | Answer:
    """The route a request goes to (Forward), or edge's own answer.

    ``host`` is the name from :func:`host_entry`, ``host_value`` the header as sent, ``path`` the
    target's path and query, ``scheme`` how it arrived ("https" terminated here, "http" plain), ``sni``
    the TLS server name if any.
    """
    if scheme == "https" and sni is not None and host != sni:
        return MISDIRECTED
    route = entry.match(path.split("?", 1)[0]) if entry is not None else None
    if route is None or not route.terminated:
        return NO_ROUTE
    if scheme == "http" and route.http != "allow":
        if route.http == "deny":
            return NO_PLAIN_HTTP
        location = https_location(host_value, path, https_port)
        return Answer(308, f"Redirecting to {location}", location)
    return route


def body_limit(route: Route, length: int | None) -> int | None:
    """``route``'s ``max_body``; raises BadRequest (413) when a declared ``length`` already exceeds it."""
    limit = route.max_body
    if limit is not None and length is not None and length > limit:
        raise BadRequest(413, REASON_TEXT[413])
    return limit


def is_websocket(version: str, has_body: bool, connection_tokens: set[bytes], upgrade: bytes | None) -> bool:
    """An HTTP/1.1 request that asks to become a WebSocket (RFC 9110 7.8, RFC 6455): HTTP/1.1, no body,
    ``upgrade`` listed in Connection and ``Upgrade: websocket``.  (Over HTTP/2 it is an extended
    CONNECT with ``:protocol websocket``, RFC 8441.)"""
    return version == "1.1" and not has_body and b"upgrade" in connection_tokens \
        and upgrade is not None and upgrade.lower() == b"websocket"
