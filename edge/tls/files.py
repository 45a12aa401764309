# -*- test-case-name: tests.unit.tls.test_files, tests.e2e.test_terminate, tests.e2e.test_reload -*-
"""Static certificates from PEM files in ``[edge].certs_dir``, HAProxy style.

Each ``*.pem`` file holds a chain and its key; or ``name.crt`` sits beside
``name.key``.  The names a certificate serves come from its SANs.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from edge.tls.store import Certificate, ServingKey, key_matches


class CertificateFileError(Exception):
    """A file in certs_dir cannot be used; the message names it."""


def load_pem(chain_pem: bytes, key_pem: bytes, where: str) -> Certificate:
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise CertificateFileError(f"{where}: no PEM certificate found") from None
    try:
        key = load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise CertificateFileError(f"{where}: no usable unencrypted private key ({e})") from None
    if not isinstance(key, ServingKey):
        raise CertificateFileError(f"{where}: a {type(key).__name__} cannot sign a TLS handshake")
    if not key_matches(key, chain[0]):
        raise CertificateFileError(f"{where}: the private key does not match the certificate")
    cert = Certificate(chain, key, "file")
    cert.path = where
    return cert


def load_directory(directory: str) -> list[Certificate]:
    """Every certificate in ``directory``; raise on the first unusable file."""
    path = Path(directory)
    if not path.is_dir():
        raise CertificateFileError(f"{directory}: not a directory")
    certificates = []
    for pem in sorted(path.glob("*.pem")):
        data = pem.read_bytes()
        certificates.append(load_pem(data, data, str(pem)))
    for crt in sorted(path.glob("*.crt")):
        key = crt.with_suffix(".key")
        if not key.exists():
            raise CertificateFileError(f"{crt}: no {key.name} beside it")
        certificates.append(load_pem(crt.read_bytes(), key.read_bytes(), str(crt)))
    return certificates
