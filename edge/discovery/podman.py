# -*- test-case-name: tests.e2e.test_discovery -*-
"""Podman's Docker-compatible API, watched for labelled containers (the Twisted shell of discovery).

It lists the running containers (``GET /containers/json``) at start, whenever the event stream
(``GET /events``, container events) says one started, stopped or went away, and every ``interval``
in case an event was missed; each time the list differs it calls ``on_change`` with it.  A lost or
refused socket is retried with back-off (1 s doubling to a minute) and the last list is kept, so the
routes it gave stay while podman restarts.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from edge.discovery.labels import Container, parse_container

log = Logger()

API = b"http://podman/v1.41"
EVENTS = {"start", "restart", "die", "stop", "kill", "remove", "pause", "unpause", "rename", "update"}
MAX_BACKOFF = 60.0


@implementer(IAgentEndpointFactory)
class _UnixSocket:
    def __init__(self, reactor: Any, path: str) -> None:
        self.reactor, self.path = reactor, path

    def endpointForURI(self, uri: Any) -> UNIXClientEndpoint:
        return UNIXClientEndpoint(self.reactor, self.path, timeout=5)


class _EventLines(LineOnlyReceiver):
    """The event stream: one JSON object per line."""

    delimiter = b"\n"
    MAX_LENGTH = 1 << 20

    def __init__(self, on_event: Callable[[dict], None], on_end: Callable[[str], None]) -> None:
        self.on_event, self.on_end = on_event, on_end

    def lineReceived(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            return
        if isinstance(event, dict):
            self.on_event(event)

    @property
    def producer(self) -> IPushProducer:
        """What ``Response.deliverBody`` connected this protocol to: a push producer, not a transport."""
        return IPushProducer(self.transport)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.producer.stopProducing()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.on_end(reason.getErrorMessage() if reason is not None else "closed")


def signature(containers: list[Container]) -> tuple:
    return tuple(sorted((c.id, c.name, tuple(sorted(c.labels.items())), c.ports, c.addresses) for c in containers))


class PodmanDiscovery(Service):
    name = "discovery"

    def __init__(self, reactor: Any, socket_path: str, interval: float,
                 on_change: Callable[[list[Container]], None]) -> None:
        self.reactor = reactor
        self.socket_path = socket_path
        self.interval = interval
        self.on_change = on_change
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.agent = Agent.usingEndpointFactory(reactor, _UnixSocket(reactor, socket_path), pool=self.pool)
        self.known: tuple | None = None
        self.stream: IPushProducer | None = None  # the event stream's producer, while open
        self.backoff = 0.0
        self.retry: Any = None
        self.soon: Any = None
        self.poller: LoopingCall | None = None
        self.lost = False

    def startService(self) -> None:
        super().startService()
        self.poller = LoopingCall(self.refresh)
        self.poller.clock = self.reactor
        self.poller.start(self.interval, now=False)
        self._connect()

    def stopService(self):
        super().stopService()
        for call in (self.retry, self.soon):
            if call is not None and call.active():
                call.cancel()
        if self.poller is not None and self.poller.running:
            self.poller.stop()
        if self.stream is not None:
            self.stream.stopProducing()
            self.stream = None
        return self.pool.closeCachedConnections()

    def _connect(self) -> None:
        """Open the event stream, then list (so nothing that starts in between is missed)."""
        self.retry = None
        query = urllib.parse.quote(json.dumps({"type": ["container"]}))
        d = self.agent.request(b"GET", API + b"/events?filters=" + query.encode())

        def streaming(response: Any) -> None:
            if response.code != 200:
                raise RuntimeError(f"GET /events answered {response.code}")
            lines = _EventLines(self._event, self._stream_ended)
            response.deliverBody(lines)
            self.stream = lines.producer
            self.refresh()

        d.addCallback(streaming)
        d.addErrback(lambda failure: self._lost(failure.getErrorMessage()))

    def _event(self, event: dict) -> None:
        if event.get("Type", "container") == "container" and event.get("Action", event.get("status")) in EVENTS:
            if self.soon is None or not self.soon.active():  # a burst of events, one list
                self.soon = self.reactor.callLater(0.1, self.refresh)

    def _stream_ended(self, why: str) -> None:
        self.stream = None
        if self.running:
            self._lost(f"event stream ended ({why})")

    def _lost(self, why: str) -> None:
        if not self.running or (self.retry is not None and self.retry.active()):
            return
        self.backoff = min(MAX_BACKOFF, self.backoff * 2) if self.backoff else 1.0
        if not self.lost:
            self.lost = True
            log.warn("podman API at {socket}: {why}; retrying in {delay:g}s, keeping the routes it gave",
                     socket=self.socket_path, why=why, delay=self.backoff)
        self.retry = self.reactor.callLater(self.backoff, self._connect)

    def refresh(self) -> Any:
        """List the running containers; tell ``on_change`` if the list differs."""
        d = self.agent.request(b"GET", API + b"/containers/json")

        def listed(response: Any) -> Any:
            if response.code != 200:
                raise RuntimeError(f"GET /containers/json answered {response.code}")
            return readBody(response)

        def parsed(body: bytes) -> None:
            containers = [parse_container(item) for item in json.loads(body) if isinstance(item, dict)]
            if self.lost:
                self.lost = False
                log.info("podman API at {socket}: connected again", socket=self.socket_path)
            self.backoff = 0.0
            current = signature(containers)
            if current != self.known:
                self.known = current
                self.on_change(containers)

        d.addCallback(listed)
        d.addCallback(parsed)
        d.addErrback(lambda failure: self._lost(failure.getErrorMessage()))
        return d
