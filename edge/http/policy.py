# -*- test-case-name: tests.unit.http.test_policy, tests.unit.config.test_access, tests.e2e.test_http_proxy -*-
"""What to do with a request: the one admission step for HTTP/1.1, HTTP/2 and port 80.

:class:`Admission` is asked once per request by both servers: the Host (or
``:authority``) looked up (:func:`host_entry`), the routing decision
(:func:`decide`: the route, or edge's own 404, 421 Host against SNI, 308 to
HTTPS or 404 for ``http = "redirect"|"deny"`` on plain HTTP), the route's
access rules (:class:`Guard`: allow/deny, rate_limit, basic_auth) and the
forward_auth question.  It answers with one decision the server carries
out: a :class:`Route` (forward it as it is), :class:`Forward` (forward it,
changed as the access rules say), :class:`Ask` (ask the auth server, or
have a password hashed, first; :meth:`Ask.answered` reads the answer) or an
:class:`Answer`.  Port 80's redirector asks :func:`port80`: a
:class:`HandOver` of the connection, or an :class:`Answer`.
:func:`body_limit` and :func:`is_websocket` decide the rest: ``max_body``
and whether a request asks for a WebSocket tunnel.
No sockets, no Twisted: plain values in, plain values out.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Callable, Mapping, NamedTuple, Sequence, final

from edge.config.access import Limiter, Rate, Users, limit_key
from edge.config import ForwardAuth, Route
from edge.http.answers import REASON_TEXT
from edge.http.h1 import BadRequest, split_host
from edge.config.routes import HostEntry, RouteTable


@final  # no subclasses: ``type(x) is Answer`` (cheaper than isinstance) narrows both ways
class Answer(NamedTuple):
    """Edge answers the request itself: ``status`` with ``text``, and a ``location`` for a redirect."""

    status: int
    text: str
    location: str | None = None
    headers: tuple[tuple[str, str], ...] = ()  # more response headers (WWW-Authenticate, Retry-After)
    route: Route | None = None  # the route refused it (access rules): its response rules apply, the log names it
    close: bool = False  # the request was malformed (an invalid Host): an HTTP/1.1 connection cannot go on


# Requests sent again on a fresh backend connection when the first one failed before any answer (RFC 9110 9.2.2).
IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))
NO_ROUTE = Answer(404, REASON_TEXT[404])
MISDIRECTED = Answer(421, REASON_TEXT[421])
NO_PLAIN_HTTP = Answer(404, REASON_TEXT[404])
MISSING_HOST = Answer(400, "missing Host header", close=True)


def https_location(host: str, path: str, port: int) -> str:
    """Where a plain-HTTP request for ``host`` (a Host header) and ``path`` goes on HTTPS ``port``."""
    name = host[: host.index("]") + 1] if host.startswith("[") else host.partition(":")[0]
    return f"https://{name if port == 443 else f'{name}:{port}'}{path}"


def host_entry(routes: RouteTable, host_value: str) -> tuple[str, HostEntry | None]:
    """The host name of a Host header (lower case, no port) and its routes; BadRequest (400) if invalid."""
    name, _ = split_host(host_value)
    return name, routes.lookup(name)


def decide(entry: HostEntry | None, host: str, host_value: str, path: str, scheme: str, sni: str | None,
           https_port: int) -> Route | Answer:
    """The route a request goes to (Forward), or edge's own answer.

    ``host`` is the name from :func:`host_entry`, ``host_value`` the header as sent, ``path`` the
    target's path and query, ``scheme`` how it arrived ("https" terminated here, "http" plain), ``sni``
    the TLS server name if any.
    """
    if scheme == "https" and sni is not None and host != sni:
        return MISDIRECTED
    route = entry.match(path.split("?", 1)[0]) if entry is not None else None
    if route is None or not route.terminated:
        return NO_ROUTE
    if scheme == "http" and route.http != "allow":
        if route.http == "deny":
            return NO_PLAIN_HTTP
        location = https_location(host_value, path, https_port)
        return Answer(308, f"Redirecting to {location}", location)
    return route


def body_limit(route: Route, length: int | None) -> int | None:
    """``route``'s ``max_body``; raises BadRequest (413) when a declared ``length`` already exceeds it."""
    limit = route.max_body
    if limit is not None and length is not None and length > limit:
        raise BadRequest(413, REASON_TEXT[413])
    return limit


