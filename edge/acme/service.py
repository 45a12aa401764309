# -*- test-case-name: tests.e2e.test_acme, tests.e2e.test_acme_resilience, tests.e2e.test_acme_shared -*-
"""The issuing service: checks, obtains, renews and swaps ACME certificates.

At start-up it loads what ``state_dir`` holds into the live certificate
store, logs which host is covered by what until when, and then checks
every managed host: at once, and every ``check_interval`` (jittered).  A
certificate is renewed when a third of its lifetime remains (so 6-day and
90-day certificates both work), or earlier if the CA's renewal information
says so.  Orders run one at a time in a worker thread; a failure is logged
with the CA's problem, and that host is retried with exponential back-off
(``retry``, doubling, capped at a day) while the edge keeps serving what it
has.

Several edges may share one set of certificates (``[storage]``: a shared
``state_dir`` or Redis): a host is ordered by the edge that takes its lock
in the storage, which looks again once it holds it; the others wait for it
and pick the certificate up from the storage (every ``SYNC_INTERVAL``, and
soon after a lock they found held).  Challenge answers are kept in the
storage too, so whichever edge the CA asks answers.  Every storage call is
blocking and runs in an ACME thread; the file backend's first read at
start-up is the exception (local disk, before anything is served).
"""

from __future__ import annotations

import datetime
import random
import threading
from typing import Any

from acme import errors as acme_errors, messages
from cryptography.hazmat.primitives import serialization
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredLock, inlineCallbacks
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from edge.ops import metrics
from edge.acme.dns01 import plan_certificates
from edge.acme.dns_solver import Dns01Solver
from edge.acme.issuer import AcmeSession, describe
from edge.acme.kv import HeldLock, new_owner, open_storage
from edge.acme.locks import LOCK_WAIT, Next, after_lock, is_newer
from edge.acme.responders import ChallengeResponders, tls_alpn_certificate
from edge.acme.storage import AcmeStorage, Loaded, RecordedOrder
from edge.acme.timing import RenewalInfo, due_at, next_check, pick_in_window
from edge.acme.threads import Cancelled, run_in_daemon_thread
from edge.tls.store import Certificate, CertificateStore
from edge.config import AcmeConfig, Config

log = Logger()

MAX_BACKOFF = 86400.0
SYNC_INTERVAL = 30.0  # how often the shared storage is read for certificates another edge obtained


def acme_of(config: Config) -> AcmeConfig:
    """The ``[acme]`` table of a config the ACME service runs for (it is started only when there is one)."""
    if config.acme is None:
        raise ValueError(f"{config.path}: no [acme] table")
    return config.acme


def managed_hosts(config: Config, store: CertificateStore) -> list[str]:
    """Terminated host names that no static certificate covers; ``*.suffix`` too with [acme.dns] (DNS-01)."""
    acme = acme_of(config)
    return list(plan_certificates(config.routes, acme.challenge, acme.dns is not None, store.covered))


