"""PEM files of ``certs_dir``: any key a TLS server can sign with loads, a key that cannot sign is refused
with the file's name, and a key that is not the certificate's is refused."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519
from cryptography.x509.oid import NameOID

from edge.tls.files import CertificateFileError, load_pem


def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _certificate(subject_key, signer, name: str = "files.example.test") -> bytes:
    """A certificate for ``subject_key``'s public key, signed by ``signer``."""
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(subject_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(signer, algorithm))
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("make", [lambda: ec.generate_private_key(ec.SECP256R1()),
                                  lambda: rsa.generate_private_key(65537, 2048),
                                  ed25519.Ed25519PrivateKey.generate],  # no public_numbers(): it failed there
                         ids=["ec", "rsa", "ed25519"])
def test_a_signing_key_and_its_certificate_load(make):
    key = make()
    cert = load_pem(_certificate(key, key), _pem(key), "certs/site.pem")
    assert cert.names == ("files.example.test",) and cert.path == "certs/site.pem"
    assert cert.options().getContext() is not None  # pyOpenSSL takes the key


def test_a_key_that_cannot_sign_is_refused_with_the_file_name():
    key, ca = x25519.X25519PrivateKey.generate(), ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(CertificateFileError, match=r"^certs/x\.pem: a .*X25519PrivateKey cannot sign"):
        load_pem(_certificate(key, ca), _pem(key), "certs/x.pem")


def test_a_key_that_is_not_the_certificates_is_refused():
    key, other = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(CertificateFileError, match="does not match the certificate"):
        load_pem(_certificate(key, key), _pem(other), "certs/site.pem")
