# -*- test-case-name: tests.test_http1_proxy, tests.test_terminate, tests.test_h1_to_h2 -*-
"""HTTP(S) backends: a keep-alive pool per backend, and TLS to https:// servers.

Requests from HTTP/1.1 and HTTP/2 clients alike go to the backend over
HTTP/1.1 through :class:`edge.http.h1_client.Http1Pool`, or over HTTP/2
through :class:`edge.http.h2_client.H2Pool` (``protocol = "h2"``); each picks servers
the way TCP connections do (balance, max_conn counting in-flight requests,
passive health) and skips a server that refuses or times out on connect.
``https://`` servers are verified with service_identity against the system
CAs or the backend's ``ca``, unless ``verify = false``.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from edge.backends import Backend, ServerState
from edge.config import BackendConfig
from edge.http.h1_client import Http1Pool
from edge.http.h2_client import H2Pool

@implementer(IOpenSSLClientConnectionCreator)
class _Unverified:
    """TLS to a self-signed backend (``verify = false``): encrypt, check nothing."""

    _contexts: dict[tuple[bytes, ...], SSL.Context] = {}

    def __init__(self, server_name: str | None, alpn: list[bytes]) -> None:
        self.server_name = server_name
        self.alpn = tuple(alpn)

    def clientConnectionForTLS(self, protocol: Any) -> SSL.Connection:
        context = _Unverified._contexts.get(self.alpn)
        if context is None:
            context = SSL.Context(SSL.TLS_CLIENT_METHOD)
            context.set_min_proto_version(SSL.TLS1_2_VERSION)
            context.set_verify(SSL.VERIFY_NONE)
            context.set_alpn_protos(list(self.alpn))
            _Unverified._contexts[self.alpn] = context
        connection = SSL.Connection(context, None)
        if self.server_name and not _is_ip(self.server_name):
            connection.set_tlsext_host_name(self.server_name.encode("idna"))
        connection.set_connect_state()
        return connection


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


@implementer(IPolicyForHTTPS)
class BackendTLSPolicy:
    """How edge speaks TLS to one backend's https:// servers."""

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.trust: Any = None
        if config.verify:
            if config.ca:
                with open(config.ca, "rb") as f:
                    pems = f.read()
                certs = [ssl.Certificate.loadPEM(block) for block in _pem_blocks(pems)]
                self.trust = ssl.trustRootFromCertificates(certs)
            else:
                self.trust = ssl.platformTrust()

    def creator(self, host: str) -> Any:
        name = self.config.server_name or host
        alpn = [b"h2"] if self.config.protocol == "h2" else [b"http/1.1"]
        if not self.config.verify:
            return _Unverified(name, alpn)
        return ssl.optionsForClientTLS(name, trustRoot=self.trust, acceptableProtocols=alpn)

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return self.creator(hostname.decode("ascii"))


def _pem_blocks(data: bytes) -> list[bytes]:
    end = b"-----END CERTIFICATE-----"
    return [block + end for block in data.split(end) if b"-----BEGIN CERTIFICATE-----" in block]


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
