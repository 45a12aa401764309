"""HTTP(S) backends: keep-alive pools per backend, with the backend's server selection.

Requests from HTTP/2 clients go through a Twisted ``Agent``; those from
HTTP/1.1 clients through the leaner :class:`edge.http1_upstream.Http1Pool`.

Each request picks a server the way TCP connections do (balance, max_conn
counting in-flight requests, passive health) and goes to it through a
persistent :class:`HTTPConnectionPool`.  A server that refuses or times
out on connect is skipped and the next one tried (the request never left,
so retrying is safe).  ``https://`` servers are verified with
service_identity against the system CAs or the backend's ``ca``, unless
``verify = false``.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet import error, ssl
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from edge.backends import Backend, NoServerAvailable, ServerState
from edge.config import BackendConfig
from edge.http1_upstream import Http1Pool

log = Logger()

CONNECT_ERRORS = (error.ConnectError, error.DNSLookupError, error.TimeoutError, error.ConnectingCancelledError)


class UpstreamError(Exception):
    """A proxied request failed; ``status`` is what the client gets."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@implementer(IOpenSSLClientConnectionCreator)
class _Unverified:
    """TLS to a self-signed backend (``verify = false``): encrypt, check nothing."""

    _context: SSL.Context | None = None

    def __init__(self, server_name: str | None) -> None:
        self.server_name = server_name

    def clientConnectionForTLS(self, protocol: Any) -> SSL.Connection:
        if _Unverified._context is None:
            context = SSL.Context(SSL.TLS_CLIENT_METHOD)
            context.set_min_proto_version(SSL.TLS1_2_VERSION)
            context.set_verify(SSL.VERIFY_NONE)
            _Unverified._context = context
        connection = SSL.Connection(_Unverified._context, None)
        if self.server_name and not _is_ip(self.server_name):
            connection.set_tlsext_host_name(self.server_name.encode("idna"))
        connection.set_connect_state()
        return connection


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


@implementer(IPolicyForHTTPS)
class BackendTLSPolicy:
    """How edge speaks TLS to one backend's https:// servers."""

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.trust: Any = None
        if config.verify:
            if config.ca:
                with open(config.ca, "rb") as f:
                    pems = f.read()
                certs = [ssl.Certificate.loadPEM(block) for block in _pem_blocks(pems)]
                self.trust = ssl.trustRootFromCertificates(certs)
            else:
                self.trust = ssl.platformTrust()

    def creator(self, host: str) -> Any:
        name = self.config.server_name or host
        if not self.config.verify:
            return _Unverified(name)
        return ssl.optionsForClientTLS(name, trustRoot=self.trust, acceptableProtocols=[b"http/1.1"])

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return self.creator(hostname.decode("ascii"))


def _pem_blocks(data: bytes) -> list[bytes]:
    end = b"-----END CERTIFICATE-----"
    return [block + end for block in data.split(end) if b"-----BEGIN CERTIFICATE-----" in block]


class Upstream:
    """Requests to one HTTP backend through a keep-alive pool."""

    def __init__(self, backend: Backend, reactor: Any, connect_timeout: float, response_timeout: float) -> None:
        self.backend = backend
        self.reactor = reactor
        self.response_timeout = response_timeout
        self.scheme = backend.config.servers[0].scheme
        self.policy = BackendTLSPolicy(backend.config) if self.scheme == "https" else None
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 64
        self.pool.retryAutomatically = False
        self.pool._factory.noisy = False
        kwargs = {"contextFactory": self.policy} if self.policy else {}
        self.agent = Agent(reactor, connectTimeout=connect_timeout, pool=self.pool, **kwargs)
        self.http1 = Http1Pool(backend, self.tunnel_endpoint)  # HTTP/1.1 clients' requests (edge.http1_proxy)

    def tunnel_endpoint(self, state: ServerState) -> Any:
        """The endpoint a WebSocket tunnel to ``state`` connects through."""
        if self.policy is None:
            return state.endpoint
        return wrapClientTLS(self.policy.creator(state.server.host), state.endpoint)

    def url(self, state: ServerState, path: bytes) -> bytes:
        host = state.server.host
        host = f"[{host}]" if ":" in host else host
        return f"{self.scheme}://{host}:{state.server.port}".encode("ascii") + path

    @inlineCallbacks
    def request(self, method: bytes, path: bytes, headers: Any, body: Any, rewind: Any) -> Deferred:
        """Send the request to one server; fires ``(ServerState, response)``.

        The caller releases the server (:meth:`Backend.release`) once the
        response body is done.  Raises :class:`UpstreamError`.
        """
        last: Exception | None = None
        tried = 0
        for state in self.backend.ordered():
            if not self.backend.has_room(state):
                continue
            tried += 1
            state.active += 1
            if rewind is not None:
                rewind()
            attempt = self.agent.request(method, self.url(state, path), headers, body)
            expired: list[bool] = []
            timer = self.reactor.callLater(self.response_timeout, lambda: (expired.append(True), attempt.cancel()))
            try:
                response = yield attempt
            except CONNECT_ERRORS as e:
                state.active -= 1
                if expired:
                    raise UpstreamError(504, f"backend {self.backend.name} did not answer within "
                                             f"{self.response_timeout:g}s") from None
                self.backend.failed(state, e)
                last = e
                continue
            except CancelledError:
                state.active -= 1
                raise UpstreamError(504, f"backend {self.backend.name} did not answer within "
                                         f"{self.response_timeout:g}s") from None
            except Exception as e:
                state.active -= 1
                if expired:
                    raise UpstreamError(504, f"backend {self.backend.name} did not answer within "
                                             f"{self.response_timeout:g}s") from None
                raise UpstreamError(502, f"backend {self.backend.name} failed: {_describe(e)}") from None
            finally:
                if timer.active():
                    timer.cancel()
            self.backend.succeeded(state)
            return state, response
        if not tried:
            raise UpstreamError(503, f"no server available in backend {self.backend.name}")
        raise UpstreamError(502, f"backend {self.backend.name} refused the connection: {_describe(last)}")


def _describe(e: Exception | None) -> str:
    reasons = getattr(e, "reasons", None)  # ResponseNeverReceived, RequestTransmissionFailed
    if reasons:
        return "; ".join(r.getErrorMessage() for r in reasons)
    return str(e).strip() or type(e).__name__


__all__ = ["Upstream", "UpstreamError", "BackendTLSPolicy", "NoServerAvailable"]
