# -*- test-case-name: tests.e2e.test_passthrough, tests.e2e.test_ssh, tests.e2e.test_proxy_protocol -*-
"""The dispatcher: the protocol every listener starts a connection with.

It buffers a bounded prefix (at most 16 KiB, for at most
``timeouts.inspect``), reads an optional PROXY header from trusted sources,
asks the sniffers what the bytes are, picks a route, and then hands the
same transport over in-process to a handler (TCP forwarder, redirector,
later the TLS terminator) together with every byte it has buffered.  After
the hand-over it only relays transport events to the handler.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol as TypingProtocol

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from edge.acme.responders import ACME_TLS_ALPN, ChallengeResponders
from edge.config import Config, Door
from edge.config.access import Gates
from edge.ops.access_log import ConnectionInfo
from edge.ops.outcomes import CLIENT_CLOSED, Ending, Outcome
from edge.config.routes import HostEntry, RouteTable
from edge.sniff import NEED_MORE, NO_MATCH, Malformed
from edge.sniff.http import sniff_http
from edge.sniff.proxy import ProxyHeader, sniff_proxy
from edge.sniff.ssh import sniff_ssh
from edge.sniff.tls import ClientHello, sniff_tls
from edge.tls.terminate import UNRECOGNIZED_NAME_ALERT
from edge.net.timers import Deadline, coarse
from edge.net.transports import AcceptedTransport, under_tls



class DispatchSnapshot(TypingProtocol):
    """What the dispatcher reads of the config snapshot a connection starts with (``edge.app.runtime.Runtime``
    is one): data only."""

    # Read-only (properties), so a snapshot's own dicts satisfy the Mappings.
    @property
    def reactor(self) -> Any: ...
    @property
    def config(self) -> Config: ...
    @property
    def routes(self) -> RouteTable: ...
    @property
    def doors(self) -> Mapping[str, Door]: ...
    @property
    def door_routes(self) -> Mapping[str, RouteTable]: ...
    @property
    def acme_responders(self) -> ChallengeResponders: ...
    @property
    def gates(self) -> Gates: ...


class DispatchHandlers(TypingProtocol):
    """The hand-overs the dispatcher makes (``edge.app.handlers.Handlers`` builds them), and the snapshot
    they are built from."""

    @property
    def runtime(self) -> DispatchSnapshot: ...

    def forward(self, backend: str, info: ConnectionInfo) -> Protocol: ...

    def redirector(self, info: ConnectionInfo, hand_over: Callable[[Protocol, bytes], None]) -> Protocol: ...

    def tls_handler(self, entry: HostEntry, info: ConnectionInfo) -> Protocol | None: ...

    def acme_tls_handler(self, options: Any, info: ConnectionInfo) -> Protocol: ...


log = Logger()

MAX_PREFIX = 16384


@implementer(IHalfCloseableProtocol)
class Dispatcher(Protocol):
    transport: AcceptedTransport  # from makeConnection on
    factory: DispatchFactory

    def __init__(self, handlers: DispatchHandlers, listener: str) -> None:
        self.handlers = handlers
        self.runtime = runtime = handlers.runtime
        self.listener = listener  # "ssh", "http", "https" or a [[doors]] name
        door = runtime.doors.get(listener)
        self.sniffing = listener == "https" or (door is not None and door.sni)  # else the door says what comes
        self.handler: Protocol | None = None
        self.buffer = b""
        self.timer: Deadline | None = None
        self.proxy_pending = False
        self.looking_up = False  # a TLS-ALPN-01 answer is being looked up in the shared ACME storage

    def connectionMade(self) -> None:
        self.factory.connections.add(self)
        transport = self.transport
        client = transport.client  # the address accept() gave: (host, port), IPv6 with flow and scope
        self.info = info = ConnectionInfo((client[0], client[1]), transport.socket, self.listener)
        self.proxy_pending = self.runtime.config.listen.trusts(info.client[0])
        if not self.proxy_pending and not self._client_known():
            return
        if not self.proxy_pending and not self.sniffing:
            self._route_door()
            return
        self.timer = coarse(self.runtime.reactor).later(self.runtime.config.timeouts.inspect, self._inspect_timeout)

    def dataReceived(self, data: bytes) -> None:
        if self.handler is not None:
            self.handler.dataReceived(data)
            return
        if self.info.ended is not None:  # refused: closing, nothing more is looked at
            return
        self.buffer += data
        if self.looking_up:
            return
        try:
            self._decide()
        except Malformed as e:
            self._reject(Outcome.ERROR.because(str(e)))
            return
        if self.handler is None and len(self.buffer) >= MAX_PREFIX and self.transport.connected:
            self._reject(Outcome.ERROR.because("no protocol recognised in the first 16 KiB"))

    def _decide(self) -> None:
        if self.proxy_pending:
            header = sniff_proxy(self.buffer)
            if header is NEED_MORE:
                return
            self.proxy_pending = False
            if isinstance(header, ProxyHeader):
                self.buffer = self.buffer[header.length :]
                if header.source is not None and header.destination is not None:  # both, or neither (LOCAL)
                    self.info.client = header.source
                    self.info.local = header.destination
                    self.info.proxied = True
            if not self._client_known():
                return
            if not self.sniffing:
                self._route_door()
                return
        if self.buffer:
            if self.listener == "https":
                self._sniff_https()
            else:
                self._sniff_door()

    def _client_known(self) -> bool:
        """The real client address is known (a trusted PROXY header was read): refuse it here, before a
        byte goes anywhere, if [listen] deny or its [[doors]] entry's allow/deny or conn_limit says so."""
        client = self.info.client[0]
        why = None
        if self.runtime.config.listen.deny and not self.runtime.config.listen.deny.permits(client):
            why = Outcome.REFUSED.because("address denied")
        elif self.listener in self.runtime.doors:
            why = self._refused(f"door:{self.listener}", client)
        if why is None:
            return True
        self._reject(why)
        return False

    def _refused(self, gate: str, client: str) -> Ending | None:
        """Why ``client`` may not pass ``gate`` (a passthrough route's, the SSH door's, a door's); None if it may."""
        why = self.runtime.gates.refused(gate, client, self.runtime.reactor.seconds())
        return None if why is None else Outcome.REFUSED.because(why)

    def _route_door(self) -> None:
        """Ports 22 and 80, and doors without ``sni``, need no sniffing: their door says what comes."""
        if self.listener == "ssh":
            self._to_ssh()
        elif self.listener == "http":
            self.info.protocol = "http"
            self.hand_over(self.handlers.redirector(self.info, self.hand_over), self.buffer)
        else:
            self._to_door_backend()

    def _to_door_backend(self) -> None:
        """A ``[[doors]]`` connection for the door's own backend (no ``sni``, or nothing else matched)."""
        backend = self.runtime.doors[self.listener].backend
        if backend is None:
            self._reject(Outcome.REFUSED.because("no route for SNI") if self.info.protocol == "tls"
                         else Outcome.ERROR.because("not TLS"),
                         UNRECOGNIZED_NAME_ALERT if self.info.protocol == "tls" else b"")
            return
        self.info.route = self.info.route or self.listener
        self.info.protocol = self.info.protocol or "tcp"
        self.hand_over(self.handlers.forward(backend, self.info), self.buffer)

    def _sniff_door(self) -> None:
        """A door with ``sni = true``: TLS is routed by its server name among the routes listing the door."""
        hello = sniff_tls(self.buffer)
        if isinstance(hello, ClientHello):
            info = self.info
            info.protocol, info.sni, info.alpn = "tls", hello.sni, hello.alpn
            entry = self.runtime.door_routes[self.listener].lookup(hello.sni)
            route = entry.passthrough if entry is not None else None
            if route is None:
                self._to_door_backend()
                return
            info.route, info.tls_mode = route.name, route.tls
            why = self._refused(f"route:{route.name}", info.client[0])
            if why is not None:
                self._reject(why)
                return
            self.hand_over(self.handlers.forward(route.backend, info), self.buffer)
        elif hello is not NEED_MORE:
            self._to_door_backend()

    def _sniff_https(self) -> None:
        data = self.buffer
        hello = sniff_tls(data)
        if isinstance(hello, ClientHello):
            self._route_tls(hello)
            return
        if hello is NEED_MORE:
            return
        ssh, http = sniff_ssh(data), sniff_http(data)
        if ssh is True:
            self._to_ssh()
        elif http is True:
            self.info.protocol = "http"
            self.hand_over(self.handlers.redirector(self.info, self.hand_over), data)
        elif ssh is NO_MATCH and http is NO_MATCH:
            self._reject(Outcome.ERROR.because("not TLS, SSH or HTTP"))

    def _route_tls(self, hello: ClientHello) -> None:
        info = self.info
        info.protocol, info.sni, info.alpn = "tls", hello.sni, hello.alpn
        entry = self.runtime.routes.lookup(hello.sni)
        if entry is None:
            self._reject(Outcome.REFUSED.because("no SNI" if hello.sni is None else "no route for SNI"),
                         UNRECOGNIZED_NAME_ALERT)
            return
        route = entry.passthrough
        why = self._refused(f"route:{route.name}", info.client[0]) if route is not None else None
        if route is not None and why is not None:
            info.route, info.tls_mode = route.name, route.tls
            self._reject(why)
            return
        handler = self.handlers.tls_handler(entry, info)
        if handler is None and entry.passthrough is None and ACME_TLS_ALPN.decode() in info.alpn:
            lookup = self.runtime.acme_responders.shared_tls_alpn01(info.sni)
            if lookup is not None:  # another edge's TLS-ALPN-01 validation, answered from the shared storage
                self.looking_up = True
                lookup.addCallback(self._tls_alpn_answer)
                return
        if handler is None:
            self._reject(Outcome.REFUSED.because("no certificate for SNI"), UNRECOGNIZED_NAME_ALERT)
            return
        self.hand_over(handler, self.buffer)

    def _tls_alpn_answer(self, options) -> None:
        self.looking_up = False
        if self.handler is not None or self.info.ended is not None or not self.transport.connected:
            return
        if options is None:
            self._reject(Outcome.REFUSED.because("no certificate for SNI"), UNRECOGNIZED_NAME_ALERT)
            return
        self.hand_over(self.handlers.acme_tls_handler(options, self.info), self.buffer)

    def _to_ssh(self) -> None:
        self.info.protocol = "ssh"
        if self.runtime.config.ssh_backend is None:
            self._reject(Outcome.REFUSED.because("no [ssh] backend"))
            return
        why = self._refused("ssh", self.info.client[0])
        if why is not None:
            self._reject(why)
            return
        self.hand_over(self.handlers.forward(self.runtime.config.ssh_backend, self.info), self.buffer)

    def hand_over(self, handler: Protocol, data: bytes) -> None:
        """Give this transport, and the bytes read so far, to ``handler``."""
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.buffer = b""
        self.handler = handler
        under_tls(self.transport, handler)
        handler.makeConnection(self.transport)
        if data and self.transport.connected:
            handler.dataReceived(data)

    def _inspect_timeout(self) -> None:
        self.timer = None
        if self.handler is not None:
            return
        if self.proxy_pending and not self.sniffing and not self.buffer:
            self.proxy_pending = False  # a trusted source that sent no header
            if self._client_known():
                self._route_door()
        elif not self.buffer and self.listener == "https" and self.runtime.config.ssh_backend:
            self._to_ssh()  # SSH clients that wait for the server's banner
        elif not self.buffer and self.listener in self.runtime.doors and self.runtime.doors[self.listener].backend:
            self._to_door_backend()  # a client that waits for the server to speak first
        else:
            self._reject(Outcome.TIMEOUT.because("inspect" if self.buffer else "silent client"))

    def _reject(self, why: Ending, answer: bytes = b"") -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.info.ended = self.info.ended or why
        if answer:
            self.transport.write(answer)
        self.transport.loseConnection()

    def shut_down(self) -> None:
        """edge is stopping and the connection outlived the drain time: cut it."""
        self.info.ended = Outcome.CLOSED.because("shutdown")
        self.transport.abortConnection()

    def readConnectionLost(self) -> None:
        handler = self.handler
        if handler is None:
            self._reject(Ending(Outcome.CLOSED, "client closed before it was recognised"))
        elif IHalfCloseableProtocol.providedBy(handler):
            handler.readConnectionLost()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        if self.handler is not None and IHalfCloseableProtocol.providedBy(self.handler):
            self.handler.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.connections.discard(self)
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        if self.handler is not None:
            self.handler.connectionLost(reason)
        else:
            self.info.finish(self.info.ended or CLIENT_CLOSED)


class DispatchFactory(Factory):  # not Factory[Dispatcher]: Twisted 23.10's Factory is not generic
    """Builds a :class:`Dispatcher` per connection for one front door."""

    noisy = False

    def __init__(self, handlers_source: Callable[[], DispatchHandlers], listener: str,
                 connections: set | None = None) -> None:
        self.handlers_source = handlers_source  # the live snapshot's handlers: a reload swaps what it returns
        self.listener = listener
        self.connections = connections if connections is not None else set()

    def buildProtocol(self, addr) -> Dispatcher:  # type: ignore[override]  # (unsubscripted Factory, above)
        protocol = Dispatcher(self.handlers_source(), self.listener)
        protocol.factory = self
        return protocol
