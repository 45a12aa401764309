# -*- test-case-name: tests.e2e.test_acme_storage, tests.e2e.test_acme_resilience, tests.e2e.test_acme_shared -*-
"""ACME state: the account key, the certificates, unfinished orders, challenge answers and locks.

Kept in a :class:`edge.acme.kv.Storage` (files under ``state_dir``, or
Redis) under ``acme/<server>/``, so staging and production never mix:

* ``account.key``;
* ``certs/HOST.pem``: a host's key block, then its chain, in one value, so
  they are replaced together and a crash can never pair a new certificate
  with an old key (the layout before this one, ``HOST.pem`` holding the
  chain and ``HOST.key`` the key, is still read);
* ``certs/HOST.ari.json``: the CA's renewal window (ARI);
* ``orders/HOST.json``: an order about to be finalized (its URL and the key
  of its CSR), so a restart finishes the download instead of ordering again;
* ``challenges/http-01/HOST/TOKEN`` and ``challenges/tls-alpn-01/HOST``: the
  answers of a pending order, for whichever edge the CA asks;
* ``locks/HOST.lock`` and ``locks/account.lock``.

What is read back is checked (:mod:`edge.acme.pairs`): a value that is not
fit to use is moved aside as ``NAME.bad-YYYYMMDDHHMMSS`` and the caller
orders again.  Every method blocks: call them in ACME threads (the file
backend's start-up read is the exception, before anything is served).
"""

from __future__ import annotations

import datetime
import json
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.logger import Logger

from edge.acme.kv import FileStorage, HeldLock, Storage
from edge.acme.timing import RenewalInfo
from edge.acme.pairs import PairProblem, bad_name, check_pair, parse_key, split_bundle
from edge.tls.private_files import private_dir
from edge.tls.store import Certificate

log = Logger()


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class StoredPairError(Exception):
    """A stored certificate or key is not fit to serve: ``path`` is where the value at fault is."""

    def __init__(self, path: str, problem: PairProblem) -> None:
        super().__init__(f"{path}: {problem.reason}")
        self.path = path
        self.reason = problem.reason


@dataclass(frozen=True)
class Loaded:
    """What reading a host's state found: a pair fit to serve (``cert``), nothing, a bad pair (``problem``,
    moved aside as ``moved``) or an error reading it; and the CA's renewal window if one is kept."""

    cert: Certificate | None = None
    problem: StoredPairError | None = None
    moved: str = ""
    error: str | None = None
    renewal: RenewalInfo | None = None


@dataclass(frozen=True)
class RecordedOrder:
    url: str
    key_pem: bytes
    names: tuple[str, ...]


def slug_of(directory_url: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in directory_url.split("://", 1)[-1])[:80]


