"""Host-name lookup over the configured routes, most specific first.

An exact name beats the longest ``*.suffix`` wildcard, which beats ``*``.
A wildcard matches any depth below its suffix (like HAProxy's
``req_ssl_sni -m end``).  Lookup cost grows with the labels of the name
asked for, never with the number of routes.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from edge.config import Route


class RouteTable:
    __slots__ = ("_exact", "_wildcard", "_default")

    def __init__(self, routes: Iterable[Route]) -> None:
        exact: dict[str, Route] = {}
        wildcard: dict[str, Route] = {}
        default: Route | None = None
        for route in routes:
            for host in route.hosts:
                if host == "*":
                    default = route
                elif host.startswith("*."):
                    wildcard[host[2:]] = route
                else:
                    exact[host] = route
        self._exact: Mapping[str, Route] = exact
        self._wildcard: Mapping[str, Route] = wildcard
        self._default = default

    def lookup(self, host: str | None) -> Route | None:
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
