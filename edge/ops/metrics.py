# -*- test-case-name: tests.e2e.test_observability -*-
"""Prometheus metrics: counters fed by the access log's events, gauges read at scrape time.

One registry per process.  Connection and request counts are updated where
the access-log line is written (once per connection or request, not per
byte); backend health, open connections and certificate expiry are read
from the live runtime when ``/metrics`` is scraped.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from bisect import bisect_left

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from edge.ops.outcomes import Ending

REGISTRY = CollectorRegistry(auto_describe=True)

ACME_ORDERS = Counter("edge_acme_orders", "ACME orders by host and result", ["host", "result"], registry=REGISTRY)

# Connection and request counts are kept in plain numbers, updated by the reactor thread only, and
# turned into metric families when /metrics is scraped: prometheus-client's own Counter and
# Histogram take a lock and validate on every update, which at thousands of requests a second
# was a measurable share of a request's cost.
CONNECTION_BUCKETS = (0.01, 0.1, 1, 10, 60, 600, 3600, 86400)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


class _Histogram:
    """One histogram's buckets (non-cumulative until scraped), count and sum."""

    __slots__ = ("bounds", "buckets", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.buckets[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        out, total = [], 0
        for bound, count in zip((*map(floatToGoString, self.bounds), "+Inf"), self.buckets):
            total += count
            out.append((bound, total))
        return out


_CONNECTIONS: dict[tuple, int] = {}  # (listener, protocol, route, backend, outcome) -> connections
_CONNECTION_BYTES: dict[tuple[str, str], int] = {}  # (listener, direction) -> bytes
_CONNECTION_SECONDS: dict[tuple[str, str], _Histogram] = {}  # (listener, protocol)
_REQUESTS: dict[tuple, int] = {}  # (route, backend, server, status, protocol, outcome) -> requests
_REQUEST_SECONDS: dict[str, _Histogram] = {}  # route
_UPSTREAM_SECONDS: dict[str, _Histogram] = {}  # backend


class FinishedConnection(Protocol):
    """What the connection metrics read of a finished connection (:class:`edge.ops.access_log.ConnectionInfo`)."""

    listener: str
    protocol: str | None
    route: str | None
    backend: str | None
    ended: Ending | None  # set before the metrics read it
    bytes_in: int
    bytes_out: int


def connection_finished(info: FinishedConnection, duration: float) -> None:
    listener, protocol = info.listener, info.protocol or "none"
    outcome = info.ended.outcome.value if info.ended is not None else "closed"
    key = (listener, protocol, info.route or "", info.backend or "", outcome)
    _CONNECTIONS[key] = _CONNECTIONS.get(key, 0) + 1
    if info.bytes_in:
        direction = (listener, "in")
        _CONNECTION_BYTES[direction] = _CONNECTION_BYTES.get(direction, 0) + info.bytes_in
    if info.bytes_out:
        direction = (listener, "out")
        _CONNECTION_BYTES[direction] = _CONNECTION_BYTES.get(direction, 0) + info.bytes_out
    histogram = _CONNECTION_SECONDS.get((listener, protocol))
    if histogram is None:
        histogram = _CONNECTION_SECONDS[(listener, protocol)] = _Histogram(CONNECTION_BUCKETS)
    histogram.observe(duration)


def request_finished(route: str | None, backend: str | None, server: str | None, status: int,
                     duration: float, upstream: float | None, protocol: str = "", outcome: str = "completed") -> None:
    key = (route or "", backend or "", server or "", status, protocol, outcome)
    _REQUESTS[key] = _REQUESTS.get(key, 0) + 1
    histogram = _REQUEST_SECONDS.get(route or "")
    if histogram is None:
        histogram = _REQUEST_SECONDS[route or ""] = _Histogram(REQUEST_BUCKETS)
    histogram.observe(duration)
    if upstream is not None and backend:
        histogram = _UPSTREAM_SECONDS.get(backend)
        if histogram is None:
            histogram = _UPSTREAM_SECONDS[backend] = _Histogram(REQUEST_BUCKETS)
        histogram.observe(upstream)


class TrafficCollector:
    """The connection and request counts as Prometheus metric families, made at scrape time."""

    def collect(self):
        connections = CounterMetricFamily("edge_connections", "Client connections by door, protocol, route, "
                                          "backend and outcome",
                                          labels=["listener", "protocol", "route", "backend", "outcome"])
        for labels, value in list(_CONNECTIONS.items()):
            connections.add_metric(list(labels), value)
        relayed = CounterMetricFamily("edge_connection_bytes", "Bytes relayed, by door and direction",
                                      labels=["listener", "direction"])
        for labels, value in list(_CONNECTION_BYTES.items()):
            relayed.add_metric(list(labels), value)
        requests = CounterMetricFamily(
            "edge_http_requests", "HTTP requests on terminated routes, by route, backend, server, status, protocol "
            "and outcome (who ended it)", labels=["route", "backend", "server", "status", "protocol", "outcome"])
        for (route, backend, server, status, protocol, outcome), value in list(_REQUESTS.items()):
            requests.add_metric([route, backend, server, str(status), protocol, outcome], value)
        yield connections
        yield relayed
        yield requests
        yield _histograms("edge_connection_duration_seconds", "How long client connections lasted",
                          ["listener", "protocol"], {k: v for k, v in _CONNECTION_SECONDS.items()})
        yield _histograms("edge_http_request_duration_seconds", "Time from request head to response end",
                          ["route"], {(k,): v for k, v in _REQUEST_SECONDS.items()})
        yield _histograms("edge_http_upstream_duration_seconds", "Time until the backend's response headers",
                          ["backend"], {(k,): v for k, v in _UPSTREAM_SECONDS.items()})


def _histograms(name: str, documentation: str, labels: list[str], series: dict) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for values, histogram in series.items():
        family.add_metric(list(values), histogram.cumulative(), histogram.sum)
    return family


REGISTRY.register(TrafficCollector())


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
