"""Shared ACME state: the pure lock and next-step decisions, and both storage backends (files, and a real
redis-server) behind the one interface."""

from __future__ import annotations

import threading
import time

import pytest

from edge.acme import locks
from edge.acme.kv import FileStorage, HeldLock, RedisStorage
from edge.acme.locks import LockDecision, LockRecord, Next, Resume, after_lock, decide_lock, is_newer, resume_action
from edge.acme.storage import AcmeStorage
from tests.support.redis import RedisServer

# -- pure decisions ----------------------------------------------------------------------------------------


def test_a_lock_is_taken_when_absent_waited_for_when_held_and_taken_over_when_stale():
    held = LockRecord("other", 100.0)
    assert decide_lock(None, False, "me", 50.0) is LockDecision.TAKE
    assert decide_lock(held, True, "me", 50.0) is LockDecision.WAIT
    assert decide_lock(held, True, "me", 100.0) is LockDecision.TAKE_OVER  # expired
    assert decide_lock(None, True, "me", 50.0) is LockDecision.TAKE_OVER  # unreadable (cut short by a crash)
    assert decide_lock(LockRecord("me", 100.0), True, "me", 50.0) is LockDecision.MINE


def test_lock_records_round_trip_and_garbage_is_none():
    record = locks.new_record("edge-1:42:abcd", 1000.0, 20.0)
    assert record.expires == 1020.0
    assert LockRecord.decode(record.encode()) == record
    for garbage in (None, b"", b"{", b'{"owner": "x"}', b"[1, 2]"):
        assert LockRecord.decode(garbage) is None


def test_after_the_lock_an_edge_looks_again_before_ordering():
    assert after_lock(None, False, False) is Next.ORDER  # nothing stored
    assert after_lock(False, True, False) is Next.ADOPT  # another edge finished meanwhile
    assert after_lock(True, False, False) is Next.ORDER  # still due
    assert after_lock(True, False, True) is Next.FINISH  # an issued certificate waits to be downloaded
    assert after_lock(None, False, True) is Next.FINISH
    assert after_lock(False, True, True) is Next.ADOPT  # done by another edge: the record is not needed


def test_a_recorded_order_is_finished_by_its_status():
    assert resume_action("valid", True) is Resume.DOWNLOAD
    assert resume_action("processing", True) is Resume.POLL
    assert resume_action("ready", True) is Resume.FINALIZE
    for status in ("pending", "invalid", "expired", None):
        assert resume_action(status, True) is Resume.DISCARD
    assert resume_action("valid", False) is Resume.DISCARD  # the names changed since


def test_only_a_newer_stored_pair_replaces_the_one_served():
    assert is_newer(200.0, b"new", None, None)
    assert is_newer(200.0, b"new", 100.0, b"old")
    assert not is_newer(200.0, b"same", 200.0, b"same")
    assert not is_newer(100.0, b"older copy", 200.0, b"current")


# -- the backends ------------------------------------------------------------------------------------------


@pytest.fixture(params=["files", "redis"])
def backend(request, tmp_path, start):
    if request.param == "files":
        return FileStorage(tmp_path / "state")
    server = start(RedisServer, tmp_path)
    return RedisStorage(server.url)


def test_values_are_put_got_listed_and_deleted(backend):
    assert backend.get("acme/x/certs/a.pem") is None
    backend.put("acme/x/certs/a.pem", b"one")
    backend.put("acme/x/certs/*.w.test.pem", b"two")
    backend.put("acme/x/challenges/http-01/a/t", b"three")
    assert backend.get("acme/x/certs/a.pem") == b"one"
    assert backend.list("acme/x/certs/") == ["acme/x/certs/*.w.test.pem", "acme/x/certs/a.pem"]
    assert backend.list("acme/x/certs/*") == ["acme/x/certs/*.w.test.pem"]  # a literal star
    backend.delete("acme/x/certs/a.pem")
    backend.delete("acme/x/certs/a.pem")  # gone already: no error
    assert backend.get("acme/x/certs/a.pem") is None


def test_a_lock_has_one_owner_until_it_is_released_or_goes_stale(backend):
    key = "acme/x/locks/a.lock"
    assert backend.lock(key, "one", ttl=30)
    assert not backend.lock(key, "two", ttl=30)
    assert backend.holder(key) == "one"
    assert backend.refresh(key, "one", ttl=30)
    assert not backend.refresh(key, "two", ttl=30)
    backend.unlock(key, "two")  # never someone else's
    assert backend.holder(key) == "one"
    backend.unlock(key, "one")
    assert backend.holder(key) is None
    assert backend.lock(key, "two", ttl=0.3)
    deadline = time.monotonic() + 10
    while not backend.lock(key, "three", ttl=30):  # the holder died: its lock expires and is taken over
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert backend.holder(key) == "three"
    assert not backend.refresh(key, "two")


def test_a_held_lock_is_kept_alive_by_its_heartbeat(backend, monkeypatch):
    monkeypatch.setattr("edge.acme.kv.HEARTBEAT", 0.1)
    key = "acme/x/locks/b.lock"
    assert backend.lock(key, "one", ttl=0.5)
    held = HeldLock(backend, key, "one", threading.Event())
    began = time.monotonic()
    while time.monotonic() - began < 1.5:  # three times the lock's life: refreshed all along
        assert not backend.lock(key, "two", ttl=30)
        time.sleep(0.1)
    held.release()
    assert backend.lock(key, "two", ttl=30)