class AcmeStorage:
    def __init__(self, state_dir: str, directory_url: str, backend: Storage | None = None) -> None:
        self.state_dir = state_dir
        self.backend: Storage = backend if backend is not None else FileStorage(state_dir)
        self.prefix = f"acme/{slug_of(directory_url)}/"
        self.report = log.error  # the service passes log lines from ACME threads to the reactor
        self.dir = Path(state_dir) / "acme" / slug_of(directory_url)  # local: DNS-01's pending records
        if isinstance(self.backend, FileStorage):
            self.certs = private_dir(self.dir / "certs", Path(state_dir))
            for left in self.certs.glob("*.tmp"):  # a write a crash cut short: the name it was for is intact
                left.unlink()
        else:
            private_dir(self.dir, Path(state_dir))

    @property
    def local(self) -> bool:
        """Files on this machine: cheap enough to read at start-up before anything is served."""
        return bool(getattr(self.backend, "local", False))

    def key(self, name: str) -> str:
        return self.prefix + name

    def where(self, name: str) -> str:
        return self.backend.where(self.key(name))

    # -- the account ------------------------------------------------------------------------------------

    def account_key(self, owner: str | None = None, cancel: threading.Event | None = None
                    ) -> ec.EllipticCurvePrivateKey:
        """The account key, created once and reused across restarts (and edges: it is created under a
        lock, looking again once the lock is held); one that does not parse is logged, moved aside and
        replaced (the account is then a new one: the old key is lost anyway)."""
        name = "account.key"
        key = self._read_account_key(name)
        if key is not None:
            return key
        held = self.hold("locks/account.lock", owner, cancel) if owner is not None else None
        try:
            key = self._read_account_key(name)
            if key is None:
                key = ec.generate_private_key(ec.SECP256R1())
                self.backend.put(self.key(name), _pem_key(key))
            return key
        finally:
            if held is not None:
                held.release()

    def _read_account_key(self, name: str) -> ec.EllipticCurvePrivateKey | None:
        data = self.backend.get(self.key(name))
        if data is None:
            return None
        try:
            key = parse_key(data)
            if not (isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)):
                raise PairProblem("key", f"a {type(key).__name__}, not the P-256 key that ES256 signs with")
            return key
        except PairProblem as e:
            moved = self._move_aside(name, data)
            self.report("ACME account key {path}: {reason}; moved aside to {moved}, creating a new account",
                      path=self.where(name), reason=e.reason, moved=moved.rsplit("/", 1)[-1])
            return None

    # -- locks ------------------------------------------------------------------------------------------

    def hold(self, name: str, owner: str, cancel: threading.Event | None = None, attempts: int = 40
             ) -> HeldLock:
        """Take the lock ``name``, waiting for it (``attempts`` half-seconds at most; then taken anyway is
        not safe, so raise TimeoutError)."""
        cancel = cancel if cancel is not None else threading.Event()
        for _ in range(attempts):
            if self.backend.lock(self.key(name), owner):
                return HeldLock(self.backend, self.key(name), owner, cancel)
            if cancel.wait(0.5):
                break
        raise TimeoutError(f"the lock {self.where(name)} stayed held by {self.backend.holder(self.key(name))}")

    def try_lock(self, host: str, owner: str, cancel: threading.Event) -> HeldLock | str:
        """The lock for ordering ``host``; else who holds it."""
        name = f"locks/{host}.lock"
        if self.backend.lock(self.key(name), owner):
            return HeldLock(self.backend, self.key(name), owner, cancel)
        return self.backend.holder(self.key(name)) or "another edge"

    # -- certificates -----------------------------------------------------------------------------------

    def names(self, host: str) -> list[str]:
        """The names that may hold ``host``'s pair: the bundle (or the old layout's chain), the old key."""
        return [f"certs/{host}.pem", f"certs/{host}.key"]

    def paths(self, host: str) -> list[str]:
        return [self.where(name) for name in self.names(host)]

    def save(self, host: str, chain_pem: bytes, key) -> Certificate:
        """Replace ``host``'s pair in one atomic put; return it, checked."""
        chain, key = check_pair(host, chain_pem, _pem_key(key))
        bundle, legacy_key = self.names(host)
        self.backend.put(self.key(bundle), _pem_key(key) + chain_pem)
        if self.backend.get(self.key(legacy_key)) is not None:  # the old layout's key: superseded
            self.backend.delete(self.key(legacy_key))
        return Certificate(chain, key, "acme")

    def load(self, host: str) -> Certificate | None:
        """The stored pair for ``host``, checked; None if there is none; StoredPairError if it is unfit."""
        bundle, legacy_key = self.names(host)
        data = self.backend.get(self.key(bundle))
        if data is None:
            return None
        try:
            key_pem, chain_pem = split_bundle(data)
        except PairProblem as e:
            raise StoredPairError(self.where(bundle), e) from None
        key_name = bundle
        if key_pem is None:  # the old layout: the chain here, the key beside it
            key_pem, key_name = self.backend.get(self.key(legacy_key)), legacy_key
            if key_pem is None:
                raise StoredPairError(self.where(bundle), PairProblem("key", "no private key in it, nor beside it"))
        try:
            chain, private = check_pair(host, chain_pem, key_pem)
        except PairProblem as e:
            raise StoredPairError(self.where(key_name if e.part == "key" else bundle), e) from None
        return Certificate(chain, private, "acme")

    def read(self, host: str) -> Loaded:
        """``host``'s pair and renewal window, as :class:`Loaded`; a bad pair is moved aside here."""
        try:
            cert = self.load(host)
        except StoredPairError as e:
            try:
                moved = ", ".join(self.quarantine(host))
            except OSError as error:
                moved = f"(could not move it aside: {error.strerror or error})"
            return Loaded(problem=e, moved=moved)
        except Exception as e:  # unreadable file, Redis down: keep serving what is held
            return Loaded(error=f"{type(e).__name__}: {e}" if not isinstance(e, OSError) else str(e))
        return Loaded(cert=cert, renewal=self.renewal_info(host) if cert is not None else None)

    def renewal_info(self, host: str) -> RenewalInfo | None:
        """What the CA last said about ``host``'s renewal (ARI), if anything readable is stored."""
        try:
            data = self.backend.get(self.key(f"certs/{host}.ari.json"))
            return RenewalInfo.from_json(json.loads(data)) if data is not None else None
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save_renewal_info(self, host: str, info: RenewalInfo) -> None:
        self.backend.put(self.key(f"certs/{host}.ari.json"), json.dumps(info.to_json()).encode())

    def _move_aside(self, name: str, data: bytes) -> str:
        """Keep ``data`` as ``NAME.bad-TIMESTAMP`` (a free one) and remove ``name``; return the new name."""
        base = bad_name(name, datetime.datetime.now(datetime.timezone.utc))
        target, n = base, 1
        while self.backend.get(self.key(target)) is not None:
            target, n = f"{base}.{n}", n + 1
        if isinstance(self.backend, FileStorage):  # one rename: the file as it was, mode and all
            self.backend.path(self.key(name)).rename(self.backend.path(self.key(target)))
        else:
            self.backend.put(self.key(target), data)
            self.backend.delete(self.key(name))
        return target

    def quarantine(self, host: str) -> list[str]:
        """Move ``host``'s values aside (both: which half of a mismatched pair is wrong cannot be told);
        return their new names."""
        moved = []
        for name in self.names(host):
            data = self.backend.get(self.key(name))
            if data is not None:
                moved.append(self._move_aside(name, data).rsplit("/", 1)[-1])
        return moved

    # -- unfinished orders ------------------------------------------------------------------------------

    def record_order(self, host: str, url: str, key_pem: bytes, names: list[str]) -> None:
        value = {"url": url, "key": key_pem.decode("ascii"), "names": sorted(names)}
        self.backend.put(self.key(f"orders/{host}.json"), json.dumps(value).encode())

    def recorded_order(self, host: str) -> RecordedOrder | None:
        data = self.backend.get(self.key(f"orders/{host}.json"))
        if data is None:
            return None
        try:
            value = json.loads(data)
            return RecordedOrder(str(value["url"]), value["key"].encode("ascii"), tuple(value["names"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def forget_order(self, host: str) -> None:
        self.backend.delete(self.key(f"orders/{host}.json"))

    # -- challenge answers ------------------------------------------------------------------------------

    def _challenge_name(self, kind: str, host: str, token: str) -> str:
        return f"challenges/{kind}/{host}/{token}" if kind == "http-01" else f"challenges/{kind}/{host}"

    def put_challenge(self, kind: str, host: str, token: str, key_authorization: str) -> None:
        self.backend.put(self.key(self._challenge_name(kind, host, token)), key_authorization.encode("ascii"))

    def challenge(self, kind: str, host: str, token: str) -> str | None:
        if "/" in host or "/" in token or host.startswith(".") or token.startswith("."):
            return None  # names from the network: never a path out of the folder
        data = self.backend.get(self.key(self._challenge_name(kind, host, token)))
        return data.decode("ascii", errors="replace") if data is not None else None

    def delete_challenge(self, kind: str, host: str, token: str) -> None:
        self.backend.delete(self.key(self._challenge_name(kind, host, token)))
