# -*- test-case-name: tests.e2e.test_observability -*-
"""The admin listener's status page: routes, backends, certificates at a glance.

Served by twisted.web on ``[admin] listen`` (loopback by default, off when
absent).  It reads the live runtime each time, so it shows what a reload
put in place.
"""

from __future__ import annotations

import collections
import datetime
import gc
import html
import json
import os
import time
import types
from typing import Any, Callable

from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.web.resource import ErrorPage, Resource
from twisted.web.server import Request, Site
from zope.interface import provider

from edge import __version__
from edge.ops import metrics
from edge.ops.access_log import log_request
from edge.http.policy import basic_credentials

STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:68rem;padding:0 1rem;color:#1d2733}
h1{font-size:1.5rem}h2{font-size:1.1rem;margin-top:2rem;border-bottom:1px solid #d5dbe3}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.3rem .6rem;border-bottom:1px solid #eef1f5}
.up{color:#17803d}.unchecked{color:#6b7280}.down{color:#b42318;font-weight:600}.soon{background:#fff4d6}code{font-size:.9em}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


RECENT_ERRORS: collections.deque = collections.deque(maxlen=20)
STARTED = [datetime.datetime.now(datetime.timezone.utc)]
LAST_RELOAD: list[tuple[datetime.datetime, str]] = []  # (when, "applied" or why it was refused)


def note_reload(outcome: str) -> None:
    """The service reloaded (``"applied"``) or refused to (the reason): shown on the status page."""
    LAST_RELOAD[:] = [(datetime.datetime.now(datetime.timezone.utc), outcome)]


@provider(ILogObserver)
def _remember_errors(event: dict) -> None:
    """Keep the last warnings and errors of edge's own loggers for the status page."""
    level = event.get("log_level")
    if level in (LogLevel.warn, LogLevel.error, LogLevel.critical) and \
            str(event.get("log_namespace", "")).startswith("edge"):
        RECENT_ERRORS.append((event.get("log_time", 0.0), level.name, formatEvent(event)))


class MetricsPage(Resource):
    isLeaf = True

    def render_GET(self, request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(metrics.REGISTRY)


class DebugObjects(Resource):
    """``/debug/objects`` (``[admin] debug = true``): live Python objects by type, descriptors, memory.

    For finding what connections leave behind: compare two readings taken
    after the same load (a full collection runs first, so only what is still
    referenced is counted).
    """

    isLeaf = True

    def __init__(self, runtime: Any) -> None:
        super().__init__()
        self.runtime = runtime

    def render_GET(self, request) -> bytes:
        from edge.net.timers import coarse

        gc.collect()
        objects = gc.get_objects()
        counts = collections.Counter(type(o).__qualname__ for o in objects)
        methods = collections.Counter(o.__func__.__qualname__ for o in objects if type(o) is types.MethodType)
        status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
        body = {
            "objects": dict(counts.most_common()),
            "bound_methods": dict(methods.most_common(50)),  # what pending callbacks (timers) point at
            "total": sum(counts.values()),
            "descriptors": len(os.listdir("/proc/self/fd")),
            "rss_kib": int(status.get("VmRSS", "0 kB").split()[0]),
            "coarse_deadlines": coarse(self.runtime.reactor).pending(),
            "coarse_slot_keys": len(coarse(self.runtime.reactor).keys),
        }
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(body).encode()


class StatusPage(Resource):

    def __init__(self, runtime_source: Callable[[], Any],
                 listeners_source: Callable[[], list[tuple[str, str]]] = lambda: []) -> None:
        super().__init__()
        self.runtime_source = runtime_source
        self.listeners_source = listeners_source  # (door, address) of every socket listened on

    def render_GET(self, request) -> bytes:
        runtime = self.runtime_source()
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        now = datetime.datetime.now(datetime.timezone.utc)
        rows = []
        for route in runtime.config.routes:
            port80 = "-" if "https" not in route.doors else \
                f"forward to {route.http_backend}" if route.http == "forward" else route.http
            rows.append(f"<tr><td>{_e(route.name)}</td><td>{_e(', '.join(route.hosts))}</td>"
                        f"<td>{_e(', '.join(route.paths))}</td>"
                        f"<td>{_e(route.tls)}</td><td>{_e(', '.join(route.doors))}</td><td>{_e(route.backend)}</td>"
                        f"<td>{_e(port80)}</td></tr>")
        servers = []
        seconds = runtime.reactor.seconds()
        for backend in runtime.backends.values():
            for state in backend.servers:
                if not state.checked_up:  # the active check says so
                    health = '<span class="down">down</span> (check failing)'
                elif state.down_until > seconds:  # connects failed (passive health)
                    health = '<span class="down">down</span> (connects failing)'
                elif backend.config.check is None:  # nothing says it is up: nothing looks until a client comes
                    health = '<span class="unchecked">not checked</span>'
                else:
                    health = '<span class="up">up</span>'
                servers.append(f"<tr><td>{_e(backend.name)}</td><td><code>{_e(state)}</code></td>"
                               f"<td>{health}</td><td>{state.active}</td><td>{_e(backend.config.balance)}</td></tr>")
        certs = []
        for cert in runtime.certificates:
            days = (cert.not_after - now).total_seconds() / 86400
            # The local CA issues on demand and again when needed: its certificates are never "expiring".
            soon = ' class="soon"' if cert.source != "local" \
                and cert.not_after - now < (cert.not_after - cert.not_before) / 3 else ""
            certs.append(f"<tr{soon}><td>{_e(', '.join(cert.names))}</td><td>{_e(cert.source)}</td>"
                         f"<td>{cert.not_after:%Y-%m-%d %H:%M} UTC</td><td>{days:.1f}</td></tr>")
        listeners = "".join(f"<tr><td>{_e(door)}</td><td><code>{_e(address)}</code></td></tr>"
                            for door, address in self.listeners_source())
        if LAST_RELOAD:
            when, outcome = LAST_RELOAD[0]
            reload = f"{when:%Y-%m-%d %H:%M:%S} UTC, {outcome}"
        else:
            reload = "none since start"
        errors = "".join(
            f"<tr><td>{datetime.datetime.fromtimestamp(when, datetime.timezone.utc):%H:%M:%S}</td>"
            f"<td>{_e(level)}</td><td>{_e(text)}</td></tr>" for when, level, text in reversed(RECENT_ERRORS))
        page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1"><title>edge status</title>
<style>{STYLE}</style></head><body><h1>edge</h1>
<p>edge {_e(__version__)}, up {_e(_since(STARTED[0], now))}; configuration <code>{_e(runtime.config.path)}</code>;
last reload: {_e(reload)}; page made {now:%Y-%m-%d %H:%M:%S} UTC.</p>
<h2>Listeners</h2><table><tr><th>door</th><th>address</th></tr>\
{listeners or '<tr><td colspan="2">none</td></tr>'}</table>
<h2>Routes</h2><table><tr><th>name</th><th>hosts</th><th>paths</th><th>TLS</th><th>doors</th><th>backend</th>\
<th>port 80</th></tr>{''.join(rows)}</table>
<h2>Backends</h2><table><tr><th>backend</th><th>server</th><th>health</th><th>connections</th><th>balance</th></tr>\
{''.join(servers)}</table>
<h2>Certificates</h2><table><tr><th>names</th><th>source</th><th>expires</th><th>days left</th></tr>\
{''.join(certs) or '<tr><td colspan="4">none issued yet</td></tr>'}</table>
<h2>Recent warnings and errors</h2><table><tr><th>time</th><th>level</th><th>message</th></tr>\
{errors or '<tr><td colspan="3">none</td></tr>'}</table>
</body></html>"""
        return page.encode("utf-8")


    def getChild(self, path: bytes, request) -> Resource:
        if path == b"metrics":
            return MetricsPage()
        if path == b"debug" and request.postpath == [b"objects"]:
            runtime = self.runtime_source()
            if runtime.config.admin_debug:
                return DebugObjects(runtime)
        if path == b"":
            return self
        return Resource.getChild(self, path, request)


def _since(start: datetime.datetime, now: datetime.datetime) -> str:
    seconds = int((now - start).total_seconds())
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    return (f"{days}d " if days else "") + f"{hours}h {seconds // 60}m"


class _Challenge(ErrorPage):
    """401 with the realm, for ``[admin] basic_auth``."""

    def __init__(self, realm: str) -> None:
        super().__init__(401, "Unauthorized", "this page needs a user name and password")
        self.realm = realm

    def render(self, request):
        request.setHeader(b"www-authenticate", f'Basic realm="{self.realm}"'.encode("ascii"))
        return super().render(request)


class _NoBody(Request):
    """The admin pages take no request body: one that announces a body (Content-Length, Transfer-Encoding)
    is answered 413 and closed when its head is in, before twisted.web would read and spool it (a review
    sent 300 MB, accepted whole, before the 401)."""

    def gotLength(self, length: int | None) -> None:
        if length or self.requestHeaders.hasHeader(b"transfer-encoding"):
            transport = self.channel.transport
            if transport is not None:  # None only once the connection is gone
                transport.write(b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                transport.loseConnection()
            address = getattr(self.getClientAddress(), "host", "-")
            log_request(None, self.method.decode("latin-1"), (self.getHeader(b"host") or b"-").decode("latin-1"),
                        self.uri.decode("latin-1"), 413, 0, None, None, None, None, 0.0,
                        self.clientproto.decode("latin-1"), "body_too_large", listener="admin", client=address,
                        count=False)
            return
        super().gotLength(length)


class StatusSite(Site):
    """twisted.web's Site, logging each request in edge's access-log shape (``kind = "request"``,
    ``listener = "admin"``) instead of the combined log format, and applying ``[admin] allow``, ``deny``
    and ``basic_auth`` of the current configuration (a reload changes them) before any page."""

    def __init__(self, resource: Resource, runtime_source: Callable[[], Any]) -> None:
        super().__init__(resource, requestFactory=_NoBody)
        self.runtime_source = runtime_source

    def getResourceFor(self, request):
        request.edge_started = time.monotonic()
        config = self.runtime_source().config
        address = getattr(request.getClientAddress(), "host", "")
        if not config.admin_addresses.permits(address):
            return ErrorPage(403, "Forbidden", "not from this address")
        if config.admin_auth is not None:
            credentials = basic_credentials(request.getHeader(b"authorization"))
            if credentials is None or not config.admin_auth.users.verify(*credentials):
                return _Challenge(config.admin_auth.realm)
        return super().getResourceFor(request)

    def log(self, request) -> None:
        started = getattr(request, "edge_started", None)
        duration = time.monotonic() - started if started is not None else 0.0
        host = (request.getHeader(b"host") or b"-").decode("latin-1")
        address = request.getClientAddress()
        log_request(None, request.method.decode("latin-1"), host, request.uri.decode("latin-1"), request.code,
                    request.sentLength, None, None, None, None, duration, request.clientproto.decode("latin-1"),
                    "answered", listener="admin", client=getattr(address, "host", "-"), count=False)


_OBSERVING = [False]


def admin_site(runtime_source: Callable[[], Any],
               listeners_source: Callable[[], list[tuple[str, str]]] = lambda: []) -> Site:
    metrics.watch_runtime(runtime_source)
    if not _OBSERVING[0]:
        _OBSERVING[0] = True
        globalLogPublisher.addObserver(_remember_errors)
    site = StatusSite(StatusPage(runtime_source, listeners_source), runtime_source)
    site.noisy = False
    site.displayTracebacks = False
    return site
