"""Damage ACME state files the way a full disk, a crash or a careless hand does."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

BEGIN = b"-----BEGIN CERTIFICATE-----"


def stored(certs: Path, host: str) -> tuple[Path, bytes]:
    """The file holding ``host``'s chain, and that chain."""
    path = certs / f"{host}.pem"
    data = path.read_bytes()
    return path, data[data.index(BEGIN):]


def corrupt(certs: Path, hosts: tuple[str, ...]) -> dict[str, Path]:
    """Damage each of ``hosts`` (cert-cut, key-empty, key-other, chain-cut by its first label); return
    {host: the file at fault}."""
    bad = {}
    for host in hosts:
        kind = host.split(".")[0]
        pem, chain = stored(certs, host)
        key = certs / f"{host}.key"
        if kind == "cert-cut":
            pem.write_bytes(chain[:len(chain) // 4])
            bad[host] = pem
        elif kind == "key-empty":
            key.write_bytes(b"")
            pem.write_bytes(chain)
            bad[host] = key
        elif kind == "key-other":
            other = ec.generate_private_key(ec.SECP256R1())
            key.write_bytes(other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
            pem.write_bytes(chain)
            bad[host] = key
        elif kind == "chain-cut":
            second = chain.index(BEGIN, 1)
            pem.write_bytes(chain[:second + 200])
            bad[host] = pem
    return bad
