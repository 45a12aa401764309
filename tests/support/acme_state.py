"""Damage ACME state files the way a full disk, a crash or a careless hand does."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

BEGIN = b"-----BEGIN CERTIFICATE-----"


def stored(certs: Path, host: str) -> tuple[Path, bytes, bytes]:
    """The file holding ``host``'s pair (key block, then chain), its key and its chain."""
    path = certs / f"{host}.pem"
    data = path.read_bytes()
    return path, data[:data.index(BEGIN)], data[data.index(BEGIN):]


def corrupt(certs: Path, hosts: tuple[str, ...]) -> dict[str, Path]:
    """Damage each of ``hosts`` (cert-cut, key-empty, key-other, chain-cut by its first label); return
    {host: the file at fault}.  key-empty uses the old layout (chain in HOST.pem, key in HOST.key)."""
    bad = {}
    for host in hosts:
        kind = host.split(".")[0]
        pem, key, chain = stored(certs, host)
        if kind == "cert-cut":  # the leaf cut short
            pem.write_bytes(key + chain[:300])
            bad[host] = pem
        elif kind == "key-empty":
            (certs / f"{host}.key").write_bytes(b"")
            pem.write_bytes(chain)
            bad[host] = certs / f"{host}.key"
        elif kind == "key-other":
            other = ec.generate_private_key(ec.SECP256R1())
            pem.write_bytes(other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()) + chain)
            bad[host] = pem
        elif kind == "chain-cut":  # cut inside the intermediate
            second = chain.index(BEGIN, 1)
            pem.write_bytes(key + chain[:second + 200])
            bad[host] = pem
    return bad