def test_a_stale_lock_file_is_taken_over_once_when_edges_race(tmp_path):
    """Eight edges find the same stale lock at once, twenty times over: each time exactly one takes it."""
    storage = FileStorage(tmp_path)
    key = "locks/a.lock"
    (tmp_path / "locks").mkdir()
    for round_ in range(20):
        (tmp_path / key).write_bytes(LockRecord("dead", time.time() - 5).encode())
        results: list[bool] = []
        barrier = threading.Barrier(8)

        def take(n: int) -> None:
            barrier.wait()
            results.append(storage.lock(key, f"edge-{round_}-{n}", ttl=30))

        threads = [threading.Thread(target=take, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert results.count(True) == 1, (round_, results)
        winner = LockRecord.decode((tmp_path / key).read_bytes()).owner
        assert winner.startswith(f"edge-{round_}-")
    assert sorted(p.name for p in (tmp_path / "locks").iterdir()) == ["a.lock"]


def _acme_storage(backend, tmp_path) -> AcmeStorage:
    root = backend.root if isinstance(backend, FileStorage) else tmp_path / "local"
    return AcmeStorage(str(root), "https://ca.test/dir", backend)


def test_orders_and_challenges_in_acme_storage(backend, tmp_path):
    storage = _acme_storage(backend, tmp_path)
    assert storage.recorded_order("a.test") is None
    storage.record_order("a.test", "https://ca.test/order/1", b"-----BEGIN PRIVATE KEY-----\n", ["b.test", "a.test"])
    kept = storage.recorded_order("a.test")
    assert (kept.url, kept.key_pem, kept.names) == ("https://ca.test/order/1", b"-----BEGIN PRIVATE KEY-----\n",
                                                    ("a.test", "b.test"))
    storage.forget_order("a.test")
    assert storage.recorded_order("a.test") is None

    storage.put_challenge("http-01", "a.test", "tok", "tok.thumb")
    storage.put_challenge("tls-alpn-01", "a.test", "", "auth")
    assert storage.challenge("http-01", "a.test", "tok") == "tok.thumb"
    assert storage.challenge("tls-alpn-01", "a.test", "") == "auth"
    assert storage.challenge("http-01", "a.test", "../../account.key") is None  # names from the network
    assert storage.challenge("http-01", "..", "x") is None
    storage.delete_challenge("http-01", "a.test", "tok")
    assert storage.challenge("http-01", "a.test", "tok") is None


def test_the_account_key_is_created_once_whoever_asks_first(backend, tmp_path):
    storage = _acme_storage(backend, tmp_path)
    keys = []
    barrier = threading.Barrier(4)

    def ask(n: int) -> None:
        barrier.wait()
        keys.append(storage.account_key(f"edge-{n}"))

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len({key.private_numbers().private_value for key in keys}) == 1


def test_an_account_key_es256_cannot_sign_with_is_moved_aside_and_replaced(tmp_path):
    """ACME signs with ES256 (jose.JWKEC): a stored RSA or P-384 account key was returned as it was and failed
    every order; it is a bad key like one that does not parse."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    pem = (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    for wrong in (rsa.generate_private_key(65537, 2048), ec.generate_private_key(ec.SECP384R1())):
        storage = AcmeStorage(str(tmp_path / type(wrong).__name__), "https://ca.test/dir")
        reports: list[dict] = []
        storage.report = lambda text, **fields: reports.append(fields)
        stored = storage.dir / "account.key"
        stored.parent.mkdir(parents=True, exist_ok=True)
        stored.write_bytes(wrong.private_bytes(*pem))
        key = storage.account_key()
        assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
        assert [r["reason"] for r in reports] == [f"a {type(wrong).__name__}, not the P-256 key that ES256 "
                                                  "signs with"]
        moved = [p.name for p in stored.parent.iterdir() if p.name.startswith("account.key.bad-")]
        assert len(moved) == 1 and (stored.parent / moved[0]).read_bytes() == wrong.private_bytes(*pem)
        assert storage.account_key().private_numbers() == key.private_numbers()  # kept from now on


# -- answers another edge keeps --------------------------------------------------------------------------


def test_a_responders_miss_is_looked_up_in_the_storage_cached_and_bounded():
    from twisted.internet.defer import Deferred

    from edge.acme import responders as module
    from edge.acme.responders import ChallengeResponders

    answers = ChallengeResponders()
    assert answers.shared_http01("a.test", "tok") is None  # no shared storage: nothing to ask
    asked: list[tuple[str, str, str]] = []
    pending: list[Deferred] = []

    def lookup(kind: str, host: str, token: str) -> Deferred:
        asked.append((kind, host, token))
        pending.append(Deferred())
        return pending[-1]

    answers.shared = lookup
    got: list = []
    answers.shared_http01("a.test", "tok").addCallback(got.append)
    pending[-1].callback("tok.thumb")
    answers.shared_http01("A.test", "tok").addCallback(got.append)  # cached: not asked again
    assert got == ["tok.thumb", "tok.thumb"] and len(asked) == 1

    answers.shared_http01("a.test", "none").addCallback(got.append)
    pending[-1].callback(None)
    answers.shared_http01("a.test", "none").addCallback(got.append)  # a miss is cached briefly too
    assert got[-2:] == [None, None] and len(asked) == 2

    for n in range(module.MAX_LOOKUPS):  # stray requests: at most MAX_LOOKUPS threads at once
        answers.shared_http01("a.test", f"stray-{n}")
    answers.shared_http01("a.test", "one-too-many").addCallback(got.append)
    assert got[-1] is None and len(asked) == 2 + module.MAX_LOOKUPS
    for deferred in pending[2:]:
        deferred.errback(RuntimeError("storage down"))  # a failed lookup is no answer, and frees its slot
    answers.shared_http01("a.test", "later")
    assert len(asked) == 3 + module.MAX_LOOKUPS
