# -*- test-case-name: tests.e2e.test_terminate, tests.e2e.test_reload -*-
"""The certificate store: host name → certificate, swappable while running.

Sources (PEM files, the local CA, later ACME) put :class:`Certificate`
objects in; the TLS terminator asks for the certificate of an SNI name.
Each certificate carries the Twisted TLS server options built from it,
once, so a handshake costs no per-connection set-up in Python.
"""

from __future__ import annotations

import datetime
from typing import Callable, Iterable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.protocols.tls import TLSMemoryBIOFactory

# TLS 1.2 suites for TLS 1.2 clients (forward secret, AEAD only); TLS 1.3 suites are OpenSSL's.
CIPHERS = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:" \
          "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
ALPN = [b"h2", b"http/1.1", b"http/1.0"]  # http/1.0 too: such clients (curl --http1.0) would get an alert otherwise

# The private keys a TLS server can sign its handshakes with (those pyOpenSSL takes); a parsed key of another
# kind (X25519, DH, ML-KEM, ...) is refused where it is read.  ``isinstance(key, ServingKey)`` checks one.
ServingKey = (rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey
              | dsa.DSAPrivateKey)


class Certificate:
    """A chain and its key, the names it covers, and where it came from."""

    def __init__(self, chain: list[x509.Certificate], key: ServingKey, source: str) -> None:
        self.chain = chain
        self.key = key
        self.source = source
        self.path: str | None = None  # the file it came from (certs_dir)
        self.names = names_of(chain[0])
        self._tls_factory: TLSMemoryBIOFactory | None = None

    @property
    def not_after(self) -> datetime.datetime:
        return self.chain[0].not_valid_after_utc

    @property
    def not_before(self) -> datetime.datetime:
        return self.chain[0].not_valid_before_utc

    def options(self) -> ssl.CertificateOptions:
        options = ssl.CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(self.key),
            certificate=crypto.X509.from_cryptography(self.chain[0]),
            extraCertChain=[crypto.X509.from_cryptography(c) for c in self.chain[1:]],
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
            acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(CIPHERS),
            acceptableProtocols=ALPN,
            enableSessions=True,
            enableSessionTickets=True,  # TLS 1.3 resumption needs tickets (keys live in this process only)
        )
        options.getContext().set_options(SSL.OP_NO_RENEGOTIATION if hasattr(SSL, "OP_NO_RENEGOTIATION") else 0)
        return options

    def tls_factory(self, wrapped_factory) -> TLSMemoryBIOFactory:
        """A TLS server factory for this certificate (built once)."""
        if self._tls_factory is None:
            self._tls_factory = TLSMemoryBIOFactory(self.options(), False, wrapped_factory)
        return self._tls_factory


def key_matches(key: ServingKey, cert: x509.Certificate) -> bool:
    """Whether ``key`` is the private key of ``cert`` (compared as SubjectPublicKeyInfo: any kind of key)."""
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki)


def names_of(cert: x509.Certificate) -> tuple[str, ...]:
    """DNS names (wildcards included) from the SAN, else the common name."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = [a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
                 if isinstance(a.value, str)]  # a common name is a string (bytes are for bit-string types)
    return tuple(str(n).lower().rstrip(".") for n in names)


class CertificateStore:
    """Certificates by name: exact names first, then one-label wildcards.

    ``fallback`` (the local CA) is asked for names nothing covers.
    """

    def __init__(self, certificates: Iterable[Certificate] = (),
                 fallback: Callable[[str], Certificate | None] | None = None) -> None:
        self.fallback = fallback
        self._by_name: dict[str, Certificate] = {}
        self.default: Certificate | None = None  # for hellos without SNI (a "*" route): the first file
        self.replace(certificates)

    def replace(self, certificates: Iterable[Certificate]) -> None:
        """Swap the whole set at once (reload, renewal)."""
        by_name: dict[str, Certificate] = {}
        certificates = list(certificates)
        self.default = certificates[0] if certificates else None
        for cert in certificates:
            for name in cert.names:
                current = by_name.get(name)
                if current is None or cert.not_after > current.not_after:
                    by_name[name] = cert
        self._by_name = by_name

    def add(self, cert: Certificate) -> None:
        by_name = dict(self._by_name)
        for name in cert.names:
            by_name[name] = cert
        self._by_name = by_name

    def covered(self, host: str) -> Certificate | None:
        """The stored certificate for ``host``, without asking the fallback."""
        cert = self._by_name.get(host)
        if cert is None and "." in host:
            cert = self._by_name.get("*." + host.split(".", 1)[1])
        return cert

    def lookup(self, host: str | None) -> Certificate | None:
        if not host:
            return self.default
        cert = self.covered(host)
        if cert is None and self.fallback is not None:
            cert = self.fallback(host)
        return cert

    def __iter__(self):
        """Every certificate in use, including those the fallback issued."""
        seen = set()
        issued = getattr(self.fallback, "issued", {})
        for cert in list(self._by_name.values()) + list(issued.values()):
            if id(cert) not in seen:
                seen.add(id(cert))
                yield cert