def is_websocket(version: str, has_body: bool, connection_tokens: set[bytes], upgrade: bytes | None) -> bool:
    """An HTTP/1.1 request that asks to become a WebSocket (RFC 9110 7.8, RFC 6455): HTTP/1.1, no body,
    ``upgrade`` listed in Connection and ``Upgrade: websocket``.  (Over HTTP/2 it is an extended
    CONNECT with ``:protocol websocket``, RFC 8441.)"""
    return version == "1.1" and not has_body and b"upgrade" in connection_tokens \
        and upgrade is not None and upgrade.lower() == b"websocket"


FORBIDDEN = Answer(403, REASON_TEXT[403])


@final  # no subclasses: ``type(x) is Admitted`` (cheaper than isinstance) narrows both ways
class Admitted(NamedTuple):
    """A request that passed a route's access rules, and how it changes on its way to the backend."""

    user: str | None  # who it is (basic auth), for the access log
    drop: frozenset[bytes]  # request headers removed (lower-case): credentials, headers a client could forge
    add: tuple[tuple[bytes, bytes], ...]  # request headers added (lower-case names)
    ask: "ForwardAuth | PasswordCheck | None" = None  # asked before going on: forward_auth, or a password


def one_authorization(values: list[bytes]) -> bytes | None:
    """The request's one Authorization value; with two or more, one that reads as no credentials (so a
    401): edge must not check one while a backend (``pass_authorization``) reads another."""
    if not values:
        return None
    return values[0] if len(values) == 1 else b"ambiguous"


def basic_credentials(value: bytes | None) -> tuple[str, bytes] | None:
    """The user name and password of an ``Authorization: Basic`` header; None if there is none or it is malformed."""
    if value is None:
        return None
    scheme, _, token = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep or not user:
        return None
    return user.decode("utf-8", "replace"), password


FAILURES = Rate(10, 60.0, 10)  # wrong passwords a client may try per minute (then 429)


def spellings(name: str) -> set[bytes]:
    """``name`` lower-case as a header edge controls must be dropped: with each ``-`` also as ``_``
    (``Remote_User``), which CGI-style backends and nginx's ``underscores_in_headers`` read the same."""
    variants = {b""}
    for char in name.lower().encode("ascii"):
        options = (b"-", b"_") if char == ord("-") else (bytes((char,)),)
        variants = {v + option for v in variants for option in options}
    return variants


class Guard:
    """The access rules of one route, in the order they apply: the client's address (403), its rate
    (429 with Retry-After, before any password is checked, so a flood costs no hashing), its credentials
    (401 with the realm), and then the auth server's word for forward_auth (asked by the caller).

    One per route and config snapshot (the rate limiter's table is its state); the time is passed in.
    """

    def __init__(self, route: Route, limiter: Limiter | None = None) -> None:
        self.route = route
        self.limiter = limiter
        # failed passwords per client (IPv6: per /64): past FAILURES a minute, 429 before any hashing, so
        # guessing costs the edge a bounded amount of CPU per client, whatever rate_limit says
        self.failures = Limiter(FAILURES)
        drop: set[bytes] = set()
        basic = route.basic_auth
        if basic is not None:
            if not route.pass_authorization:
                drop.add(b"authorization")
            if route.user_header is not None:
                drop.update(spellings(route.user_header))
            self.challenge = Answer(401, REASON_TEXT[401], None,
                                    (("www-authenticate", f'Basic realm="{basic.realm}"'),))
        if route.forward_auth is not None:
            for name in route.forward_auth.copy_headers:
                drop.update(spellings(name))
        self.drop = frozenset(drop)
        self.open = Admitted(None, self.drop, (), route.forward_auth)

    def check(self, client: str, authorization: bytes | None, now: float) -> Answer | Admitted:
        """Whether a request from ``client`` (an address) with this Authorization header goes on."""
        route = self.route
        if route.addresses and not route.addresses.permits(client):
            return FORBIDDEN
        key = limit_key(client)
        if self.limiter is not None:
            wait = self.limiter.take(key, now)
            if wait > 0:
                return Answer(429, REASON_TEXT[429], None, (("retry-after", str(max(1, math.ceil(wait)))),))
        basic = route.basic_auth
        if basic is None:
            return self.open
        credentials = basic_credentials(authorization)
        if credentials is None:
            return self.challenge
        wait = self.failures.wait(key, now)
        if wait > 0:
            return Answer(429, REASON_TEXT[429], None, (("retry-after", str(max(1, math.ceil(wait)))),))
        known = basic.users.known(*credentials)
        if known is None:  # to be hashed off the reactor: the caller asks, as it asks a forward_auth server
            return Admitted(None, self.drop, (), PasswordCheck(self, basic.users, key, *credentials))
        return self.judged(key, credentials[0], known, now)

    def judged(self, key: str, user: str, right: bool, now: float) -> Answer | Admitted:
        """What a checked password means: the user admitted (with ``user_header``), or 401 counted as a failure."""
        if not right:
            self.failures.take(key, now)
            return self.challenge
        if self.route.user_header is None:
            return Admitted(user, self.drop, ())
        return Admitted(user, self.drop, ((self.route.user_header.lower().encode("ascii"), user.encode("utf-8")),))


