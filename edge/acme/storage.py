"""ACME state on disk under ``state_dir/acme``: the account key and the certificates.

Keys are written 0600 and every file atomically (temp file, fsync, rename),
so a crash never leaves half a certificate behind.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge.certs.local_ca import write_private
from edge.certs.store import Certificate


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class AcmeStorage:
    def __init__(self, state_dir: str, directory_url: str) -> None:
        # One folder per ACME server, so staging and production never mix.
        slug = "".join(c if c.isalnum() else "_" for c in directory_url.split("://", 1)[-1])[:80]
        self.dir = Path(state_dir) / "acme" / slug
        self.certs = self.dir / "certs"
        self.certs.mkdir(parents=True, exist_ok=True, mode=0o700)

    def account_key(self) -> ec.EllipticCurvePrivateKey:
        """The account key, created once and reused across restarts."""
        path = self.dir / "account.key"
        if path.exists():
            return serialization.load_pem_private_key(path.read_bytes(), None)
        key = ec.generate_private_key(ec.SECP256R1())
        write_private(path, _pem_key(key))
        return key

    def save(self, host: str, chain_pem: bytes, key) -> Certificate:
        write_private(self.certs / f"{host}.key", _pem_key(key))
        write_private(self.certs / f"{host}.pem", chain_pem, 0o644)
        return Certificate(x509.load_pem_x509_certificates(chain_pem), key, "acme")

    def load(self, host: str) -> Certificate | None:
        pem, key = self.certs / f"{host}.pem", self.certs / f"{host}.key"
        if not (pem.exists() and key.exists()):
            return None
        return Certificate(x509.load_pem_x509_certificates(pem.read_bytes()),
                           serialization.load_pem_private_key(key.read_bytes(), None), "acme")

    def chain_pem(self, host: str) -> bytes:
        return (self.certs / f"{host}.pem").read_bytes()
