# -*- test-case-name: tests.unit.config.test_routes, tests.unit.http.test_policy -*-
"""Host-name lookup over the configured routes, most specific first.

An exact name beats the longest ``*.suffix`` wildcard, which beats ``*``.
A wildcard matches any depth below its suffix (like HAProxy's
``req_ssl_sni -m end``).  Lookup cost grows with the labels of the name
asked for, never with the number of routes.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from edge.config import Route


class HostEntry:
    """The routes of one host name, longest path prefix first."""

    __slots__ = ("host", "routes", "_prefixes")

    def __init__(self, host: str, routes: list[tuple[str, Route]]) -> None:
        self.host = host
        self._prefixes = sorted(routes, key=lambda item: len(item[0]), reverse=True)
        self.routes = tuple(route for _, route in self._prefixes)

    @property
    def passthrough(self) -> Route | None:
        """The route when this host is passed through (it then has only one)."""
        first = self.routes[0]
        return first if first.tls == "passthrough" else None

    def match(self, path: str) -> Route | None:
        """The route whose path prefix is the longest match for ``path``, compared as the backend will
        read it (:func:`normalise_path`): ``/%61dmin``, ``//admin`` and ``/x/../admin`` are ``/admin``,
        so a guarded prefix cannot be walked around."""
        if len(self._prefixes) > 1 or self._prefixes[0][0] != "/":
            path = normalise_path(path)
        for prefix, route in self._prefixes:
            if path.startswith(prefix):
                return route
        return None


def normalise_path(path: str) -> str:
    """``path`` (no query) as a web server resolves it before choosing what to serve (nginx's location
    matching, RFC 3986 5.2.4): percent-escapes decoded, ``//`` merged, ``.`` and ``..`` segments resolved
    (never above the root)."""
    if "%" not in path and "//" not in path and "/." not in path:
        return path  # the usual path: nothing to resolve
    if "%" in path:
        path = _decode(path)
    segments: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment not in ("", "."):
            segments.append(segment)
    trailing = path.endswith("/") or path.endswith("/.") or path.endswith("/..")
    return "/" + "/".join(segments) + ("/" if trailing and segments else "")


def _decode(path: str) -> str:
    """Percent-escapes decoded (as Latin-1 characters, byte for byte); a malformed one stays as it is."""
    out, i = [], 0
    while i < len(path):
        c = path[i]
        escape = path[i + 1:i + 3]
        if c == "%" and len(escape) == 2 and _HEX.issuperset(escape):
            out.append(chr(int(path[i + 1:i + 3], 16)))
            i += 3
        else:
            out.append(c)
            i += 1
    return "".join(out)


_HEX = frozenset("0123456789abcdefABCDEF")


class RouteTable:
    __slots__ = ("_exact", "_wildcard", "_default")

    def __init__(self, routes: Iterable[Route]) -> None:
        by_host: dict[str, list[tuple[str, Route]]] = {}
        for route in routes:
            for host in route.hosts:
                by_host.setdefault(host, []).extend((path, route) for path in route.paths)
        entries = {host: HostEntry(host, items) for host, items in by_host.items()}
        self._exact: Mapping[str, HostEntry] = {h: e for h, e in entries.items() if not h.startswith("*")}
        self._wildcard: Mapping[str, HostEntry] = {h[2:]: e for h, e in entries.items() if h.startswith("*.")}
        self._default: HostEntry | None = entries.get("*")

    def lookup(self, host: str | None) -> HostEntry | None:
        """The route for ``host`` (already lower-case); None if nothing matches.

        A connection without a name (no SNI) only matches the ``*`` route.
        """
        if not host:
            return self._default
        route = self._exact.get(host)
        if route is not None:
            return route
        if self._wildcard:
            dot = host.find(".")
            while dot >= 0:
                route = self._wildcard.get(host[dot + 1 :])
                if route is not None:
                    return route
                dot = host.find(".", dot + 1)
        return self._default
