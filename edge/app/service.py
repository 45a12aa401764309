# -*- test-case-name: tests.e2e.test_observability, tests.e2e.test_reload -*-
"""The edge's service tree: listeners, the live runtime, ACME; reload and drain.

``SIGHUP`` (or a changed file with ``[edge] watch = true``) re-reads the
config.  A valid one becomes a new runtime that new connections use, while
open connections keep the runtime they started with; listeners whose
address is unchanged keep their sockets, new ones are bound, removed ones
stop accepting.  An invalid one is logged and changes nothing.  On stop,
listeners close first and open connections get ``timeouts.drain`` to finish.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import signal
from typing import Any, Generator

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger, LogLevel

from edge.acme.responders import ChallengeResponders
from edge.acme.service import AcmeService
from edge.app.admin import admin_site, note_reload
from edge.tls.files import CertificateFileError, load_directory
from edge.ops import access_log as connection
from edge.config import Config, ConfigError, load, parse
from edge.discovery.labels import Container, merge
from edge.discovery.podman import PodmanDiscovery
from edge.app.dispatch import DispatchFactory
from edge.app.handlers import Handlers
from edge.net.event_loop import lighten, settle_memory
from edge.tcp.health import HealthService
from edge.net.listeners import ListenerService
from edge.app.runtime import MissingCertificate, Runtime
from edge.ops.workers import WorkerSupervisor

log = Logger()


class StartupError(Exception):
    """Start-up (or a reload) cannot go on; the message is one line for the operator."""


def build_runtime(config: Config, reactor: Any, responders: ChallengeResponders,
                  previous: Runtime | None = None) -> Runtime:
    try:
        return Runtime(config, reactor, responders=responders, previous=previous)
    except MissingCertificate as e:
        raise StartupError(f"{config.path}: {e}") from None
    except CertificateFileError as e:
        raise StartupError(f"{config.path}: edge.certs_dir: {e}") from None
    except OSError as e:
        raise StartupError(f"{config.path}: edge.state_dir: {e.strerror or e}: {e.filename}") from None


def check_config(config_path: str, reactor: Any = None) -> str:
    """``twist edge --check``: what start-up checks (the config, certificate files and their keys, a
    certificate for every terminated host), with nothing bound; a one-line summary, or StartupError."""
    if reactor is None:
        from twisted.internet import reactor  # noqa: F811
    try:
        config = load(config_path)
    except ConfigError as e:
        raise StartupError(str(e)) from None
    runtime = build_runtime(config, reactor, ChallengeResponders())
    for upstream in runtime.upstreams.values():
        upstream.close()
    files = len(load_directory(config.certs_dir)) if config.certs_dir else 0
    issued = " (the local CA issues the rest)" if config.issuer == "local" else \
        " (ACME issues the rest)" if config.acme is not None else ""
    return (f"{config.path}: OK, {len(config.routes)} routes, {len(config.backends)} backends, "
            f"{files} certificate file{'s' if files != 1 else ''}{issued}")


def _acme_hosts(config: Config) -> tuple:
    return tuple(sorted({h for route in config.routes if route.terminated for h in route.hosts}))


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class EdgeService(MultiService):
    """The running edge: its live runtime and one listener per address."""

    def __init__(self, config: Config, reactor: Any, worker: int = 0) -> None:
        super().__init__()
        self.reactor = reactor
        self.worker = worker  # 0: the first (or only) process; others are started by it
        connection.WORKER[0] = worker
        self.reuse_port = config.workers > 1
        self.config_path = config.path
        self.responders = ChallengeResponders()
        self.connections: set = set()  # every client connection, across reloads, for draining
        self.file_config = config  # the file's own; discovered routes are added to it (_compose)
        self.discovered: list[Container] = []
        self.discovery: PodmanDiscovery | None = None
        self.discovery_routes: set[str] = set()  # containers routed now
        self.discovery_noted: set[tuple[str, str]] = set()  # problems logged once
        self.runtime = build_runtime(config, reactor, self.responders)
        self.handlers = Handlers(self.runtime)  # what new connections are handed to: built with each runtime
        self.factories: dict[str, IProtocolFactory] = {
            door: DispatchFactory(lambda: self.handlers, door, self.connections) for door in ("ssh", "http", "https")}
        self.factories["admin"] = admin_site(lambda: self.runtime, lambda: [
            (door, str(address)) for door, address in self.listeners])
        if config.admin is not None and not _loopback(getattr(config.admin, "host", "localhost")) \
                and config.admin_auth is None and not config.admin_addresses.allow:
            log.warn("[admin] listen = {address}: the status page and /metrics have no login; anyone who can "
                     "reach that address can read them (127.0.0.1 keeps them local; [admin] allow or "
                     "basic_auth restrict them)", address=str(config.admin))
        self.listeners: dict[tuple[str, Any], ListenerService] = {}
        self.acme: AcmeService | None = None
        self.health: HealthService | None = None
        self.watcher: LoopingCall | None = None
        self.supervisor: WorkerSupervisor | None = None  # worker 0 of several: starts the others (below)
        self._mtime = self._config_mtime()
        self._bind_all(config)
        self._start_acme(config)
        self._start_health()
        self._start_discovery(config)
        if worker == 0 and config.workers > 1:
            self.supervisor = WorkerSupervisor(reactor, config.workers, config.timeouts.drain)
            self.supervisor.setServiceParent(self)

    @staticmethod
    def _wanted(config: Config) -> list[tuple[str, Any]]:
        wanted = [(door, address) for door in ("ssh", "http", "https") for address in getattr(config.listen, door)]
        wanted += [(door.name, address) for door in config.doors for address in door.listen]
        if config.admin is not None:
            wanted.append(("admin", config.admin))
        return wanted

    def _wanted_here(self, config: Config) -> list[tuple[str, Any]]:
        """The admin listener runs in worker 0 only."""
        return [key for key in self._wanted(config) if key[0] != "admin" or self.worker == 0]

    def _bind_new(self, config: Config) -> dict[tuple[str, Any], ListenerService]:
        """Bind every address of ``config`` not listened on yet; all or nothing: if one fails, the ones
        bound are closed and StartupError names the address."""
        new: dict[tuple[str, Any], ListenerService] = {}
        for key in self._wanted_here(config):
            if key in self.listeners:
                continue
            door, address = key
            if door not in self.factories:  # a [[doors]] name
                self.factories[door] = DispatchFactory(lambda: self.handlers, door, self.connections)
            try:
                new[key] = ListenerService(self.reactor, door, address, self.factories[door],
                                           reuse_port=self.reuse_port and door != "admin")
            except OSError as e:
                for listener in new.values():
                    listener.close_socket()
                name = "admin.listen" if door == "admin" else f"listen.{door}" if door in ("ssh", "http", "https") \
                    else f"doors.{door}.listen"
                hint = ""
                if e.errno == errno.EACCES and getattr(address, "port", 1024) < 1024:
                    hint = (" (ports below 1024 need root, the CAP_NET_BIND_SERVICE capability, a lower "
                            "net.ipv4.ip_unprivileged_port_start, or socket activation: see etc/edge.socket)")
                raise StartupError(f"{config.path}: {name}: cannot listen on {address}: {e.strerror or e}{hint}") \
                    from None
        return new

    def _use_listeners(self, config: Config, new: dict[tuple[str, Any], ListenerService]) -> None:
        """Stop listening where ``config`` no longer does; start the listeners bound for it."""
        wanted = set(self._wanted_here(config))
        for key, listener in list(self.listeners.items()):
            if key not in wanted:
                del self.listeners[key]
                listener.disownServiceParent()
                log.info("no longer listening for {door} on {address}", door=key[0], address=str(key[1]))
        for key, listener in new.items():
            self.listeners[key] = listener
            listener.setServiceParent(self)

    def _bind_all(self, config: Config) -> None:
        """Start-up: listen on every address of ``config`` (StartupError, nothing left bound, if one fails)."""
        self._use_listeners(config, self._bind_new(config))

    def _start_health(self) -> None:
        if self.health is not None:
            self.health.disownServiceParent()
        self.health = HealthService(self.runtime.backends, self.reactor, self.runtime.config.timeouts.connect)
        self.health.setServiceParent(self)

    def _start_acme(self, config: Config) -> None:
        """Start-up, and each reload: one ACME service lives across reloads (an order under way is not
        started twice, back-off is kept) and takes the new config; it stops only if [acme] is removed."""
        if self.acme is not None and config.acme is not None:
            self.acme.reconfigure(config, self.runtime.certificates)
            return
        if self.acme is not None:
            self.acme.disownServiceParent()
            self.acme = None
        if config.acme is not None:
            self.acme = AcmeService(config, self.runtime.certificates, self.responders, self.reactor,
                                    orders=self.worker == 0, on_issued=self._certificate_issued)
            self.acme.setServiceParent(self)

    def _start_discovery(self, config: Config) -> None:
        """Watch podman's API while ``[discovery]`` says so (a new watcher if its settings changed)."""
        wanted = config.discovery
        if self.discovery is not None and (wanted is None or (self.discovery.socket_path, self.discovery.interval)
                                           != (wanted.podman, wanted.interval)):
            self.discovery.disownServiceParent()
            self.discovery = None
        if wanted is not None and self.discovery is None:
            self.discovery = PodmanDiscovery(self.reactor, wanted.podman, wanted.interval, self._containers_changed)
            self.discovery.setServiceParent(self)

    def _compose(self, file_config: Config) -> Config:
        """``file_config`` plus the routes of labelled containers (the file wins every clash)."""
        if file_config.discovery is None or not any(c.labelled for c in self.discovered):
            self._note_discovery(set(), [])
            return file_config
        store = self.runtime.certificates

        def can_terminate(host: str) -> bool:
            return file_config.issuer == "local" or file_config.acme is not None or store.covered(host) is not None

        data, routed, problems = merge(file_config.raw, self.discovered, file_config.path, can_terminate)
        self._note_discovery(set(routed), problems)
        return parse(data, file_config.path)

    def _note_discovery(self, routed: set[str], problems: list) -> None:
        for name in sorted(routed - self.discovery_routes):
            log.info("route podman/{container} added from the labels of container {container}", container=name)
        for name in sorted(self.discovery_routes - routed):
            log.info("route podman/{container} removed: container {container} stopped or lost its labels",
                     container=name)
        self.discovery_routes = routed
        for problem in problems:
            if (problem.container, problem.text) not in self.discovery_noted:
                self.discovery_noted.add((problem.container, problem.text))
                log.warn("container {container}: {problem}", container=problem.container, problem=problem.text)

    def _containers_changed(self, containers: list[Container]) -> None:
        """podman's list changed: the same snapshot swap as a reload, from the file's last good config."""
        self.discovered = containers
        try:
            config = self._compose(self.file_config)
            runtime = build_runtime(config, self.reactor, self.responders, previous=self.runtime)
        except (ConfigError, StartupError) as e:
            log.error("routes from podman not applied, the running configuration stays: {error}", error=str(e))
            return
        self._swap(config, runtime)

    def _swap(self, config: Config, runtime: Runtime, reload: bool = False) -> None:
        """New connections use ``runtime``; open ones keep theirs.  ACME starts again on a reload (it
        re-reads its state) or when the terminated hosts changed."""
        previous, self.runtime = self.runtime, runtime
        self.handlers = Handlers(runtime)
        previous.retire(runtime)  # requests in flight finish on their old connections
        settle_memory()
        if reload or _acme_hosts(previous.config) != _acme_hosts(config) or previous.config.acme != config.acme:
            self._start_acme(config)
        self._start_health()

    def _certificate_issued(self) -> None:
        """Other workers read new certificates from state_dir on reload."""
        if self.supervisor is not None:
            self.supervisor.signal(signal.SIGHUP)

    def startService(self) -> None:
        super().startService()
        signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload))
        self._watch(self.runtime.config.watch)

    def _watch(self, enabled: bool) -> None:
        """Poll the config file's modification time while ``[edge] watch`` is on."""
        if enabled and self.watcher is None:
            self.watcher = LoopingCall(self._check_file)
            self.watcher.clock = self.reactor
            self.watcher.start(1.0, now=False)
        elif not enabled and self.watcher is not None:
            if self.watcher.running:
                self.watcher.stop()
            self.watcher = None

    def _config_mtime(self) -> tuple:
        """What ``[edge] watch`` compares: the config file's modification time, and the names, times and
        sizes of the certificate files in ``certs_dir`` (a certbot renewal replaces them)."""
        try:
            config = os.stat(self.config_path).st_mtime
        except OSError:
            config = None
        certs_dir = self.runtime.config.certs_dir if getattr(self, "runtime", None) is not None else None
        files: list[tuple[str, float, int]] = []
        if certs_dir:
            try:
                with os.scandir(certs_dir) as entries:
                    for entry in entries:
                        if entry.name.endswith((".pem", ".crt", ".key")):
                            stat = entry.stat()
                            files.append((entry.name, stat.st_mtime, stat.st_size))
            except OSError:
                pass
        return config, tuple(sorted(files))

    def _check_file(self) -> None:
        state = self._config_mtime()
        if state != self._mtime:
            what = (self.config_path if state[0] != self._mtime[0]
                    else f"a certificate file in {self.runtime.config.certs_dir}")
            self._mtime = state
            log.info("{what} changed", what=what)
            self.reload()

    def reload(self) -> bool:
        """Re-read the config; apply it if valid, else log why and keep the old one."""
        new: dict[tuple[str, Any], ListenerService] = {}
        try:
            file_config = load(self.config_path)
            new = self._bind_new(file_config)  # first: a door that cannot be bound changes nothing
            config = self._compose(file_config)
            runtime = build_runtime(config, self.reactor, self.responders, previous=self.runtime)
        except (ConfigError, StartupError) as e:
            for listener in new.values():
                listener.close_socket()
            log.error("reload refused, the running configuration stays: {error}", error=str(e))
            note_reload(f"refused: {e}")
            return False
        self.file_config = file_config
        self._swap(config, runtime, reload=True)
        if self.supervisor is not None:
            self.supervisor.signal(signal.SIGHUP)
        self._use_listeners(config, new)
        self._start_discovery(config)
        self._mtime = self._config_mtime()
        if self.running:
            self._watch(config.watch)
        note_reload("applied")
        log.info("reloaded {path}: {routes} routes, {backends} backends",
                 path=config.path, routes=len(config.routes), backends=len(config.backends))
        return True

    @inlineCallbacks
    def stopService(self) -> Generator[Deferred[object], object, None]:
        """Stop accepting, give open connections ``timeouts.drain``, then close the rest."""
        if self.watcher is not None and self.watcher.running:
            self.watcher.stop()
        yield super().stopService()
        drain = self.runtime.config.timeouts.drain
        waited = 0.0
        if self.connections:
            log.info("draining {count} open connections (up to {drain:g}s)", count=len(self.connections), drain=drain)
        while self.connections and waited < drain:
            yield deferLater(self.reactor, 0.1, lambda: None)
            waited += 0.1
        for client in list(self.connections):
            client.shut_down()
        if waited:
            log.info("drained after {waited:.1f}s", waited=waited)


def raise_descriptor_limit() -> None:
    """Use the hard limit on open files: every forwarded connection needs two sockets and two pipes."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def make_service(config_path: str, reactor: Any = None, worker: int = 0,
                 log_level: LogLevel = LogLevel.info) -> EdgeService:
    """Load ``config_path`` and bind its listeners; raise :class:`StartupError`.

    ``log_level`` is the lowest level ``twist`` records (``--log-level``).
    """
    raise_descriptor_limit()
    connection.set_access_log(log_level)
    if reactor is None:
        from twisted.internet import reactor  # noqa: F811
    lighten(reactor)
    try:
        config = load(config_path)
    except ConfigError as e:
        raise StartupError(str(e)) from None
    service = EdgeService(config, reactor, worker)
    settle_memory()
    return service
