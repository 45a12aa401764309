# -*- test-case-name: tests.e2e.test_acme_storage, tests.e2e.test_acme_shared -*-
"""Where ACME state lives: a small storage interface (CertMagic's model) and its two backends.

Keys are ``/``-separated relative names (``acme/<server>/certs/HOST.pem``).
The file backend keeps them under ``state_dir`` (which several edges may
share, e.g. over NFS); the Redis backend keeps them in one Redis database.
Every call blocks: they run in the ACME threads, never on the reactor.
Locks have an owner and an expiry; the holder refreshes them while it works
(:class:`HeldLock`), and one whose holder died goes stale and is taken over
(by one edge: files under an ``O_EXCL`` takeover guard, Redis by expiry).
The decisions are :mod:`edge.acme.locks`' pure functions.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

from edge.acme.locks import HEARTBEAT, LOCK_TTL, LockDecision, LockRecord, decide_lock, new_record
from edge.tls.private_files import fsync_dir, private_dir, write_private


class Storage(Protocol):
    """Shared ACME state: values by key, and expiring locks."""

    def get(self, key: str) -> bytes | None:
        """The value of ``key``; None if there is none."""

    def put(self, key: str, value: bytes) -> None:
        """Set ``key`` atomically and durably: a reader sees the old value or the new, never half."""

    def list(self, prefix: str) -> list[str]:
        """Every key that starts with ``prefix``."""

    def delete(self, key: str) -> None:
        """Remove ``key`` (no error if it is gone)."""

    def lock(self, key: str, owner: str, ttl: float = LOCK_TTL) -> bool:
        """Take the lock ``key`` for ``owner`` for ``ttl`` seconds; False if another owner holds it."""

    def refresh(self, key: str, owner: str, ttl: float = LOCK_TTL) -> bool:
        """Push the lock's expiry ``ttl`` seconds on; False if ``owner`` no longer holds it."""

    def unlock(self, key: str, owner: str) -> None:
        """Release the lock if ``owner`` holds it (never someone else's)."""

    def holder(self, key: str) -> str | None:
        """Who holds the lock ``key`` now, for the log."""

    def where(self, key: str) -> str:
        """Where ``key`` is, for the log (a file's path)."""


