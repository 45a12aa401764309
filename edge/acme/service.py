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
"""

from __future__ import annotations

import datetime
import random
import threading
from typing import Any

from acme import errors as acme_errors, messages
from cryptography.hazmat.primitives import serialization
from twisted.application.service import Service
from twisted.internet.defer import DeferredLock, inlineCallbacks
from twisted.logger import Logger

from edge import metrics
from edge.acme.dns01 import plan_certificates
from edge.acme.dns_solver import Dns01Solver
from edge.acme.issuer import AcmeSession, describe
from edge.acme.responders import ChallengeResponders
from edge.acme.storage import AcmeStorage, StoredPairError
from edge.acme.timing import RenewalInfo, due_at, next_check, pick_in_window
from edge.acme.threads import Cancelled, run_in_daemon_thread
from edge.certs.store import Certificate, CertificateStore
from edge.config import Config

log = Logger()

MAX_BACKOFF = 86400.0


def managed_hosts(config: Config, store: CertificateStore) -> list[str]:
    """Terminated host names that no static certificate covers; ``*.suffix`` too with [acme.dns] (DNS-01)."""
    return list(plan_certificates(config.routes, config.acme.challenge, config.acme.dns is not None, store.covered))


class AcmeService(Service):
    name = "acme"

    def __init__(self, config: Config, store: CertificateStore, responders: ChallengeResponders, reactor: Any,
                 orders: bool = True, on_issued: Any = None) -> None:
        self.orders = orders  # False in workers other than the first: they only load what it stored
        self.on_issued = on_issued
        self.config = config
        self.acme = config.acme
        self.store = store
        self.responders = responders
        self.reactor = reactor
        self.storage = AcmeStorage(config.state_dir, self.acme.directory)
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

    def _plan(self, config: Config, store: CertificateStore) -> None:
        """Which names each certificate covers and how each is proved (DNS-01 for wildcards)."""
        self.identifiers = plan_certificates(config.routes, self.acme.challenge, self.acme.dns is not None,
                                             store.covered)  # certificate name -> [(name, challenge)]
        self.dns = None if self.acme.dns is None else Dns01Solver(
            self.acme.dns, self.storage.dir / "dns-pending.json", self._note, self.cancel)

    def startService(self) -> None:
        super().startService()
        self.cancel.clear()
        now = datetime.datetime.now(datetime.timezone.utc)
        for host in self.hosts:
            cert = self._refresh(host)
            if cert is not None:
                log.info("certificate for {host}: ACME, expires {expiry:%Y-%m-%d} ({days:.0f} days)",
                         host=host, expiry=cert.not_after, days=(cert.not_after - now).total_seconds() / 86400)
            else:
                fallback = "the local CA" if self.store.fallback is not None else "nothing (TLS alert)"
                if not self.orders:
                    continue
                log.info("certificate for {host}: none yet from ACME; serving {fallback} until it arrives",
                         host=host, fallback=fallback)
        if self.orders:
            self._schedule(0)

    def _refresh(self, host: str) -> Certificate | None:
        """Read ``host``'s stored pair again and serve it if it is new.  A pair unfit to serve is logged
        with its file, moved aside and forgotten (so the host is ordered again); one that vanished is
        forgotten too, while the copy in memory goes on being served until the new one arrives."""
        try:
            cert = self.storage.load(host)
        except StoredPairError as e:
            try:
                moved = ", ".join(path.name for path in self.storage.quarantine(host))
            except OSError as error:
                moved = f"(could not move it aside: {error.strerror or error})"
            log.error("stored ACME certificate for {host} is unusable: {path}: {reason}; moved aside as {moved}; "
                      "{what}", host=host, path=str(e.path), reason=e.reason, moved=moved,
                      what="ordering a new one" if self.orders else "the ordering worker orders a new one")
            self.current.pop(host, None)
            return None
        except OSError as e:
            log.error("stored ACME certificate for {host} cannot be read: {error}", host=host, error=str(e))
            self.current.pop(host, None)
            return None
        if cert is None:
            if self.current.pop(host, None) is not None:
                log.warn("stored ACME certificate for {host} is gone from {path}; ordering a new one",
                         host=host, path=str(self.storage.paths(host)[0]))
            return None
        known = self.current.get(host)
        if known is None or known.chain[0] != cert.chain[0]:
            self.current[host] = cert
            self.store.add(cert)
        return self.current[host]

    def reconfigure(self, config: Config, store: CertificateStore) -> None:
        """A reload: take the new config and the new runtime's certificate store, keeping what is under way.

        One ACME service lives across reloads, so an order in progress is not started a second time by a
        successor (two TLS-ALPN-01 validations for one host fail each other) and the back-off is kept.
        The managed hosts are worked out again; the certificates held are put in the new store; a
        changed ACME server or account starts a new session (and storage, for another server)."""
        old = self.acme
        self.config, self.acme, self.store = config, config.acme, store
        if (old.directory, config.state_dir) != (config.acme.directory, self.storage.state_dir):
            self.storage = AcmeStorage(config.state_dir, config.acme.directory)
            self.current.clear()
            self.session = None
        elif (old.email, old.ca_bundle, old.eab_kid, old.eab_hmac_key) != \
                (config.acme.email, config.acme.ca_bundle, config.acme.eab_kid, config.acme.eab_hmac_key):
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
        for host in self.hosts:
            self._refresh(host)  # another worker may have written new ones
        if self.running and self.orders and not self.lock.locked:
            self._schedule(0)  # new hosts need not wait for the next check
        elif self.running and self.orders:
            self.recheck = True  # the round under way is followed by another at once

    def stopService(self):
        """Stop at once: an order in progress is cancelled, and nothing waits for its thread."""
        super().stopService()
        self.cancel.set()
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
                    self._refresh(host)
                    if self.backoff.get(host, (0, 0))[1] > self.reactor.seconds():
                        continue
                    needed = yield self._needs(host)
                    if needed:
                        yield self._obtain(host)
                except Exception:
                    log.failure("ACME check of {host} failed", host=host)
        finally:
            self.lock.release()
            if self.running:
                self._schedule(0 if self.recheck else self._next_check())
                self.recheck = False

    def _renewal(self, host: str, cert: Certificate) -> RenewalInfo | None:
        """The CA's renewal information for the certificate ``host`` has now (kept in the state)."""
        info = self.renewal.get(host)
        if info is None or info.serial != cert.chain[0].serial_number:
            info = self.storage.renewal_info(host)
            if info is not None and info.serial != cert.chain[0].serial_number:
                info = None
            self.renewal[host] = info
        return info

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
                self.session = yield self._thread(AcmeSession, self.acme, self.storage.account_key(), self.cancel)
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
            self.storage.save_renewal_info(host, info)
        except OSError as e:
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
            if cert is None or host in self.backoff:
                continue  # ordered at once, or at its retry
            info = self._renewal(host, cert)
            due.append(due_at(cert.not_before, cert.not_after, info))
            if self.session is not None and not self.session.offers_renewal_info():
                continue
            not_before = now + datetime.timedelta(seconds=self.ari_next.get(host, clock) - clock)
            ask.append(max(info.ask_again, not_before) if info is not None else not_before)
        retries = [when - clock for _, when in self.backoff.values()]
        return next_check(now, self.acme.check_interval * random.uniform(0.9, 1.1), due, ask, retries)

    @inlineCallbacks
    def _obtain(self, host: str):
        renewing = host in self.current
        log.info("{what} a certificate for {host} from {directory} ({challenge})",
                 what="renewing" if renewing else "ordering", host=host,
                 directory=self.acme.directory,
                 challenge=", ".join(sorted({c for _, c in self.identifiers.get(host, [(host, self.acme.challenge)])})))
        try:
            if self.session is None:
                account_key = self.storage.account_key()
                self.session = yield self._thread(AcmeSession, self.acme, account_key, self.cancel)
            chain, key = yield self._thread(self.session.obtain, self.identifiers.get(host, host), self._publish,
                                            self._withdraw, self.dns)
        except Exception as e:  # the CA said no, or could not be reached
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
            return
        cert = self.storage.save(host, chain, key)
        self.current[host] = cert
        self.store.add(cert)
        self.backoff.pop(host, None)
        metrics.ACME_ORDERS.labels(host, "success").inc()
        if self.on_issued is not None:
            self.on_issued()
        log.info("certificate for {host} obtained from ACME, expires {expiry:%Y-%m-%d %H:%M} UTC; now serving it",
                 host=host, expiry=cert.not_after)

    def _note(self, text: str) -> None:
        """A log line from the worker thread (DNS-01 progress)."""
        self.reactor.callFromThread(log.info, "{text}", text=text)

    def _thread(self, function: Any, *args: Any):
        """A blocking ACME step, in a thread that a stop does not wait for."""
        if self.cancel.is_set():
            raise Cancelled()
        return run_in_daemon_thread(self.reactor, function, *args)

    def _publish(self, kind: str, host: str, token: str, validation: str) -> None:
        """Called in the ACME thread: the responders are thread-safe, so this never waits for the reactor."""
        if self.cancel.is_set():
            raise Cancelled()
        if kind == "http-01":
            self.responders.add_http01(host, token, validation)
        else:
            self.responders.add_tls_alpn01(host, validation)

    def _withdraw(self, kind: str, host: str, token: str) -> None:
        if kind == "http-01":
            self.responders.remove_http01(host, token)
        else:
            self.responders.remove_tls_alpn01(host)
