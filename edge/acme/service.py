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

from twisted.application.service import Service
from twisted.internet.defer import DeferredLock, inlineCallbacks
from twisted.internet.threads import blockingCallFromThread, deferToThread
from twisted.logger import Logger

from edge import metrics
from edge.acme.dns01 import plan_certificates
from edge.acme.dns_solver import Dns01Solver
from edge.acme.issuer import AcmeSession, describe
from edge.acme.responders import ChallengeResponders
from edge.acme.storage import AcmeStorage
from edge.certs.store import Certificate, CertificateStore
from edge.config import Config

log = Logger()

MAX_BACKOFF = 86400.0


def managed_hosts(config: Config, store: CertificateStore) -> list[str]:
    """Terminated host names that no static certificate covers; ``*.suffix`` too with [acme.dns] (DNS-01)."""
    return list(plan_certificates(config.routes, config.acme.challenge, config.acme.dns is not None, store.covered))


def due(cert: Certificate | None, now: datetime.datetime) -> bool:
    if cert is None:
        return True
    lifetime = cert.not_after - cert.not_before
    return cert.not_after - now < lifetime / 3


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
        self.identifiers = plan_certificates(config.routes, self.acme.challenge, self.acme.dns is not None,
                                             store.covered)  # certificate name -> [(name, challenge)]
        self.stopping = threading.Event()  # ends a DNS-01 propagation wait: its records are removed next start
        self.dns = None if self.acme.dns is None else Dns01Solver(
            self.acme.dns, self.storage.dir / "dns-pending.json", self._note, self.stopping)
        self.swept = False
        self.current: dict[str, Certificate] = {}
        self.backoff: dict[str, tuple[float, float]] = {}  # host -> (delay, not before)
        self.session: AcmeSession | None = None
        self.lock = DeferredLock()
        self.timer: Any = None

    def startService(self) -> None:
        super().startService()
        now = datetime.datetime.now(datetime.timezone.utc)
        for host in self.hosts:
            cert = self.storage.load(host)
            if cert is not None:
                self.current[host] = cert
                self.store.add(cert)
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

    def stopService(self):
        super().stopService()
        self.stopping.set()
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
                yield deferToThread(self.dns.sweep)
            for host in list(self.hosts):
                if not self.running:
                    return
                if self.backoff.get(host, (0, 0))[1] > self.reactor.seconds():
                    continue
                needed = yield self._needs(host)
                if needed:
                    yield self._obtain(host)
        finally:
            self.lock.release()
            if self.running:
                interval = self.acme.check_interval * random.uniform(0.9, 1.1)
                retries = [when - self.reactor.seconds() for _, when in self.backoff.values()]
                self._schedule(min([interval] + retries))

    @inlineCallbacks
    def _needs(self, host: str):
        cert = self.current.get(host)
        now = datetime.datetime.now(datetime.timezone.utc)
        if due(cert, now):
            return True
        if self.session is not None:
            when = yield deferToThread(self.session.renewal_time, self.storage.chain_pem(host))
            if when is not None and when <= now:
                log.info("the CA asks for {host} to be renewed early", host=host)
                return True
        return False

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
                self.session = yield deferToThread(AcmeSession, self.acme, account_key)
            chain, key = yield deferToThread(self.session.obtain, self.identifiers.get(host, host), self._publish,
                                             self._withdraw, self.dns)
        except Exception as e:  # the CA said no, or could not be reached
            self.session = None  # start afresh next time: directory, nonce, account
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

    def _publish(self, kind: str, host: str, token: str, validation: str) -> None:
        if kind == "http-01":
            blockingCallFromThread(self.reactor, self.responders.add_http01, host, token, validation)
        else:
            blockingCallFromThread(self.reactor, self.responders.add_tls_alpn01, host, validation)

    def _withdraw(self, kind: str, host: str, token: str) -> None:
        if kind == "http-01":
            blockingCallFromThread(self.reactor, self.responders.remove_http01, host, token)
        else:
            blockingCallFromThread(self.reactor, self.responders.remove_tls_alpn01, host)