class FileStorage:
    """Keys as files under ``root`` (``state_dir``); directories 0700, files 0600, written atomically.
    A lock is a file created with ``O_EXCL`` holding its owner and expiry."""

    local = True

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key

    def where(self, key: str) -> str:
        return str(self.path(key))

    def get(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def put(self, key: str, value: bytes) -> None:
        path = self.path(key)
        private_dir(path.parent, self.root)
        write_private(path, value)

    def list(self, prefix: str) -> list[str]:
        base = self.path(prefix)
        folder = base if prefix.endswith("/") else base.parent
        if not folder.is_dir():
            return []
        found = []
        for path in folder.rglob("*"):
            key = path.relative_to(self.root).as_posix()
            if path.is_file() and key.startswith(prefix) and not path.name.endswith(".tmp"):
                found.append(key)
        return sorted(found)

    def delete(self, key: str) -> None:
        path = self.path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        fsync_dir(path.parent)

    def lock(self, key: str, owner: str, ttl: float = LOCK_TTL) -> bool:
        path = self.path(key)
        private_dir(path.parent, self.root)
        for _ in range(3):  # released, or taken over, meanwhile: look again (bounded)
            if self._create(path, new_record(owner, time.time(), ttl).encode()):
                return True
            seen = self.get(key)
            if seen is None:
                continue  # released meanwhile
            decision = decide_lock(LockRecord.decode(seen), True, owner, time.time())
            if decision is LockDecision.WAIT:
                return False
            if decision is LockDecision.MINE:
                return self.refresh(key, owner, ttl)
            if not self._remove_stale(path, seen):
                return False  # another edge is taking it over
        return False

    @staticmethod
    def _create(path: Path, data: bytes) -> bool:
        """Create ``path`` holding ``data`` if it does not exist (``O_EXCL``: one creator wins)."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(path.parent)
        return True

    def _remove_stale(self, path: Path, seen: bytes) -> bool:
        """Remove the stale lock ``seen`` at ``path``, holding ``NAME.takeover`` (created with ``O_EXCL``) so
        that of several edges finding it stale one removes it: removing it twice would remove the lock the
        first one took.  False if another edge holds the takeover (a takeover left by a crash goes stale too)."""
        guard = path.with_name(path.name + ".takeover")
        if not self._create(guard, b""):
            try:
                if time.time() - guard.stat().st_mtime > LOCK_TTL:
                    guard.unlink()
            except FileNotFoundError:
                pass
            return False
        try:
            try:
                if path.read_bytes() == seen:  # still the stale one (a fresh lock is never removed)
                    path.unlink()
            except FileNotFoundError:
                pass
            return True
        finally:
            guard.unlink()

    def refresh(self, key: str, owner: str, ttl: float = LOCK_TTL) -> bool:
        record = LockRecord.decode(self.get(key))
        if record is None or record.owner != owner:
            return False
        write_private(self.path(key), new_record(owner, time.time(), ttl).encode())
        return True

    def unlock(self, key: str, owner: str) -> None:
        record = LockRecord.decode(self.get(key))
        if record is not None and record.owner == owner:
            self.delete(key)

    def holder(self, key: str) -> str | None:
        record = LockRecord.decode(self.get(key))
        return record.owner if record is not None else None


# KEYS[1] the lock, ARGV[1] its owner (ARGV[2] the new time to live, ms): only the owner refreshes or releases
_REFRESH = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) " \
           "else return 0 end"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


def _match_escape(text: str) -> str:
    """``text`` as a literal in a SCAN MATCH pattern (wildcard hosts hold a ``*``)."""
    return "".join("\\" + c if c in "\\*?[]" else c for c in text)


class RedisStorage:
    """Keys in Redis under ``edge:``; a lock is ``SET NX PX`` holding its owner, refreshed and released by
    Lua scripts that compare the owner first.  A connection is opened for each call and closed after it
    (calls are minutes apart; an idle one would be held open for nothing)."""

    local = False
    PREFIX = "edge:"

    def __init__(self, url: str, password: str | None = None, timeout: float = 5.0) -> None:
        self.url = url
        self.password = password
        self.timeout = timeout

    def _client(self) -> Any:
        import redis

        options: dict[str, Any] = {"socket_timeout": self.timeout, "socket_connect_timeout": self.timeout,
                                   "single_connection_client": True}
        if self.password is not None:
            options["password"] = self.password
        return redis.Redis.from_url(self.url, **options)

    def where(self, key: str) -> str:
        shown = self.url.split("@", 1)[-1] if "@" in self.url else self.url.split("://", 1)[-1]
        return f"redis://{shown} {self.PREFIX}{key}"

    def get(self, key: str) -> bytes | None:
        with self._client() as r:
            return r.get(self.PREFIX + key)

    def put(self, key: str, value: bytes) -> None:
        with self._client() as r:
            r.set(self.PREFIX + key, value)

    def list(self, prefix: str) -> list[str]:
        with self._client() as r:
            keys = r.scan_iter(match=_match_escape(self.PREFIX + prefix) + "*", count=500)
            return sorted(k.decode()[len(self.PREFIX):] for k in keys)

    def delete(self, key: str) -> None:
        with self._client() as r:
            r.delete(self.PREFIX + key)

    def lock(self, key: str, owner: str, ttl: float = LOCK_TTL) -> bool:
        with self._client() as r:
            if r.set(self.PREFIX + key, owner, nx=True, px=int(ttl * 1000)):
                return True
            return bool(r.eval(_REFRESH, 1, self.PREFIX + key, owner, int(ttl * 1000)))  # already ours

    def refresh(self, key: str, owner: str, ttl: float = LOCK_TTL) -> bool:
        with self._client() as r:
            return bool(r.eval(_REFRESH, 1, self.PREFIX + key, owner, int(ttl * 1000)))

    def unlock(self, key: str, owner: str) -> None:
        with self._client() as r:
            r.eval(_RELEASE, 1, self.PREFIX + key, owner)

    def holder(self, key: str) -> str | None:
        with self._client() as r:
            value = r.get(self.PREFIX + key)
        return value.decode(errors="replace") if value is not None else None


class HeldLock:
    """A lock taken in ``storage``, refreshed every ``HEARTBEAT`` by a daemon thread until released (or
    the edge stops: ``cancel``).  A refresh that finds the lock gone sets ``lost``."""

    def __init__(self, storage: Storage, key: str, owner: str, cancel: threading.Event) -> None:
        self.storage, self.key, self.owner = storage, key, owner
        self.released = threading.Event()
        self.cancel = cancel
        self.lost = False
        threading.Thread(target=self._beat, name=f"acme-lock-{key}", daemon=True).start()

    def _beat(self) -> None:
        while not self.released.wait(HEARTBEAT) and not self.cancel.is_set():
            try:
                if not self.storage.refresh(self.key, self.owner):
                    self.lost = True
                    return
            except Exception:  # storage unreachable for a moment: the next beat tries again
                continue

    def release(self) -> None:
        """Stop refreshing and release (blocking: call it in an ACME thread)."""
        self.released.set()
        self.storage.unlock(self.key, self.owner)


def new_owner() -> str:
    """This process's name in lock records: host, pid and a random part (a restarted edge is another)."""
    return f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def open_storage(config: Any) -> Storage:
    """The backend ``[storage]`` names: Redis if ``redis`` is set, else files under ``state_dir``."""
    wanted = getattr(config, "storage", None)
    if wanted is not None and wanted.redis is not None:
        return RedisStorage(wanted.redis, wanted.password)
    return FileStorage(config.state_dir)
