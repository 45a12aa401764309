# -*- test-case-name: tests.e2e.test_observability, tests.e2e.test_accounting -*-
"""What the edge knows about one client connection, and its access-log line.

The dispatcher fills this in as it learns (real client address after a
PROXY header, SNI, route); the handler adds backend, server and byte
counts; when the connection ends one structured log event is emitted, so
``twist --log-format json`` gives one JSON object per connection.
"""

from __future__ import annotations

import socket
import time

from twisted.logger import Logger, LogLevel

from edge.ops import metrics
from edge.ops.outcomes import Ending

access_log = Logger(namespace="edge.access")
WORKER = [0]  # this process's worker number ([edge] workers), set at start-up
# False when this process records nothing at info level (``twist --log-level warn``): the events,
# one or two per connection, are then not built at all rather than built and dropped by the filter.
ACCESS_LOG = [True]


def set_access_log(level: LogLevel) -> None:
    """Build access-log events only if ``level`` (the lowest level logged) lets them through."""
    ACCESS_LOG[0] = level <= LogLevel.info




def _format_address(address: tuple[str, int] | None) -> str:
    if address is None:
        return "-"
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ConnectionInfo:
    __slots__ = (
        "client", "listener", "protocol", "sni", "alpn", "route", "tls_mode",
        "backend", "server", "bytes_in", "bytes_out", "started", "ended", "proxied", "logged", "spliced",
        "_local",
    )

    def __init__(self, client: tuple[str, int], sock: socket.socket, listener: str) -> None:
        """``sock`` is the client's socket, asked for the edge address only when a PROXY header needs it."""
        self.client = client  # the real client: replaced by a trusted PROXY header
        # the edge address, or until it is asked for the client's socket that knows it
        self._local: tuple[str, int] | socket.socket = sock
        self.listener = listener  # "ssh", "http" or "https"
        self.protocol: str | None = None  # "tls", "ssh", "http" once recognised
        self.sni: str | None = None
        self.alpn: tuple[str, ...] = ()
        self.route: str | None = None
        self.tls_mode: str | None = None
        self.backend: str | None = None
        self.server: str | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.started = time.monotonic()
        self.ended: Ending | None = None  # set by the dispatcher or the handler that owns the connection
        self.proxied = False
        self.logged = False
        self.spliced = False  # moved by os.splice in the kernel (edge.net.splice)

    @property
    def local(self) -> tuple[str, int]:
        """The edge address the client reached (after a trusted PROXY header: the one it names)."""
        local = self._local
        if isinstance(local, socket.socket):
            host, port = local.getsockname()[:2]
            local = self._local = (host, port)
        return local

    @local.setter
    def local(self, address: tuple[str, int]) -> None:
        self._local = address

    def finish(self, ended: Ending) -> None:
        """Emit the access-log event once, with how the connection ended."""
        if self.logged:
            return
        self.logged = True
        self.ended = ended
        duration = time.monotonic() - self.started
        metrics.connection_finished(self, duration)
        if not ACCESS_LOG[0]:
            return
        access_log.info(
            "{client_text} {listener} {protocol} sni={sni} route={route} backend={backend} "
            "server={server} in={bytes_in} out={bytes_out} {duration:.3f}s {ended}",
            kind="connection",
            client_text=_format_address(self.client),
            client=self.client[0],
            client_port=self.client[1],
            listener=self.listener,
            protocol=self.protocol or "-",
            sni=self.sni or "-",
            alpn=",".join(self.alpn) or None,
            route=self.route or "-",
            tls_mode=self.tls_mode,
            backend=self.backend or "-",
            server=self.server or "-",
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            duration=duration,
            ended=ended.text,
            proxied=self.proxied,
            spliced=self.spliced,
            worker=WORKER[0],
        )


def log_request(info: ConnectionInfo | None, method: str, host: str, path: str, status: int, sent: int,
                route: str | None, backend: str | None, server: str | None, upstream: float | None,
                duration: float, protocol: str, outcome: str = "completed", listener: str | None = None,
                client: str | None = None, count: bool = True, user: str | None = None) -> None:
    """One access-log event (and the request metrics) for one HTTP request: proxied, or answered by
    edge itself (port 80's redirects, the status page: ``count=False`` leaves the metrics alone).

    ``outcome`` says who ended it: ``completed``, ``answered`` (by edge itself), ``client_aborted``,
    ``client_closed``, ``backend_failed``, ``timeout``, ``body_too_large``, ...  ``user`` is who basic auth
    admitted (else ``-``).
    """
    if count:
        metrics.request_finished(route, backend, server, status, duration, upstream, protocol, outcome)
    if not ACCESS_LOG[0]:
        return
    access_log.info(
        "{client} {method} {host}{path} {status} {sent}B user={user} route={route} backend={backend} "
        "server={server} upstream={upstream_text} {duration:.3f}s {outcome}",
        kind="request",
        client=client or (info.client[0] if info else "-"),
        method=method,
        host=host,
        path=path,
        status=status,
        sent=sent,
        route=route or "-",
        backend=backend or "-",
        server=server or "-",
        upstream_time=upstream,
        upstream_text=f"{upstream:.3f}s" if upstream is not None else "-",
        duration=duration,
        protocol=protocol,
        outcome=outcome,
        user=user or "-",
        sni=info.sni if info else None,
        listener=listener or (info.listener if info else None),
        worker=WORKER[0],
    )
