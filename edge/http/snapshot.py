# -*- test-case-name: tests.e2e.test_http1_proxy, tests.e2e.test_h2_server, tests.e2e.test_reload -*-
"""What the HTTP servers read of the config snapshot their connection started with: data, nothing to call.

``edge.app.runtime.Runtime`` is one (built once per snapshot; a reload makes
another, open connections keep theirs).  The contract is written here so that
``edge.http`` needs nothing of the app layer above it.
"""

from __future__ import annotations

from typing import Any, Protocol

from edge.config import Config
from edge.config.routes import RouteTable
from edge.http.policy import Guard
from edge.http.upstream import Upstream


class HttpSnapshot(Protocol):
    """The snapshot as the HTTP/1.1 and HTTP/2 servers see it."""

    reactor: Any  # timers and the clock of the access rules
    config: Config  # timeouts, error pages
    routes: RouteTable  # the routes served on port 443 (and port 80's plain HTTP)
    guards: dict[str, Guard]  # the access rules of each guarded route, by its name
    https_port: int  # where plain HTTP is redirected to
    upstreams: dict[str, Upstream]  # the HTTP backends, by name
    auth_upstreams: dict[tuple[str, int], Upstream]  # the forward_auth servers, by (host, port)
