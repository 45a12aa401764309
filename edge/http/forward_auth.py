# -*- test-case-name: tests.unit.config.test_access, tests.e2e.test_access -*-
"""Forward auth: ask an auth server (Authelia, Authentik, oauth2-proxy) whether a request may go on.

The contract they implement for Traefik's ForwardAuth and Caddy's
forward_auth: a GET to the configured URL with the client's headers plus
``X-Forwarded-Method``, ``-Proto``, ``-Host``, ``-Uri`` and ``-For``; a 2xx
answer lets the request through, with the ``copy_headers`` of that answer
added to it (the same headers from the client having been removed, so they
cannot be forged); any other answer (401, 302 to the login page, 403) goes
back to the client as the auth server sent it; no answer in time is a 503
(fail closed).

:func:`auth_head` and :func:`verdict` are the sans-IO halves; :class:`AuthCheck`
is the thin Twisted shell that carries one question over the auth server's
keep-alive pool (:class:`edge.http.h1_client.Http1Pool`, the backends' own).
:func:`ask_auth` carries out the admission step's :class:`edge.http.policy.Ask`
for both HTTP servers: this question, or a password hashed off the reactor.
"""

from __future__ import annotations

from http import HTTPStatus

from typing import Any, Callable, Sequence

from twisted.logger import Logger

from edge.config import ForwardAuth
from edge.http.framing import ResponseHead
from edge.http.framing import ChunkedReader
from edge.http.h1 import HOP_BY_HOP, connection_tokens, field_list
from edge.http.password_checks import PasswordJob
from edge.http.policy import AuthQuestion, PasswordCheck, Passed, Refusal
from edge.http.upstream import Upstream

log = Logger()

MAX_AUTH_BODY = 65536  # an auth server's answer relayed to the client (a login page's redirect, an error page)
# Not passed to the auth server: hop-by-hop, framing (the GET has no body), and what edge sets itself.
# The X-Original-* and X-Real-IP forms too: Authelia's legacy endpoint and Authentik's nginx one prefer
# X-Original-URL, so a client's own would have the request judged as another URL (found by a review).
_REQUEST_SKIP = HOP_BY_HOP | {b"host", b"content-length", b"expect", b"x-forwarded-method", b"x-forwarded-proto",
                              b"x-forwarded-host", b"x-forwarded-uri", b"x-forwarded-for", b"forwarded",
                              b"x-forwarded-port", b"x-forwarded-prefix", b"x-forwarded-server", b"x-original-url",
                              b"x-original-uri", b"x-original-method", b"x-real-ip"}
# Not relayed from the auth server's answer: hop-by-hop and framing (edge frames the body again).
_RESPONSE_SKIP = HOP_BY_HOP | {b"content-length"}


# Where the auth servers name the user they admitted (Authelia, oauth2-proxy, Authentik): for the access log.
USER_FIELDS = (b"remote-user", b"x-auth-request-user", b"x-authentik-username")


def auth_head(config: ForwardAuth, method: str, scheme: str, host: str, uri: str, client: str,
              fields: Sequence[tuple[bytes, bytes]]) -> bytes:
    """The GET to the auth server for a request (``fields``: its headers as lower-case (name, value) pairs)."""
    authority = f"[{config.host}]" if ":" in config.host else config.host
    if config.port != 80:
        authority += f":{config.port}"
    lines = [b"GET %s HTTP/1.1\r\nhost: %s" % (config.target.encode("latin-1"), authority.encode("latin-1"))]
    lines += [b"%s: %s" % field for field in fields if field[0] not in _REQUEST_SKIP]
    for name, value in (("x-forwarded-method", method), ("x-forwarded-proto", scheme), ("x-forwarded-host", host),
                        ("x-forwarded-uri", uri), ("x-forwarded-for", client), ("x-original-url", f"{scheme}://{host}{uri}"),
                        ("x-original-method", method), ("x-real-ip", client)):
        lines.append(b"%s: %s" % (name.encode("ascii"), value.encode("latin-1")))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def verdict(config: ForwardAuth, head: ResponseHead, body: bytes) -> Passed | Refusal:
    """What the auth server said: the headers to add to the request (2xx), or the answer for the client."""
    if 200 <= head.status < 300:
        fields = field_list(head.fields, head.lower)
        wanted = {name.lower().encode("ascii") for name in config.copy_headers}
        user = next((value.decode("utf-8", "replace") for name, value in fields if name in USER_FIELDS and value), None)
        return Passed(tuple((name, value) for name, value in fields if name in wanted), user)
    listed = connection_tokens(head.fields, head.lower)  # hop-by-hop too (RFC 9110 7.6.1)
    fields = [(name, value) for name, value in field_list(head.fields, head.lower)
              if name not in _RESPONSE_SKIP and name not in listed]
    if head.lower.find(b"\r\ntransfer-encoding:") >= 0:  # relayed with a length: the chunks' payload only
        reader = ChunkedReader(collect=True)
        reader.feed(body)
        body = b"".join(reader.pieces or ())
    return Refusal(head.status, fields, body)


