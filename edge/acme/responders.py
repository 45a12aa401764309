"""Answers to pending ACME challenges, served by the edge's own listeners.

An HTTP-01 token exists only while its order is pending; a TLS-ALPN-01
validation certificate likewise.  The issuing thread adds and removes them
directly (a lock orders the writers; readers see a whole dict entry or
none, one GIL-atomic lookup), never through the reactor: a thread waiting
for the reactor while the reactor waits for it is how a stop hung.  The
redirector (port 80) and the dispatcher (443, ALPN ``acme-tls/1``) read
them.
"""

from __future__ import annotations

import datetime
import hashlib
import threading

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import ssl
from OpenSSL import crypto

ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")  # RFC 8737
ACME_TLS_ALPN = b"acme-tls/1"


def tls_alpn_certificate(host: str, key_authorization: str) -> ssl.CertificateOptions:
    """TLS server options presenting the RFC 8737 validation certificate for ``host``."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.UnrecognizedExtension(ACME_IDENTIFIER, b"\x04\x20" + digest), critical=True)
        .sign(key, hashes.SHA256())
    )
    return ssl.CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(key),
        certificate=crypto.X509.from_cryptography(cert),
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        acceptableProtocols=[ACME_TLS_ALPN],
    )


class ChallengeResponders:
    """Pending challenge answers; written from any thread, read on the reactor."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._http: dict[tuple[str, str], str] = {}
        self._tls_alpn: dict[str, ssl.CertificateOptions] = {}

    def add_http01(self, host: str, token: str, key_authorization: str) -> None:
        with self._lock:
            self._http[host, token] = key_authorization

    def remove_http01(self, host: str, token: str) -> None:
        with self._lock:
            self._http.pop((host, token), None)

    def http01(self, host: str, token: str) -> str | None:
        return self._http.get((host, token))

    def add_tls_alpn01(self, host: str, key_authorization: str) -> None:
        options = tls_alpn_certificate(host, key_authorization)
        options.getContext()  # built here, in the issuing thread, not at the first handshake
        with self._lock:
            self._tls_alpn[host] = options

    def remove_tls_alpn01(self, host: str) -> None:
        with self._lock:
            self._tls_alpn.pop(host, None)

    def tls_alpn01(self, host: str | None) -> ssl.CertificateOptions | None:
        return self._tls_alpn.get(host) if host else None