@final  # no subclasses: ``type(x) is PasswordCheck`` (cheaper than isinstance) narrows both ways
class PasswordCheck(NamedTuple):
    """A password no cache knows: hashed in a worker thread (bcrypt and argon2 release the GIL), so a flood
    of guesses does not stall every other connection (``Admitted.ask``, answered by the runtime)."""

    guard: Guard
    users: Users  # the route's basic_auth users
    key: str  # the client, as limits count it
    user: str
    password: bytes


@final  # no subclasses: ``type(x) is Passed`` (cheaper than isinstance) narrows both ways
class Passed(NamedTuple):
    """The auth server (or the password check) admitted the request: the headers to add to it, and who it is."""

    add: tuple[tuple[bytes, bytes], ...]
    user: str | None


@final  # no subclasses: ``type(x) is Refusal`` (cheaper than isinstance) narrows both ways
class Refusal(NamedTuple):
    """The auth server's answer (or a password check's 401 / 429), to be sent to the client as it is."""

    status: int
    fields: list[tuple[bytes, bytes]]  # lower-case names, framing and hop-by-hop headers removed
    body: bytes


@final  # no subclasses: ``type(x) is Forward`` narrows both ways
class Forward(NamedTuple):
    """The request passed ``route``'s access rules and goes on, changed as ``admitted`` says.  (A request for a
    route without access rules is forwarded as it is: the decision is the :class:`Route` itself.)"""

    route: Route
    admitted: Admitted


class AuthQuestion(NamedTuple):
    """What the forward_auth server is asked about a request (:func:`edge.http.forward_auth.auth_head`'s
    arguments): the request as the client sent it, before strip_prefix or header rules."""

    config: ForwardAuth
    method: str
    scheme: str
    host: str  # the Host (:authority) as sent
    uri: str  # the path and query as sent
    client: str
    fields: Sequence[tuple[bytes, bytes]]  # the request's headers, lower-case names


@final  # no subclasses: ``type(x) is Ask`` narrows both ways
class Ask(NamedTuple):
    """Before the request goes on, the server asks: the forward_auth server (an :class:`AuthQuestion`) or a
    password hashed off the reactor (a :class:`PasswordCheck`); :meth:`answered` reads the answer."""

    route: Route
    admitted: Admitted
    question: AuthQuestion | PasswordCheck

    def answered(self, result: Passed | Refusal | None) -> Forward | Refusal | None:
        """The request goes on (with the auth server's ``copy_headers``, as the user it names), or the
        auth server's (the password check's) answer goes to the client, or None: no answer, 503 (fail closed)."""
        if result is None or type(result) is Refusal:
            return result
        return Forward(self.route, self.admitted._replace(user=result.user, add=result.add, ask=None))


