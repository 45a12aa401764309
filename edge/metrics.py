"""Prometheus metrics: counters fed by the access log's events, gauges read at scrape time.

One registry per process.  Connection and request counters are updated
where the access-log line is written (once per connection or request, not
per byte); backend health, open connections and certificate expiry are
read from the live runtime when ``/metrics`` is scraped.
"""

from __future__ import annotations

from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

REGISTRY = CollectorRegistry(auto_describe=True)

CONNECTIONS = Counter("edge_connections", "Client connections by door, protocol, route, backend and outcome",
                      ["listener", "protocol", "route", "backend", "outcome"], registry=REGISTRY)
CONNECTION_BYTES = Counter("edge_connection_bytes", "Bytes relayed, by door and direction",
                           ["listener", "direction"], registry=REGISTRY)
CONNECTION_SECONDS = Histogram("edge_connection_duration_seconds", "How long client connections lasted",
                               ["listener", "protocol"], registry=REGISTRY,
                               buckets=(0.01, 0.1, 1, 10, 60, 600, 3600, 86400))
REQUESTS = Counter("edge_http_requests", "HTTP requests on terminated routes, by route, backend, server and status",
                   ["route", "backend", "server", "status"], registry=REGISTRY)
REQUEST_SECONDS = Histogram("edge_http_request_duration_seconds", "Time from request head to response end",
                            ["route"], registry=REGISTRY)
UPSTREAM_SECONDS = Histogram("edge_http_upstream_duration_seconds", "Time until the backend's response headers",
                             ["backend"], registry=REGISTRY)
ACME_ORDERS = Counter("edge_acme_orders", "ACME orders by host and result", ["host", "result"], registry=REGISTRY)


def outcome(ended: str | None) -> str:
    """The kind of ending: closed, timeout, refused or error."""
    if not ended:
        return "closed"
    head = ended.split(":", 1)[0].split(" ", 1)[0]
    return head if head in ("timeout", "refused", "error") else "closed"


_CONNECTION_CHILDREN: dict[tuple, tuple[Any, Any, Any, Any]] = {}


def connection_finished(info: Any, duration: float) -> None:
    key = (info.listener, info.protocol, info.route, info.backend, outcome(info.ended))
    children = _CONNECTION_CHILDREN.get(key)
    if children is None:  # labels() takes a lock and validates: once per combination, not per connection
        if len(_CONNECTION_CHILDREN) > 10_000:
            _CONNECTION_CHILDREN.clear()
        listener, protocol = info.listener, info.protocol or "none"
        children = _CONNECTION_CHILDREN[key] = (
            CONNECTIONS.labels(listener, protocol, info.route or "", info.backend or "", key[4]),
            CONNECTION_BYTES.labels(listener, "in"), CONNECTION_BYTES.labels(listener, "out"),
            CONNECTION_SECONDS.labels(listener, protocol))
    connections, bytes_in, bytes_out, seconds = children
    connections.inc()
    if info.bytes_in:
        bytes_in.inc(info.bytes_in)
    if info.bytes_out:
        bytes_out.inc(info.bytes_out)
    seconds.observe(duration)


_REQUEST_CHILDREN: dict[tuple, tuple[Any, Any, Any]] = {}


def request_finished(route: str | None, backend: str | None, server: str | None, status: int,
                     duration: float, upstream: float | None) -> None:
    key = (route, backend, server, status)
    children = _REQUEST_CHILDREN.get(key)
    if children is None:  # labels() takes a lock and validates: once per combination, not per request
        if len(_REQUEST_CHILDREN) > 10_000:
            _REQUEST_CHILDREN.clear()
        children = _REQUEST_CHILDREN[key] = (
            REQUESTS.labels(route or "", backend or "", server or "", str(status)),
            REQUEST_SECONDS.labels(route or ""), UPSTREAM_SECONDS.labels(backend) if backend else None)
    requests, seconds, upstream_seconds = children
    requests.inc()
    seconds.observe(duration)
    if upstream is not None and upstream_seconds is not None:
        upstream_seconds.observe(upstream)


class RuntimeCollector:
    """Gauges read from the live runtime at scrape time."""

    def __init__(self, runtime_source: Callable[[], Any]) -> None:
        self.runtime_source = runtime_source

    def collect(self):
        runtime = self.runtime_source()
        up = GaugeMetricFamily("edge_backend_server_up", "1 if the server may get new connections",
                               labels=["backend", "server"])
        active = GaugeMetricFamily("edge_backend_server_active", "Connections (TCP) or requests (HTTP) in flight",
                                   labels=["backend", "server"])
        now = runtime.reactor.seconds()
        for backend in runtime.backends.values():
            for state in backend.servers:
                healthy = state.checked_up and state.down_until <= now
                up.add_metric([backend.name, str(state)], 1.0 if healthy else 0.0)
                active.add_metric([backend.name, str(state)], float(state.active))
        expiry = GaugeMetricFamily("edge_certificate_expiry_timestamp_seconds", "When each certificate expires",
                                   labels=["names", "source"])
        for cert in runtime.certificates:
            expiry.add_metric([",".join(cert.names), cert.source], cert.not_after.timestamp())
        yield up
        yield active
        yield expiry


_collector: RuntimeCollector | None = None


def watch_runtime(runtime_source: Callable[[], Any]) -> None:
    """Register the scrape-time collector once per process."""
    global _collector
    if _collector is None:
        _collector = RuntimeCollector(runtime_source)
        REGISTRY.register(_collector)
