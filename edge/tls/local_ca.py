# -*- test-case-name: tests.unit.tls.test_local_ca, tests.e2e.test_terminate -*-
"""A local certificate authority, like Caddy's ``tls internal``.

Created once in ``state_dir`` (key file mode 0600) and then reused, it
issues short-lived leaf certificates on demand for the names routes serve,
so a fresh install answers HTTPS at once; browsers trust it once the owner
installs ``state_dir/local-ca/ca.pem``.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge.tls.store import Certificate, ServingKey
from edge.tls.private_files import private_dir, write_private  # noqa: F401 (write_private: its old home)

LEAF_LIFETIME = datetime.timedelta(days=7)
CA_LIFETIME = datetime.timedelta(days=3650)


class LocalIssuer:
    def __init__(self, state_dir: str) -> None:
        # ca.pem (0644, in a 0755 folder) is for every user who imports it into a browser; ca.key is 0600
        # and state_dir is made traversable, not listable (private_dir), so its path can be followed.
        self.dir = private_dir(Path(state_dir) / "local-ca", Path(state_dir), mode=0o755)
        self.ca_cert_path = self.dir / "ca.pem"
        key_path = self.dir / "ca.key"
        if key_path.exists() and self.ca_cert_path.exists():
            os.chmod(self.ca_cert_path, 0o644)  # written 0600 under a strict umask by earlier versions
            key = serialization.load_pem_private_key(key_path.read_bytes(), None)
            if not isinstance(key, ServingKey):
                raise ValueError(f"{key_path}: a {type(key).__name__} cannot sign certificates")
            self.key: ServingKey = key
            self.cert = x509.load_pem_x509_certificate(self.ca_cert_path.read_bytes())
        else:
            self.key, self.cert = self._create()
            write_private(key_path, self.key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
            write_private(self.ca_cert_path, self.cert.public_bytes(serialization.Encoding.PEM), 0o644)
        self.issued: dict[str, Certificate] = {}

    @staticmethod
    def _create() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"edge local CA {now:%Y-%m-%d}")])
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return key, cert

    def __call__(self, host: str) -> Certificate:
        """A certificate for ``host``, issued now or reused while fresh."""
        cert = self.issued.get(host)
        now = datetime.datetime.now(datetime.timezone.utc)
        if cert is None or cert.not_after - now < LEAF_LIFETIME / 3:
            cert = self._issue(host, now)
            self.issued[host] = cert
        return cert

    def _issue(self, host: str, now: datetime.datetime) -> Certificate:
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(self.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + LEAF_LIFETIME)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return Certificate([leaf, self.cert], key, "local")
