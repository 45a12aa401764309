"""ACME state on disk under ``state_dir/acme``: the account key and the certificates.

A host's certificate and key live in one file, ``certs/HOST.pem`` (the key
block, then the chain; 0600), so they are replaced together by one rename
and a crash can never pair a new certificate with an old key.  Every file
is written atomically and durably (:mod:`edge.private_files`), and every
directory is 0700.  The layout before this one (``HOST.pem`` holding the
chain, ``HOST.key`` the key) is still read, so existing installs are not
ordered again; the next renewal writes the new one and removes the
``.key`` file.

What is read back is checked (:mod:`edge.acme.pairs`): a file that is not
fit to use is moved aside as ``NAME.bad-YYYYMMDDHHMMSS`` and the caller
orders again.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.logger import Logger

from edge.acme.timing import RenewalInfo
from edge.acme.pairs import PairProblem, bad_name, check_pair, parse_key, split_bundle
from edge.private_files import fsync_dir, private_dir, write_private
from edge.certs.store import Certificate

log = Logger()


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class StoredPairError(Exception):
    """A stored certificate or key is not fit to serve: ``path`` is the file at fault."""

    def __init__(self, path: Path, problem: PairProblem) -> None:
        super().__init__(f"{path}: {problem.reason}")
        self.path = path
        self.reason = problem.reason


def move_aside(path: Path) -> Path:
    """Rename ``path`` to ``NAME.bad-TIMESTAMP`` (a free one) and return the new path."""
    base = bad_name(path.name, datetime.datetime.now(datetime.timezone.utc))
    target, n = path.with_name(base), 1
    while target.exists():
        target, n = path.with_name(f"{base}.{n}"), n + 1
    path.rename(target)
    return target


class AcmeStorage:
    def __init__(self, state_dir: str, directory_url: str) -> None:
        # One folder per ACME server, so staging and production never mix.
        self.state_dir = state_dir
        slug = "".join(c if c.isalnum() else "_" for c in directory_url.split("://", 1)[-1])[:80]
        self.dir = Path(state_dir) / "acme" / slug
        self.certs = private_dir(self.dir / "certs", Path(state_dir))
        for left in self.certs.glob("*.tmp"):  # a write a crash cut short: the name it was for is intact
            left.unlink()

    def account_key(self) -> ec.EllipticCurvePrivateKey:
        """The account key, created once and reused across restarts; one that does not parse is logged,
        moved aside and replaced (the account is then a new one: the old key is lost anyway)."""
        path = self.dir / "account.key"
        if path.exists():
            try:
                return parse_key(path.read_bytes())
            except PairProblem as e:
                moved = move_aside(path)
                log.error("ACME account key {path}: {reason}; moved aside to {moved}, creating a new account",
                          path=str(path), reason=e.reason, moved=moved.name)
        key = ec.generate_private_key(ec.SECP256R1())
        write_private(path, _pem_key(key))
        return key

    def paths(self, host: str) -> list[Path]:
        """The files that may hold ``host``'s pair: the bundle (or the old layout's chain), the old key."""
        return [self.certs / f"{host}.pem", self.certs / f"{host}.key"]

    def save(self, host: str, chain_pem: bytes, key) -> Certificate:
        """Replace ``host``'s pair in one rename; return it, checked."""
        chain, key = check_pair(host, chain_pem, _pem_key(key))
        bundle, legacy_key = self.paths(host)
        write_private(bundle, _pem_key(key) + chain_pem)
        if legacy_key.exists():  # the old layout's key: the bundle supersedes it
            legacy_key.unlink()
            fsync_dir(self.certs)
        return Certificate(chain, key, "acme")

    def load(self, host: str) -> Certificate | None:
        """The stored pair for ``host``, checked; None if there is none; StoredPairError if it is unfit."""
        bundle, legacy_key = self.paths(host)
        if not bundle.exists():
            return None
        data = bundle.read_bytes()
        try:
            key_pem, chain_pem = split_bundle(data)
        except PairProblem as e:
            raise StoredPairError(bundle, e) from None
        key_path = bundle
        if key_pem is None:  # the old layout: the chain here, the key beside it
            if not legacy_key.exists():
                raise StoredPairError(bundle, PairProblem("key", "no private key in it, nor beside it"))
            key_pem, key_path = legacy_key.read_bytes(), legacy_key
        try:
            chain, private = check_pair(host, chain_pem, key_pem)
        except PairProblem as e:
            raise StoredPairError(key_path if e.part == "key" else bundle, e) from None
        return Certificate(chain, private, "acme")

    def renewal_info(self, host: str) -> RenewalInfo | None:
        """What the CA last said about ``host``'s renewal (ARI), if anything readable is stored."""
        try:
            return RenewalInfo.from_json(json.loads((self.certs / f"{host}.ari.json").read_bytes()))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save_renewal_info(self, host: str, info: RenewalInfo) -> None:
        write_private(self.certs / f"{host}.ari.json", json.dumps(info.to_json()).encode())

    def quarantine(self, host: str) -> list[Path]:
        """Move ``host``'s files aside (both: which half of a mismatched pair is wrong cannot be told)."""
        return [move_aside(path) for path in self.paths(host) if path.exists()]
