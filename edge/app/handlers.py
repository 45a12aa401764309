# -*- test-case-name: tests.e2e.test_passthrough, tests.e2e.test_redirect, tests.e2e.test_reload -*-
"""The one place that builds the handler a connection is handed to, from a config snapshot.

:class:`Handlers` is made with each :class:`edge.app.runtime.Runtime` (a
reload makes new ones; open connections keep theirs).  Each handler gets the
snapshot's data it reads and, where it hands its connection on in turn (the
dispatcher, port 80's redirector), this builder under the narrow contract it
names: nothing calls back into the runtime.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol

from edge.acme.responders import ACME_TLS_ALPN
from edge.app.runtime import Runtime
from edge.config.routes import HostEntry
from edge.http.h1_server import Http1Proxy
from edge.http.h2_server import H2Server
from edge.http.redirect import Redirector
from edge.ops.access_log import ConnectionInfo
from edge.sniff.proxy import build_v1, build_v2
from edge.tcp.forward import TcpForward
from edge.tls.terminate import AlpnSwitch, EdgeTLSProtocol, ValidationAnswered


def _v1(info: ConnectionInfo) -> bytes:
    return build_v1(info.client, info.local)


def _v2(info: ConnectionInfo) -> bytes:
    return build_v2(info.client, info.local, info.sni)


PROXY_HEADERS: dict[str | None, Callable[[ConnectionInfo], bytes] | None] = {None: None, "v1": _v1, "v2": _v2}


class Handlers:
    """The handlers of one snapshot: TCP forwarders, port 80's redirector, TLS termination (HTTP/1.1 or
    HTTP/2 by ALPN), TLS-ALPN-01 answers and the plain-HTTP proxy."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.http_factory = Factory.forProtocol(Protocol)  # TLS factories wrap one; edge builds the protocols

    def forward(self, backend: str, info: ConnectionInfo) -> TcpForward:
        """A TCP forwarder to ``backend`` for the connection ``info``."""
        runtime = self.runtime
        chosen = runtime.backends[backend]
        header = PROXY_HEADERS[chosen.config.proxy_protocol]
        return TcpForward(chosen, info, runtime.reactor, runtime.config.timeouts.idle, header)

    def redirector(self, info: ConnectionInfo, hand_over: Callable[[Protocol, bytes], None]) -> Redirector:
        """Port 80 (and plain HTTP on 443)."""
        return Redirector(self.runtime, self, info, hand_over)

    def plain_http(self, info: ConnectionInfo, hand_over: Callable[[Protocol, bytes], None]) -> Protocol:
        """The HTTP/1.1 proxy for routes served over plain HTTP (``http = "allow"``)."""
        return Http1Proxy(self.runtime, info, "http")

    def tls_handler(self, entry: HostEntry, info: ConnectionInfo) -> Protocol | None:
        """The handler for a TLS connection to ``entry``'s host; None if no certificate."""
        runtime = self.runtime
        route = entry.passthrough
        if route is not None:
            info.route, info.tls_mode = route.name, route.tls
            return self.forward(route.backend, info)
        if ACME_TLS_ALPN.decode() in info.alpn:  # a TLS-ALPN-01 validation for a host we manage
            options = runtime.acme_responders.tls_alpn01(info.sni)
            return None if options is None else self.acme_tls_handler(options, info)
        cert = runtime.certificates.lookup(info.sni)
        if cert is None:
            return None
        info.tls_mode = entry.routes[0].tls if len({r.tls for r in entry.routes}) == 1 else "terminate"
        info.route = ",".join(r.name for r in entry.routes)
        tls_factory = cert.tls_factory(self.http_factory)

        def choose(negotiated: bytes | None) -> Protocol:
            if negotiated == b"h2":
                return H2Server(runtime, info, "https")
            return Http1Proxy(runtime, info, "https")

        return EdgeTLSProtocol(tls_factory, AlpnSwitch(choose, info, runtime.reactor, runtime.config.timeouts.inspect),
                               info, runtime.reactor)

    def acme_tls_handler(self, options: Any, info: ConnectionInfo) -> Protocol:
        """Answers a TLS-ALPN-01 validation with ``options`` (the RFC 8737 certificate), then nothing."""
        info.tls_mode = "acme-tls/1"
        answered = ValidationAnswered(info, self.runtime.reactor, self.runtime.config.timeouts.inspect)
        return TLSMemoryBIOProtocol(TLSMemoryBIOFactory(options, False, Factory.forProtocol(Protocol)), answered)
