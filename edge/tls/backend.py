# -*- test-case-name: tests.e2e.test_terminate, tests.e2e.test_health, tests.e2e.test_http1_proxy -*-
"""TLS to a backend's ``https://`` servers: verified with service_identity against the system CAs or the
backend's ``ca``, or (``verify = false``) encrypted without checking anything.

One policy for the HTTP clients and the health checks alike.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from edge.config import BackendConfig


@implementer(IOpenSSLClientConnectionCreator)
class Unverified:
    """TLS to a self-signed backend (``verify = false``): encrypt, check nothing."""

    _contexts: dict[tuple[bytes, ...], SSL.Context] = {}

    def __init__(self, server_name: str | None, alpn: list[bytes]) -> None:
        self.server_name = server_name
        self.alpn = tuple(alpn)

    def clientConnectionForTLS(self, protocol: Any) -> SSL.Connection:
        context = Unverified._contexts.get(self.alpn)
        if context is None:
            context = SSL.Context(SSL.TLS_CLIENT_METHOD)
            context.set_min_proto_version(SSL.TLS1_2_VERSION)
            context.set_verify(SSL.VERIFY_NONE)
            context.set_alpn_protos(list(self.alpn))
            Unverified._contexts[self.alpn] = context
        connection = SSL.Connection(context, None)
        if self.server_name and not _is_ip(self.server_name):
            connection.set_tlsext_host_name(self.server_name.encode("idna"))
        connection.set_connect_state()
        return connection


def _is_ip(host: str) -> bool:
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
            return Unverified(name, alpn)
        return ssl.optionsForClientTLS(name, trustRoot=self.trust, acceptableProtocols=alpn)

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return self.creator(hostname.decode("ascii"))


def _pem_blocks(data: bytes) -> list[bytes]:
    end = b"-----END CERTIFICATE-----"
    return [block + end for block in data.split(end) if b"-----BEGIN CERTIFICATE-----" in block]