class AuthCheck:
    """One question to the auth server over its keep-alive pool; ``done`` gets the :func:`verdict`, or None
    when the server is down, fails or is slower than ``config.timeout`` (the caller answers 503).

    An owner of an upstream connection (:class:`edge.http.h1_client.Owner`).
    """

    def __init__(self, upstream: Any, reactor: Any, config: ForwardAuth, head: bytes,
                 done: Callable[[Passed | Refusal | None], None]) -> None:
        self.pool = upstream.http1
        self.reactor = reactor
        self.config = config
        self.head = head
        self.done: Callable[..., None] | None = done
        self.closed = False
        self.connection: Any = None
        self.response: ResponseHead | None = None
        self.body: list[bytes] = []
        self.size = 0
        self.timer: Any = None
        self.retried = False

    def start(self) -> None:
        self.timer = self.reactor.callLater(self.config.timeout, self._timeout)
        self.pool.acquire(self)

    def cancel(self) -> None:
        """The client went away: stop asking."""
        self._finish(None, reusable=False, report=False)

    def _finish(self, result: Any, reusable: bool, report: bool = True, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        connection, self.connection = self.connection, None
        if connection is not None:
            self.pool.release(connection, reusable)
        done, self.done = self.done, None
        if result is None and reason and report:
            log.warn("forward_auth {url}: {reason}; answering 503", url=self.config.url, reason=reason)
        if report and done is not None:
            done(result)

    def _timeout(self) -> None:
        self.timer = None
        self._finish(None, reusable=False, reason=f"no answer within {self.config.timeout:g}s")

    # -- the upstream connection's owner ------------------------------------------------

    def upstream_ready(self, connection: Any) -> None:
        if self.closed:
            self.pool.release(connection, reusable=True)
            return
        self.connection = connection
        connection.start(self, b"GET")
        connection.transport.write(self.head)

    def upstream_unavailable(self, status: int, reason: str) -> None:
        self._finish(None, reusable=False, reason=reason)

    def upstream_response(self, connection: Any, head: ResponseHead, body: bytes, done: bool) -> None:
        self.response = head
        self.upstream_body(body, done)

    def upstream_body(self, data: bytes, done: bool) -> None:
        if self.closed:
            return
        self.size += len(data)
        if self.size > MAX_AUTH_BODY:
            self._finish(None, reusable=False, reason=f"answer larger than {MAX_AUTH_BODY} bytes")
            return
        self.body.append(data)
        response = self.response  # set by upstream_response, which comes first
        if done and response is not None:
            reusable = self.connection is not None and self.connection.reusable
            self._finish(verdict(self.config, response, b"".join(self.body)), reusable)

    def upstream_failed(self, connection: Any, reason: str) -> None:
        if self.closed:
            return
        if connection.reused and self.response is None and not self.retried:
            # A kept-alive connection the auth server had just closed: once more, on a new one.
            self.retried = True
            self.connection = None
            self.pool.release(connection, reusable=False)
            self.pool.acquire(self, fresh=True)
            return
        self._finish(None, reusable=False, reason=reason)


def relay_response(refusal: Refusal, close: bool, head_only: bool) -> bytes:
    """The auth server's answer as an HTTP/1.1 response to the client (its body framed by a length)."""
    from edge.http.answers import STATUS_TEXT

    try:
        reason = STATUS_TEXT.get(refusal.status) or HTTPStatus(refusal.status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [b"HTTP/1.1 %d %s" % (refusal.status, reason.encode("ascii"))]
    lines += [b"%s: %s" % field for field in refusal.fields]
    lines.append(b"content-length: %d" % len(refusal.body))
    if close:
        lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if head_only else refusal.body)


def ask_auth(upstreams: dict[tuple[str, int], Upstream], reactor: Any, question: AuthQuestion | PasswordCheck,
        done: Callable[[Passed | Refusal | None], None]) -> AuthCheck | PasswordJob:
    """Carry out an :class:`edge.http.policy.Ask`'s ``question``: the forward_auth server asked over its pool
    (``upstreams``, by host and port), or the password hashed off the reactor.  The answer goes to ``done``;
    ``cancel()`` on the result stops it (the client left)."""
    if type(question) is PasswordCheck:
        return PasswordJob(reactor, question, done)
    config = question.config
    check = AuthCheck(upstreams[config.host, config.port], reactor, config, auth_head(*question), done)
    check.start()
    return check