class AcmeService(Service):
    name = "acme"

    def __init__(self, config: Config, store: CertificateStore, responders: ChallengeResponders, reactor: Any,
                 orders: bool = True, on_issued: Any = None) -> None:
        self.orders = orders  # False in workers other than the first: they only load what it stored
        self.on_issued = on_issued
        self.config = config
        self.acme = acme_of(config)
        self.store = store
        self.responders = responders
        self.reactor = reactor
        self.owner = new_owner()  # this process, in the locks it takes
        self.storage = self._open_storage(config)
        self.hosts = managed_hosts(config, store)
        # set on stop: ACME threads give up between two requests, a DNS-01 propagation wait ends (its
        # records are removed at the next start)
        self.cancel = threading.Event()
        self._plan(config, store)
        self.swept = False
        self.current: dict[str, Certificate] = {}
        self.backoff: dict[str, tuple[float, float]] = {}  # host -> (delay, not before)
        self.session: AcmeSession | None = None
        self.lock = DeferredLock()
        self.timer: Any = None
        self.recheck = False  # a reload came during a round: check again right after it
        self.renewal: dict[str, RenewalInfo | None] = {}  # host -> the CA's renewal window (ARI), as stored
        self.ari_next: dict[str, float] = {}  # host -> reactor time before which ARI is not asked again
        self.waiting: dict[str, float] = {}  # host -> reactor time to look again (another edge holds its lock)
        self.syncer: LoopingCall | None = None
        responders.shared = self._shared_answer

    def _open_storage(self, config: Config) -> AcmeStorage:
        storage = AcmeStorage(config.state_dir, acme_of(config).directory, open_storage(config))
        storage.report = lambda *args, **kwargs: self.reactor.callFromThread(log.error, *args, **kwargs)
        return storage

    @staticmethod
    def _storage_key(config: Config) -> tuple:
        return config.state_dir, acme_of(config).directory, config.storage

    def _plan(self, config: Config, store: CertificateStore) -> None:
        """Which names each certificate covers and how each is proved (DNS-01 for wildcards)."""
        self.identifiers = plan_certificates(config.routes, self.acme.challenge, self.acme.dns is not None,
                                             store.covered)  # certificate name -> [(name, challenge)]
        self.dns = None if self.acme.dns is None else Dns01Solver(
            self.acme.dns, self.storage.dir / "dns-pending.json", self._note, self.cancel)

    def startService(self) -> None:
        super().startService()
        self.cancel.clear()
        self.responders.shared = self._shared_answer
        if self.storage.local:  # local files: read before anything is served
            for host in self.hosts:
                self._apply(host, self.storage.read(host), initial=True)
            self._started()
        else:  # Redis: never a blocking call on the reactor
            self._thread(lambda hosts: [(h, self.storage.read(h)) for h in hosts], list(self.hosts)).addCallbacks(
                self._loaded_at_start, lambda failure: self._started())

    def _loaded_at_start(self, found: list[tuple[str, Loaded]]) -> None:
        for host, loaded in found:
            if host in self.hosts:
                self._apply(host, loaded, initial=True)
        self._started()

    def _started(self) -> None:
        if not self.running:
            return
        now = datetime.datetime.now(datetime.timezone.utc)
        for host in self.hosts:
            cert = self.current.get(host)
            if cert is not None:
                log.info("certificate for {host}: ACME, expires {expiry:%Y-%m-%d} ({days:.0f} days)",
                         host=host, expiry=cert.not_after, days=(cert.not_after - now).total_seconds() / 86400)
            elif self.orders:
                fallback = "the local CA" if self.store.fallback is not None else "nothing (TLS alert)"
                log.info("certificate for {host}: none yet from ACME; serving {fallback} until it arrives",
                         host=host, fallback=fallback)
        self.syncer = LoopingCall(self.sync)
        self.syncer.clock = self.reactor
        self.syncer.start(SYNC_INTERVAL, now=False).addErrback(lambda f: log.failure("ACME sync", f))
        if self.orders:
            self._schedule(0)

    def _apply(self, host: str, loaded: Loaded, initial: bool = False) -> Certificate | None:
        """Serve what reading ``host``'s state found, if it is new.  A pair unfit to serve was moved aside:
        it is logged with its file and forgotten (so the host is ordered again); one that vanished is
        forgotten too, while the copy in memory goes on being served until the new one arrives.  A newer
        pair than the one served (another edge renewed it) is swapped in and logged."""
        if loaded.problem is not None:
            e = loaded.problem
            log.error("stored ACME certificate for {host} is unusable: {path}: {reason}; moved aside as {moved}; "
                      "{what}", host=host, path=e.path, reason=e.reason, moved=loaded.moved,
                      what="ordering a new one" if self.orders else "the ordering worker orders a new one")
            self.current.pop(host, None)
            return None
        if loaded.error is not None:
            log.error("stored ACME certificate for {host} cannot be read: {error}", host=host, error=loaded.error)
            return self.current.get(host)  # storage unreachable: keep serving what is held
        cert = loaded.cert
        if cert is None:
            if self.current.pop(host, None) is not None:
                log.warn("stored ACME certificate for {host} is gone from {path}; ordering a new one",
                         host=host, path=self.storage.paths(host)[0])
            return None
        known = self.current.get(host)
        if is_newer(cert.not_after.timestamp(), cert.chain[0].public_bytes(serialization.Encoding.DER),
                    known.not_after.timestamp() if known is not None else None,
                    known.chain[0].public_bytes(serialization.Encoding.DER) if known is not None else None):
            self.current[host] = cert
            self.store.add(cert)
            self.waiting.pop(host, None)
            if not initial:
                log.info("certificate for {host} updated from shared storage, expires {expiry:%Y-%m-%d %H:%M} UTC",
                         host=host, expiry=cert.not_after)
        if loaded.renewal is not None and loaded.renewal.serial == self.current[host].chain[0].serial_number:
            self.renewal[host] = loaded.renewal
        return self.current[host]

    @inlineCallbacks
    def sync(self):
        """Read the shared storage for pairs another edge (or worker) stored; never while a round of checks
        reads it anyway."""
        if self.lock.locked or not self.running:
            return
        try:
            found = yield self._thread(lambda hosts: [(h, self.storage.read(h)) for h in hosts], list(self.hosts))
        except Exception as e:
            if self.running and not isinstance(e, Cancelled):
                log.warn("cannot read the shared ACME storage: {problem}", problem=describe(e))
            return
        for host, loaded in found:
            if host in self.hosts and loaded.cert is not None:  # problems are for the ordering round
                self._apply(host, loaded)

    def reconfigure(self, config: Config, store: CertificateStore) -> None:
        """A reload: take the new config and the new runtime's certificate store, keeping what is under way.

        One ACME service lives across reloads, so an order in progress is not started a second time by a
        successor (two TLS-ALPN-01 validations for one host fail each other) and the back-off is kept.
        The managed hosts are worked out again; the certificates held are put in the new store; a
        changed ACME server or account starts a new session (and storage, for another server)."""
        old, new = self.acme, acme_of(config)
        self.config_storage = self.config.storage
        self.config, self.acme, self.store = config, new, store
        if self._storage_key(config) != (self.storage.state_dir, old.directory, self.config_storage):
            self.storage = self._open_storage(config)
            self.current.clear()
            self.session = None
        elif (old.email, old.ca_bundle, old.eab_kid, old.eab_hmac_key) != \
                (new.email, new.ca_bundle, new.eab_kid, new.eab_hmac_key):
            self.session = None
        self.hosts = managed_hosts(config, store)  # before the ACME certificates are in it
        self._plan(config, store)
        for host in list(self.current):
            if host not in self.hosts:
                del self.current[host]
        for host in list(self.backoff):
            if host not in self.hosts:
                del self.backoff[host]
        for cert in self.current.values():
            store.add(cert)
        if self.storage.local:
            for host in self.hosts:
                self._apply(host, self.storage.read(host))  # another worker may have written new ones
        elif self.running:
            self.sync()
        if self.running and self.orders and not self.lock.locked:
            self._schedule(0)  # new hosts need not wait for the next check
        elif self.running and self.orders:
            self.recheck = True  # the round under way is followed by another at once

    def stopService(self):
        """Stop at once: an order in progress is cancelled, and nothing waits for its thread."""
        super().stopService()
        self.cancel.set()
        if self.syncer is not None and self.syncer.running:
            self.syncer.stop()
        self.syncer = None
        if self.responders.shared == self._shared_answer:
            self.responders.shared = None
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def _schedule(self, delay: float) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = self.reactor.callLater(max(0.0, delay), self.check)

    @inlineCallbacks
    def check(self):
        """Obtain or renew every managed host that needs it; then plan the next check."""
        self.timer = None
        yield self.lock.acquire()
        try:
            if self.dns is not None and not self.swept:  # DNS-01 records a stop left behind
                self.swept = True
                yield self._thread(self.dns.sweep)
            for host in list(self.hosts):
                if not self.running:
                    return
                try:  # one host's trouble never stops the round for the others
                    loaded = yield self._thread(self.storage.read, host)
                    if host not in self.hosts:
                        continue
                    self._apply(host, loaded)
                    if loaded.error is not None:
                        continue  # the storage cannot be read: nothing can be decided (and nothing is lost)
                    if self.backoff.get(host, (0, 0))[1] > self.reactor.seconds():
                        continue
                    needed = yield self._needs(host)
                    if needed:
                        yield self._obtain(host)
                except Cancelled:
                    return
                except Exception:
                    log.failure("ACME check of {host} failed", host=host)
        finally:
            self.lock.release()
            if self.running:
                self._schedule(0 if self.recheck else self._next_check())
                self.recheck = False

    def _renewal(self, host: str, cert: Certificate) -> RenewalInfo | None:
        """The CA's renewal information for the certificate ``host`` has now (kept in the state)."""
        info = self.renewal.get(host)  # read with the pair (_apply)
        return info if info is not None and info.serial == cert.chain[0].serial_number else None

    @inlineCallbacks
    def _needs(self, host: str):
        """Is ``host`` due?  Asks the CA's renewal information (ARI) first when its Retry-After has passed:
        at start-up and at checks, for every managed certificate, not only after an order."""
        cert = self.current.get(host)
        if cert is None:
            return True
        now = datetime.datetime.now(datetime.timezone.utc)
        info = self._renewal(host, cert)
        if (info is None or now >= info.ask_again) and self.ari_next.get(host, 0.0) <= self.reactor.seconds():
            info = yield self._ask_renewal_info(host, cert, info, now)
        when = due_at(cert.not_before, cert.not_after, info)
        if when <= now:
            if info is not None and when < due_at(cert.not_before, cert.not_after):
                log.info("the CA asks for {host} to be renewed early (window {start:%Y-%m-%d %H:%M:%S} to "
                         "{end:%Y-%m-%d %H:%M:%S} UTC)", host=host, start=info.start, end=info.end)
            return True
        return False

    @inlineCallbacks
    def _ask_renewal_info(self, host: str, cert: Certificate, known: RenewalInfo | None, now: datetime.datetime):
        """Fetch, keep and return the CA's renewal window for ``cert``; ``known`` if the CA has none or
        cannot be asked now (then not again before the next ``check_interval``)."""
        self.ari_next[host] = self.reactor.seconds() + self.acme.check_interval
        if self.session is not None and not self.session.offers_renewal_info():
            return known
        pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in cert.chain)
        try:
            if self.session is None:
                self.session = yield self._thread(self._new_session)
            window = yield self._thread(self.session.renewal_window, pem)
        except Exception as e:
            if self.running and not isinstance(e, Cancelled):
                log.warn("renewal information for {host} could not be fetched: {problem}", host=host,
                         problem=describe(e))
            return known
        if window is None:
            return known
        start, end, retry_after = window
        chosen = known.chosen if known is not None and (known.start, known.end) == (start, end) \
            else pick_in_window(start, end, random.random())
        info = RenewalInfo(cert.chain[0].serial_number, start, end, chosen,
                           now + datetime.timedelta(seconds=retry_after))
        self.renewal[host] = info
        self.ari_next.pop(host, None)
        try:
            yield self._thread(self.storage.save_renewal_info, host, info)
        except Exception as e:
            log.warn("cannot keep the renewal information for {host}: {error}", host=host, error=str(e))
        return info

    def _next_check(self) -> float:
        """Seconds to the next check: check_interval (jittered), or sooner for a certificate coming due,
        a renewal-information question whose Retry-After ends, or a retry after a failure."""
        now = datetime.datetime.now(datetime.timezone.utc)
        clock = self.reactor.seconds()
        due, ask = [], []
        for host in self.hosts:
            cert = self.current.get(host)
            if cert is None or host in self.backoff or host in self.waiting:
                continue  # ordered at once, or at its retry
            info = self._renewal(host, cert)
            due.append(due_at(cert.not_before, cert.not_after, info))
            if self.session is not None and not self.session.offers_renewal_info():
                continue
            not_before = now + datetime.timedelta(seconds=self.ari_next.get(host, clock) - clock)
            ask.append(max(info.ask_again, not_before) if info is not None else not_before)
        retries = [when - clock for _, when in self.backoff.values()] + [when - clock for when in self.waiting.values()]
        return next_check(now, self.acme.check_interval * random.uniform(0.9, 1.1), due, ask, retries)

    @inlineCallbacks
    def _obtain(self, host: str):
        """Order (or renew) ``host``'s certificate, holding its lock in the storage: another edge holding it
        is waited for; once held, the storage is read again (another edge may have finished), an order
        recorded before finalizing is finished, and only then is a new one placed."""
        try:
            held = yield self._thread(self.storage.try_lock, host, self.owner, self.cancel)
        except Cancelled:
            return
        except Exception as e:
            self._failed(host, e)
            return
        if not isinstance(held, HeldLock):
            if host not in self.waiting:
                log.info("another edge ({owner}) is ordering the certificate for {host}; waiting for it",
                         owner=held, host=host)
            self.waiting[host] = self.reactor.seconds() + LOCK_WAIT
            return
        self.waiting.pop(host, None)
        try:
            yield self._obtain_locked(host)
        finally:
            if held.lost and self.running:
                log.warn("the lock for {host} was lost while this edge held it (the storage was unreachable for "
                         "longer than its expiry): another edge may have ordered it too", host=host)
            run_in_daemon_thread(self.reactor, held.release).addErrback(lambda failure: None)

    @inlineCallbacks
    def _obtain_locked(self, host: str):
        try:
            loaded, recorded = yield self._thread(self._look_again, host)
        except Cancelled:
            return
        except Exception as e:
            self._failed(host, e)
            return
        if loaded.error is not None:  # nothing can be decided on a storage that cannot be read
            self._failed(host, OSError(f"cannot read the stored certificate: {loaded.error}"))
            return
        known = self.current.get(host)
        stored = loaded.cert
        now = datetime.datetime.now(datetime.timezone.utc)
        stored_is_due = None if stored is None else \
            due_at(stored.not_before, stored.not_after, self._renewal_of(host, loaded, stored)) <= now
        stored_is_new = stored is not None and (known is None or stored.chain[0] != known.chain[0])
        step = after_lock(stored_is_due, stored_is_new, recorded is not None)
        if step is Next.ADOPT:
            self._apply(host, loaded)
            self.backoff.pop(host, None)
            if recorded is not None:  # superseded by the certificate another edge stored
                yield self._thread(self.storage.forget_order, host)
            return
        if loaded.problem is not None:
            self._apply(host, loaded)  # logged, moved aside: ordered again below
        if step is Next.FINISH:
            log.info("finishing the order for {host} kept before it was finalized ({url}): the CA may have issued "
                     "its certificate already", host=host, url=recorded.url)
        else:
            log.info("{what} a certificate for {host} from {directory} ({challenge})",
                     what="renewing" if host in self.current else "ordering", host=host,
                     directory=self.acme.directory, challenge=", ".join(sorted(
                         {c for _, c in self.identifiers.get(host, [(host, self.acme.challenge)])})))
        try:
            if self.session is None:
                self.session = yield self._thread(self._new_session)
            chain, key = yield self._thread(self._order, host, self.identifiers.get(host, host), recorded)
            cert = yield self._thread(self._keep, host, chain, key)
        except Exception as e:  # the CA said no, or could not be reached
            self._failed(host, e)
            return
        self.current[host] = cert
        self.store.add(cert)
        self.backoff.pop(host, None)
        metrics.ACME_ORDERS.labels(host, "success").inc()
        if self.on_issued is not None:
            self.on_issued()
        log.info("certificate for {host} obtained from ACME, expires {expiry:%Y-%m-%d %H:%M} UTC; now serving it",
                 host=host, expiry=cert.not_after)

    def _failed(self, host: str, e: BaseException) -> None:
        """Log a failed order and back off (nothing if the edge is stopping)."""
        if not self.running or isinstance(e, Cancelled):
            log.info("the order for {host} was abandoned: the edge is stopping", host=host)
            return
        if not isinstance(e, (messages.Error, acme_errors.Error)):
            self.session = None  # unreachable: start afresh next time (directory, nonce, account)
        delay = min(MAX_BACKOFF, self.backoff[host][0] * 2) if host in self.backoff else self.acme.retry
        self.backoff[host] = (delay, self.reactor.seconds() + delay)
        metrics.ACME_ORDERS.labels(host, "failure").inc()
        log.error("ACME certificate for {host} failed: {problem}; retrying in {delay:g}s",
                  host=host, problem=describe(e), delay=delay)

    def _renewal_of(self, host: str, loaded: Loaded, cert: Certificate) -> RenewalInfo | None:
        info = loaded.renewal if loaded.renewal is not None else self.renewal.get(host)
        return info if info is not None and info.serial == cert.chain[0].serial_number else None

    # -- blocking steps, in ACME threads ----------------------------------------------------------------

    def _look_again(self, host: str) -> tuple[Loaded, RecordedOrder | None]:
        """With the lock held: what is stored now, and an order recorded before finalizing."""
        return self.storage.read(host), self.storage.recorded_order(host)

    def _new_session(self) -> AcmeSession:
        return AcmeSession(self.acme, self.storage.account_key(self.owner, self.cancel), self.cancel)

    def _order(self, host: str, identifiers: Any, recorded: RecordedOrder | None) -> tuple[bytes, Any]:
        """Finish the recorded order if the CA still has it; else place a new one, recorded before it is
        finalized (so a restart or a failed download finishes it instead of ordering again)."""
        session = self.session
        assert session is not None
        if recorded is not None:
            finished = session.finish(recorded.url, recorded.key_pem, recorded.names)
            if finished is not None:
                return finished
            self.storage.forget_order(host)
            self._note(f"the recorded order for {host} cannot be finished at the CA; ordering anew")

        def keep(url: str, key_pem: bytes, names: list[str]) -> None:
            self.storage.record_order(host, url, key_pem, names)

        return session.obtain(identifiers, self._publish, self._withdraw, self.dns, keep=keep)

    def _keep(self, host: str, chain: bytes, key: Any) -> Certificate:
        """Store the new pair, then forget the order that it finished."""
        cert = self.storage.save(host, chain, key)
        self.storage.forget_order(host)
        return cert

    def _note(self, text: str) -> None:
        """A log line from the worker thread (DNS-01 progress)."""
        self.reactor.callFromThread(log.info, "{text}", text=text)

    def _thread(self, function: Any, *args: Any):
        """A blocking ACME step, in a thread that a stop does not wait for."""
        if self.cancel.is_set():
            raise Cancelled()
        return run_in_daemon_thread(self.reactor, function, *args)

    def _publish(self, kind: str, host: str, token: str, validation: str) -> None:
        """Called in the ACME thread: the answer goes to the shared storage (any edge the CA asks answers
        from it) and to this edge's responders, which are thread-safe, so this never waits for the reactor."""
        if self.cancel.is_set():
            raise Cancelled()
        self.storage.put_challenge(kind, host, token, validation)
        if kind == "http-01":
            self.responders.add_http01(host, token, validation)
        else:
            self.responders.add_tls_alpn01(host, validation)

    def _withdraw(self, kind: str, host: str, token: str) -> None:
        if kind == "http-01":
            self.responders.remove_http01(host, token)
        else:
            self.responders.remove_tls_alpn01(host)
        try:
            self.storage.delete_challenge(kind, host, token)
        except Exception as e:  # left behind: harmless (a token is never reused), removed by no one
            self._note(f"cannot remove the challenge answer for {host} from the storage: {e}")

    def _shared_answer(self, kind: str, host: str, token: str) -> Deferred:
        """A challenge answer another edge keeps in the storage (a responders' miss), read in a thread: the
        key authorization for HTTP-01, the validation certificate's TLS options for TLS-ALPN-01."""
        storage = self.storage

        def fetch() -> Any:
            value = storage.challenge(kind, host, token)
            if value is None or kind == "http-01":
                return value
            options = tls_alpn_certificate(host, value)
            options.getContext()
            return options

        return run_in_daemon_thread(self.reactor, fetch)
