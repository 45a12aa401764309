# -*- test-case-name: tests.e2e.test_acme_storage, tests.e2e.test_acme -*-
"""Answers to pending ACME challenges, served by the edge's own listeners.

An HTTP-01 token exists only while its order is pending; a TLS-ALPN-01
validation certificate likewise.  The issuing thread adds and removes them
directly (a lock orders the writers; readers see a whole dict entry or
none, one GIL-atomic lookup), never through the reactor: a thread waiting
for the reactor while the reactor waits for it is how a stop hung.  The
redirector (port 80) and the dispatcher (443, ALPN ``acme-tls/1``) read
them.

With several edges sharing ACME state, the CA may ask an edge that did not
start the order: on a miss the answer is looked up in the shared storage
(``shared``, set by the ACME service: a Deferred from an ACME thread),
cached briefly, with a bound on lookups in flight so stray requests for
``/.well-known/acme-challenge/`` cannot pile threads up.
"""

from __future__ import annotations

import datetime
import hashlib
import threading
import time
from typing import Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import ssl
from twisted.internet.defer import Deferred, succeed
from OpenSSL import crypto

ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")  # RFC 8737
ACME_TLS_ALPN = b"acme-tls/1"
FOUND_TTL = {"http-01": 30.0, "tls-alpn-01": 2.0}  # a token's answer never changes; a host's TLS-ALPN one does
MISSING_TTL = 1.0
MAX_LOOKUPS = 8  # shared-storage lookups in flight at once
MAX_CACHED = 1024


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
        self.shared: Callable[[str, str, str], Deferred] | None = None  # (kind, host, token) -> answer or None
        self._cache: dict[tuple[str, str, str], tuple[Any, float]] = {}
        self._lookups = 0

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

    def shared_http01(self, host: str, token: str) -> Deferred | None:
        """A miss: the key authorization kept in the shared storage (None if there is none); None instead
        of a Deferred if there is no shared storage to ask."""
        return self._shared("http-01", host, token)

    def shared_tls_alpn01(self, host: str | None) -> Deferred | None:
        """A miss: TLS options presenting the validation certificate kept in the shared storage."""
        return self._shared("tls-alpn-01", host, "") if host else None

    def _shared(self, kind: str, host: str, token: str) -> Deferred | None:
        lookup = self.shared
        if lookup is None:
            return None
        key = (kind, host.lower(), token)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[1] > now:
            return succeed(cached[0])
        if self._lookups >= MAX_LOOKUPS:
            return succeed(None)
        if len(self._cache) >= MAX_CACHED:
            self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
        self._lookups += 1

        def done(value: Any) -> Any:
            self._lookups -= 1
            self._cache[key] = (value, time.monotonic() + (FOUND_TTL[kind] if value is not None else MISSING_TTL))
            return value

        def failed(failure: Any) -> None:  # storage unreachable: not answered (the CA retries the order)
            self._lookups -= 1
            return None

        return lookup(kind, host, token).addCallbacks(done, failed)
