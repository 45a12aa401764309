# -*- test-case-name: tests.e2e.test_reload -*-
"""A config snapshot made live, as plain data: the route tables, backends and their pools, access rules
(guards, gates), forward_auth pools and certificates.

Built once per snapshot; a reload builds another (carrying over what did not
change: backends with their counters and pools, rate-limit tables) and new
connections use it, while open connections keep the one they started with.
Handlers read it; none calls back into it.  What a connection is handed to
is built in one place, :mod:`edge.app.handlers`.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from edge.config.access import AddressRule, Gates, Limiter, Rate
from edge.acme.responders import ChallengeResponders
from edge.tcp.backends import Backend
from edge.tls.files import load_directory
from edge.tls.local_ca import LocalIssuer
from edge.tls.store import CertificateStore
from edge.config import BackendConfig, Config, Server
from edge.config.model import Scheme
from edge.http.policy import Guard
from edge.config.routes import RouteTable
from edge.http.upstream import Upstream

log = Logger()


class MissingCertificate(Exception):
    """A terminated route's host has no certificate source; names the route."""


class Runtime:
    """One config snapshot, live: read by the dispatcher, the handlers and the admin page."""

    def __init__(self, config: Config, reactor: Any, certificates: CertificateStore | None = None,
                 responders: ChallengeResponders | None = None, previous: "Runtime | None" = None) -> None:
        self.config = config
        self.reactor = reactor
        self.acme_responders = responders if responders is not None else ChallengeResponders()
        self.routes = RouteTable(r for r in config.routes if "https" in r.doors)  # ports 443 and 80
        self.doors = {door.name: door for door in config.doors}
        self.door_routes = {door.name: RouteTable(r for r in config.routes if door.name in r.doors)
                            for door in config.doors if door.sni}
        # the runtime whose backends and pools carry over: the previous one, if its timeouts are the same
        kept = previous if previous is not None and previous.config.timeouts == config.timeouts else None
        self.backends: dict[str, Backend] = {}
        self.upstreams: dict[str, Upstream] = {}
        for name, backend_config in config.backends.items():
            # An unchanged backend keeps its counters, health and connection pool across a reload.
            old = kept.backends.get(name) if kept is not None else None
            if kept is not None and old is not None and old.config == backend_config:
                self.backends[name] = old
                if name in kept.upstreams:
                    self.upstreams[name] = kept.upstreams[name]
                continue
            backend = self.backends[name] = Backend(backend_config, reactor, config.timeouts.connect)
            if backend_config.servers[0].scheme == "https" and not backend_config.verify:
                log.warn("backend {backend}: verify = false, its TLS certificates are not checked", backend=name)
            if backend_config.kind == "http":
                self.upstreams[name] = Upstream(backend, reactor, config.timeouts.connect, config.timeouts.response)
        # Access rules: a Guard per guarded HTTP route, a connection limiter per TCP gate.  A limiter whose
        # rate is unchanged carries its table across a reload (else a reload would forgive every client).
        old_limiters = previous.limiters if previous is not None else {}
        self.limiters: dict[str, Limiter] = {}

        def limiter(key: str, rate: Rate | None) -> Limiter | None:
            if rate is None:
                return None
            old = old_limiters.get(key)
            self.limiters[key] = old if old is not None and old.rate == rate else Limiter(rate)
            return self.limiters[key]

        self.guards = {route.name: Guard(route, limiter(f"route:{route.name}", route.rate_limit))
                       for route in config.routes if route.terminated and route.guarded}
        # TCP gates: (allow/deny, connection limiter) of passthrough routes, the SSH door and [[doors]]; and
        # of routes whose port 80 is forwarded whole (http = "forward"): their allow/deny hold there too.
        gates: dict[str, tuple[AddressRule, Limiter | None]] = {
            f"route:{route.name}": (route.addresses, limiter(f"route:{route.name}", route.conn_limit))
            for route in config.routes if not route.terminated or route.http == "forward"}
        gates["ssh"] = (config.ssh_addresses, limiter("ssh", config.ssh_conn_limit))
        for door in config.doors:
            gates[f"door:{door.name}"] = (door.addresses, limiter(f"door:{door.name}", door.conn_limit))
        self.gates = Gates(gates)
        # forward_auth servers: a keep-alive pool each (kept across a reload, as backends' are).
        self.auth_upstreams: dict[tuple[str, int], Upstream] = {}
        for route in config.routes:
            auth = route.forward_auth
            if auth is None or (auth.host, auth.port) in self.auth_upstreams:
                continue
            key = (auth.host, auth.port)
            pool = kept.auth_upstreams.get(key) if kept is not None else None
            if pool is None:
                server = BackendConfig(f"forward_auth {auth.host}:{auth.port}",
                                       (Server(auth.host, auth.port, Scheme.HTTP),), fail_timeout=1.0)
                pool = Upstream(Backend(server, reactor, config.timeouts.connect), reactor, config.timeouts.connect,
                                auth.timeout)
            self.auth_upstreams[key] = pool
        self.https_port = next((a.port for a in config.listen.https if hasattr(a, "port")), 443)
        self.certificates = certificates if certificates is not None else self.load_certificates(config)

    def retire(self, successor: "Runtime") -> None:
        """``successor`` replaced this runtime: close the keep-alive pools it does not carry on."""
        kept = {id(upstream) for upstream in [*successor.upstreams.values(), *successor.auth_upstreams.values()]}
        for upstream in [*self.upstreams.values(), *self.auth_upstreams.values()]:
            if id(upstream) not in kept:
                upstream.close()

    @staticmethod
    def load_certificates(config: Config) -> CertificateStore:
        """Fill a store from certs_dir and the local issuer; check every terminated host is covered."""
        files = load_directory(config.certs_dir) if config.certs_dir else []
        issuer = LocalIssuer(config.state_dir) if config.issuer == "local" else None
        store = CertificateStore(files, fallback=issuer)
        for route in config.routes:
            if not route.terminated:
                continue
            for host in route.hosts:
                wildcard = host == "*" or host.startswith("*.")
                probe = "edge-probe." + host[2:] if host.startswith("*.") else host
                cert = store.covered(probe) or (store.default if host == "*" else None)
                if cert is not None:  # "*" is served the default (first) certificate, like HAProxy's first crt
                    log.info("{host} ({route}): certificate {where}, for {names}, expires {expires:%Y-%m-%d}",
                             host=host, route=route.name, where=cert.path or cert.source,
                             names=", ".join(cert.names[:4]) + (", ..." if len(cert.names) > 4 else ""),
                             expires=cert.not_after)
                    if host.startswith("*.") and store.covered("edge-probe.deeper." + host[2:]) is None:
                        log.warn("{host} ({route}) matches names at any depth below {suffix}, its certificate one "
                                 "level only: a.b.{suffix} gets {fallback}", host=host, route=route.name,
                                 suffix=host[2:], fallback="a certificate of the local CA" if issuer is not None
                                 else "an unrecognized_name alert" if config.acme is None else "one from ACME")
                    continue
                if issuer is not None:
                    log.info("{host} ({route}): certificate of the local CA, issued on first use",
                             host=host, route=route.name)
                elif config.acme is not None and not wildcard:
                    log.info("{host} ({route}): certificate from ACME", host=host, route=route.name)
                elif config.acme is not None and config.acme.dns is not None and host != "*":
                    log.info("{host} ({route}): wildcard certificate from ACME (DNS-01, {provider})",
                             host=host, route=route.name, provider=config.acme.dns.provider)
                    continue
                if config.acme is not None and wildcard:
                    raise MissingCertificate(
                        f"routes[{route.index}].hosts: {host!r} needs a static certificate in [edge] certs_dir "
                        + ("(no certificate covers every name)" if host == "*" else
                           "or a DNS provider in [acme.dns] (a wildcard certificate needs the dns-01 challenge)"))
                if config.acme is None and issuer is None:
                    raise MissingCertificate(
                        f"routes[{route.index}].hosts: no certificate for {host!r} "
                        f"(put one in [edge] certs_dir, set [tls] issuer = \"local\", or configure [acme])")
        return store