class Admission:
    """The one admission step of a client connection's requests, for HTTP/1.1 and HTTP/2 alike.

    ``routes`` and ``guards`` (a :class:`Guard` per guarded route's name) are the config snapshot's the
    connection started with; ``scheme`` is how it arrived ("https" terminated here, "http" plain), ``sni``
    its TLS server name, ``client`` its address, ``clock`` the time for rate limits.  The Host of the last
    request and what it resolved to are kept: keep-alive requests repeat it.
    """

    __slots__ = ("routes", "guards", "scheme", "sni", "client", "https_port", "clock", "last_host", "host",
                 "name", "entry")

    def __init__(self, routes: RouteTable, guards: Mapping[str, Guard], scheme: str, sni: str | None,
                 client: str, https_port: int, clock: Callable[[], float]) -> None:
        self.routes, self.guards, self.scheme, self.sni = routes, guards, scheme, sni
        self.client, self.https_port, self.clock = client, https_port, clock
        self.last_host: bytes | None = None
        self.host = "-"  # the Host (:authority) of the request last admitted, as text: for its log line
        self.name = ""  # its name, lower case, no port
        self.entry: HostEntry | None = None  # its routes

    def admit(self, host: bytes | None, method: bytes, path: str,
              fields: Callable[[], Sequence[tuple[bytes, bytes]]]) -> Route | Forward | Ask | Answer:
        """What to do with a request for ``host`` (the Host header or ``:authority`` as sent; None: none)
        and ``path`` (the target's path and query).  ``fields()`` gives its headers (lower-case names); it is
        called only for a guarded route (the Authorization header, the forward_auth question)."""
        if not host:
            return MISSING_HOST
        if host != self.last_host:
            value = host.decode("latin-1")
            try:
                self.name, self.entry = host_entry(self.routes, value)
            except BadRequest as e:
                self.last_host = None
                return Answer(e.status, str(e), close=True)
            self.last_host, self.host = host, value
        route = decide(self.entry, self.name, self.host, path, self.scheme, self.sni, self.https_port)
        if type(route) is Answer or not route.guarded:
            return route
        headers = fields()
        authorization = one_authorization([value for name, value in headers if name == b"authorization"])
        verdict = self.guards[route.name].check(self.client, authorization, self.clock())
        if type(verdict) is Answer:
            return verdict._replace(route=route)
        ask = verdict.ask
        if ask is None:
            return Forward(route, verdict)
        if type(ask) is PasswordCheck:
            return Ask(route, verdict, ask)
        return Ask(route, verdict, AuthQuestion(ask, method.decode("latin-1"), self.scheme, self.host, path,
                                                self.client, headers))


ACME_PREFIX = "/.well-known/acme-challenge/"


@final  # no subclasses: ``type(x) is HandOver`` narrows both ways
class HandOver(NamedTuple):
    """Port 80's connection leaves the redirector: to the plain-HTTP proxy (``backend`` None, ``http =
    "allow"``), or whole to a TCP forwarder for ``backend`` (``http = "forward"``, once past the route's
    allow/deny and conn_limit: ``gated``; or an ACME challenge for the route's ``acme_backend``)."""

    route: Route
    backend: str | None = None
    gated: bool = False


def port80(entry: HostEntry | None, host_value: str, path: str, https_port: int, door: bool) -> HandOver | Answer:
    """Plain HTTP's decision for a request (ACME challenges edge answers itself were answered before): a
    hand-over of the connection, or edge's answer (308 to HTTPS, or 404 for ``http = "deny"``).  The route
    whose plain-HTTP settings apply is the path's, or the host's shortest prefix when no path matches (its
    ACME and ``http`` settings).  ``door``: it arrived on port 80 (plain HTTP on 443 is only redirected)."""
    route = entry.match(path.split("?", 1)[0]) if entry is not None else None
    if route is None and entry is not None:
        route = entry.routes[-1]
    if route is not None:
        if door and route.http == "allow":
            return HandOver(route)
        if door and route.http == "forward":
            return HandOver(route, route.http_backend, True)
        if route.acme_backend and path.startswith(ACME_PREFIX):
            return HandOver(route, route.acme_backend)
        if route.http == "deny":
            return NOT_ON_PLAIN_HTTP._replace(route=route)
    location = https_location(host_value, path, https_port)
    return Answer(308, f"Redirecting to {location}", location, route=route)


NOT_ON_PLAIN_HTTP = Answer(404, "no plain HTTP for this host")
