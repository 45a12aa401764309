"""A config snapshot made live: the route table, backends and handler builders.

The dispatcher asks the runtime it started with for handlers, so a reload
(which builds a new runtime) never changes what an open connection uses.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.protocol import Protocol

from edge.backends import Backend
from edge.config import Config, Route
from edge.connection import ConnectionInfo
from edge.forward import TcpForward
from edge.redirect import Redirector
from edge.routes import RouteTable
from edge.sniff.proxy import build_v1, build_v2


def _v1(info: ConnectionInfo) -> bytes:
    return build_v1(info.client, info.local)


def _v2(info: ConnectionInfo) -> bytes:
    return build_v2(info.client, info.local, info.sni)


PROXY_HEADERS: dict[str | None, Callable[[ConnectionInfo], bytes] | None] = {None: None, "v1": _v1, "v2": _v2}


class Runtime:
    def __init__(self, config: Config, reactor: Any) -> None:
        self.config = config
        self.reactor = reactor
        self.routes = RouteTable(config.routes)
        self.backends = {
            name: Backend(backend, reactor, config.timeouts.connect) for name, backend in config.backends.items()
        }
        self.https_port = config.listen.https[0].port if config.listen.https else 443

    def forward(self, backend: str, info: ConnectionInfo) -> TcpForward:
        """A TCP forwarder to ``backend`` for the connection ``info``."""
        chosen = self.backends[backend]
        header = PROXY_HEADERS[chosen.config.proxy_protocol]
        return TcpForward(chosen, info, self.reactor, self.config.timeouts.idle, header)

    def redirector(self, info: ConnectionInfo, hand_over: Callable[[Protocol, bytes], None]) -> Redirector:
        return Redirector(self, info, hand_over)

    def tls_handler(self, route: Route, info: ConnectionInfo) -> Protocol | None:
        """The handler for a TLS connection on ``route``; None if unsupported."""
        if route.tls == "passthrough":
            return self.forward(route.backend, info)
        return None  # edge/reencrypt termination plugs in here
