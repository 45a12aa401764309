# -*- test-case-name: tests.e2e.test_http1_proxy, tests.e2e.test_terminate, tests.e2e.test_h1_to_h2 -*-
"""HTTP(S) backends: a keep-alive pool per backend, over TLS (:mod:`edge.tls.backend`) to https:// servers.

Requests from HTTP/1.1 and HTTP/2 clients alike go to the backend over
HTTP/1.1 through :class:`edge.http.h1_client.Http1Pool`, or over HTTP/2
through :class:`edge.http.h2_client.H2Pool` (``protocol = "h2"``); each picks servers
the way TCP connections do (balance, max_conn counting in-flight requests,
passive health) and skips a server that refuses or times out on connect.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import wrapClientTLS

from edge.tcp.backends import Backend, ServerState
from edge.http.h1_client import Http1Pool
from edge.http.h2_client import H2Pool
from edge.tls.backend import BackendTLSPolicy


class Upstream:
    """One HTTP backend: its keep-alive pool and how to reach its servers (TLS or not)."""

    def __init__(self, backend: Backend, reactor: Any, connect_timeout: float, response_timeout: float) -> None:
        self.backend = backend
        self.reactor = reactor
        self.response_timeout = response_timeout
        self.scheme = backend.config.servers[0].scheme
        self.h2_scheme = b"https" if self.scheme == "https" else b"http"  # :scheme of its HTTP/2 requests
        self.policy = BackendTLSPolicy(backend.config) if self.scheme == "https" else None
        self.protocol = backend.config.protocol  # "http/1.1" or "h2"
        self.http1 = Http1Pool(backend, self.tunnel_endpoint)
        self.h2 = H2Pool(backend, self.tunnel_endpoint, reactor, self.scheme == "https", connect_timeout) \
            if self.protocol == "h2" else None

    def close(self) -> None:
        """Retired by a reload: its idle connections are closed."""
        self.http1.close()
        if self.h2 is not None:
            self.h2.close()

    def tunnel_endpoint(self, state: ServerState) -> Any:
        """The endpoint a connection to ``state`` goes through: TLS for https:// servers."""
        if self.policy is None:
            return state.endpoint
        return wrapClientTLS(self.policy.creator(state.server.host), state.endpoint)


__all__ = ["Upstream", "BackendTLSPolicy"]
