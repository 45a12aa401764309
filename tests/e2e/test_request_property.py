"""Property: an HTTP/1.1 request reaches the origin whole and unchanged, or not at all.

For generated HTTP/1.1 requests sent raw over TLS (ALPN http/1.1) to a
terminated route of a running edge, each followed in the same write by a
pipelined canary request (``GET /canary-<marker>-a``, for our host or for
another one):

* EITHER the edge refuses the request (4xx; or 501, RFC 9112's answer for a
  transfer coding it does not implement) and the origin receives nothing,
* OR the origin receives exactly one request, with the method, the target
  (byte for byte, queries like ``?next=https://x.test/other`` included), the
  Host and the body (the same bytes, de-chunked) that the client sent; the
  origin accepts it (status 200: it found the request well framed) and the
  client gets that answer.

In both cases the origin sees no request the client did not send as a whole
(a body taken for a request: smuggling), the canary is answered if the edge
kept the connection open (a canary for another host is refused and never
reaches the origin: an edge that had stopped parsing the connection and
relayed raw bytes would let it through), and the edge logs no traceback.

Why: the edge relays request bodies as the bytes they arrived as and decides
only where each request ends.  When the edge and the origin disagree about
that (Content-Length against chunked, two lengths, a length in non-ASCII
digits, ``Transfer-Encoding: chunked, gzip``, a ``Connection`` header naming
a framing header so that it is dropped on the way, obsolete line folding,
whitespace before the colon, bare LF...), the bytes of one request become
another one.  The generator draws requests from those families (and from
plain ones, so that the pass-through half is exercised as well).

Oracle: a real nginx (one process, two server blocks).  The front block logs
every request it receives as one JSON line (method, raw ``$request_uri``,
status, framing headers, Host, ``$request_body``); it fills
``$request_body`` because it proxies to the second block, which answers
``200 ok``.  Each example is marked: an ``X-Case`` header in the request,
the marker in the canaries' targets.  After each example a final canary goes
on a new connection; once its line is in the log, every line since the
example began belongs to this example (nginx with one worker logs a request
when it is finished, and nothing else talks to it).  No sleeps: the log is
polled until the final canary's line arrives, with a deadline.

Failures raise one AssertionError subclass per kind (smuggled, altered,
refused by the origin, no answer, edge traceback), so that hypothesis
reports, and shrinks, each kind apart.  After a failing example nginx is
restarted, so that a desynchronised keep-alive connection cannot spill into
the next example (or into a replay while shrinking).

Settings: the property is one test per family (a framing kind, or a twist
such as ``Connection: content-length``), 15 examples each (390 in all, about
6 s when nothing fails, bodies up to 2 KiB): every family gets its share of
examples, and a bug in one family does not hide those of another (hypothesis
stops searching soon after its first failure).  ``derandomize=True`` and no
example database: every run, CI or local, tries the same examples, so a
failure seen once is seen again and a fix is checked by running the test
again; nothing depends on ``.hypothesis/``.  Set ``EDGE_PROPERTY_RANDOM=1``
to explore fresh examples instead.  ``test_pinned_request`` runs named cases
for the bugs this test was written against, whatever the generator draws.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import ssl
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from hypothesis import Phase, given, settings, strategies as st

from tests.support.edge import Edge
from tests.support.procs import free_port, wait_listening
from tests.support.servers import Nginx
from tests.e2e.test_http_proxy import one_route
from tests.e2e.test_terminate import local_ca

HOST = "app.example.test"
METHODS = ("GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")  # no HEAD (no body in the answer), no CONNECT
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: app.example.test\r\n\r\n"
RUN = os.urandom(3).hex()  # the markers of this run: a log line from anything else is never taken for ours
_EXAMPLES = itertools.count()
READ_TIMEOUT = 3.0  # waiting for an answer the edge owes
LOG_TIMEOUT = 5.0  # waiting for the final canary's line in the origin's log

Draw = Callable[[st.SearchStrategy[Any]], Any]


# -- the generated requests ----------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One request: its head (the X-Case marker line is added when sent), its body on the wire,
    and ``payload``, the body an origin must see (de-chunked) if it takes the request."""

    label: str  # the framing family and the twists, to read a falsifying example by
    method: str
    target: bytes
    head: bytes
    body: bytes
    payload: bytes
    host: bytes | None  # the value of the one Host line sent (None: none, or several)
    # The Host of the pipelined canary: another host's must be refused (421) and never reach the origin,
    # which it would if the edge had stopped reading requests on this connection and relayed raw bytes.
    canary_host: bytes = HOST.encode()

    def wire(self, marker: str) -> bytes:
        end = self.head.index(b"\r\n") + 2  # after the request line, which always ends in CRLF
        return self.head[:end] + b"X-Case: " + marker.encode() + b"\r\n" + self.head[end:] + self.body


def build(label: str, method: str, target: bytes, fields: list[bytes], body: bytes, payload: bytes,
          ends: list[bytes] | None = None, canary_host: bytes = HOST.encode()) -> Case:
    """A Case from header lines; ``ends`` are the line endings after each field and after the
    blank line (CRLF unless a case says otherwise)."""
    ends = ends or [b"\r\n"] * (len(fields) + 1)
    head = method.encode() + b" " + target + b" HTTP/1.1\r\n"
    head += b"".join(field + end for field, end in zip(fields, ends)) + ends[-1]
    hosts = [f for f in fields if f[:5].lower() == b"host:"]
    host = hosts[0][5:].strip(b" \t") if len(hosts) == 1 else None
    return Case(label, method, target, head, body, payload, host, canary_host)


PATH_CHARS = list("abcXYZ019-._~!$&'()*+,;=:@")
ESCAPES = ["%20", "%2F", "%3F", "%25", "%41", "%23", "%E2%82%AC", "%c3%a9"]  # no %00, no %2e: nginx's own rules
QUERY_PIECES = ["://", "next=https://x.test/other", "u=http://app.example.test/", "/", "?", "&", "="]


def segments() -> st.SearchStrategy[str]:
    piece = st.one_of(st.sampled_from(PATH_CHARS), st.sampled_from(ESCAPES), st.just("é"))
    return st.lists(piece, max_size=6).map("".join).filter(lambda s: s not in (".", ".."))


def targets() -> st.SearchStrategy[bytes]:
    """Origin-form targets: ':' and empty segments (so '://' in the path too), percent-escapes,
    raw UTF-8, and queries holding URLs."""
    path = st.lists(segments(), min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))
    query = st.lists(st.one_of(st.sampled_from(PATH_CHARS), st.sampled_from(ESCAPES),
                               st.sampled_from(QUERY_PIECES)), max_size=8).map("".join)
    return st.tuples(path, st.none() | query).map(
        lambda pq: (pq[0] if pq[1] is None else f"{pq[0]}?{pq[1]}").encode("utf-8"))


def payloads() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(min_size=1, max_size=32),
        st.binary(max_size=2048),
        st.sampled_from([SMUGGLED, b"0\r\n\r\n", b"hello", b"\r\n\r\n", SMUGGLED * 2]),
    )


def split_payload(draw: Draw, payload: bytes) -> list[bytes]:
    if not payload:
        return []
    cuts = draw(st.lists(st.integers(1, len(payload) - 1), max_size=3, unique=True)) if len(payload) > 1 else []
    edges = [0, *sorted(cuts), len(payload)]
    return [payload[a:b] for a, b in zip(edges, edges[1:])]


CHUNK_EXTENSIONS = [b";a=b", b';name="quoted;value"', b";x", b" ;y=1"]
BAD_CHUNKS = ("0x", "minus", "plus", "suffix", "leading-space", "underscore", "too-long", "empty",
              "bigger", "smaller", "lf-after-size", "lf-after-data")


def bad_size(kind: str, n: int) -> bytes:
    digits = b"%x" % n
    return {
        "0x": b"0x" + digits, "minus": b"-" + digits, "plus": b"+" + digits, "suffix": digits + b"g",
        "leading-space": b" " + digits, "too-long": b"1" + b"0" * 16, "empty": b"",
        "underscore": digits[:1] + b"_" + digits[1:] if len(digits) > 1 else b"0_" + digits,  # int(.., 16) takes it
        "bigger": b"%x" % (n + 1),
        "smaller": b"%x" % (n - 1) if n > 1 else digits + b"g",  # never 0: that would be a valid, shorter body
    }[kind]


def chunked(draw: Draw, payload: bytes, extensions: bool = False, corrupt: bool = False) -> bytes:
    """``payload`` chunked (random cuts, hex case, leading zeros, extensions, a trailer), with one
    size line or line ending broken if ``corrupt``."""
    parts = split_payload(draw, payload)
    sizes = [b"%x" % len(p) for p in parts] + [b"0"]
    if draw(st.booleans()):
        sizes = [s.upper() for s in sizes]
    if draw(st.booleans()):
        sizes = [b"0" * draw(st.integers(0, 3)) + s for s in sizes]
    exts = [draw(st.sampled_from(CHUNK_EXTENSIONS)) if extensions else b"" for _ in sizes]
    size_ends = [b"\r\n"] * len(sizes)
    data_ends = [b"\r\n"] * len(parts)
    if corrupt:
        kind = draw(st.sampled_from(BAD_CHUNKS))
        i = draw(st.integers(0, len(sizes) - 1))
        if kind == "lf-after-data" and parts:
            data_ends[min(i, len(parts) - 1)] = b"\n"
        elif kind in ("lf-after-size", "lf-after-data"):
            size_ends[i] = b"\n"
        else:
            sizes[i], exts[i] = bad_size(kind, len(parts[i]) if i < len(parts) else 0), b""
    trailer = draw(st.sampled_from([b"", b"X-Trailer: 1\r\n"]))
    body = b"".join(sizes[k] + exts[k] + size_ends[k] + parts[k] + data_ends[k] for k in range(len(parts)))
    return body + sizes[-1] + exts[-1] + size_ends[-1] + trailer + b"\r\n"


NON_ASCII_DIGITS = [b"\xb2", b"\xb9", b"\xb3",  # latin-1 superscripts: str.isdigit() says yes, int() says no
                    "²".encode(), "١".encode(), "５".encode(), "٥".encode(), "𝟓".encode()]


def framing(draw: Draw, kind: str, payload: bytes) -> tuple[list[bytes], bytes]:
    """The framing header lines and the body on the wire for ``payload``."""
    n = len(payload)
    cl = b"Content-Length: "
    if kind == "none":
        return [], b""
    if kind == "length":
        return [cl + b"%d" % n], payload
    if kind == "length-odd":
        value = draw(st.sampled_from([b"+%d" % n, b"-%d" % n, b"%d.0" % n, b"0x%x" % n, b"%de0" % n,
                                      b"0_%d" % n, b"0%d" % n, b" %d" % n]))
        return [cl + value], payload
    if kind == "length-non-ascii":
        digit = draw(st.sampled_from(NON_ASCII_DIGITS))
        value = draw(st.sampled_from([digit, b"%d" % n + digit, digit + b"%d" % n]))
        return [cl + value], payload
    if kind == "length-twice":
        second = draw(st.sampled_from([b"%d" % n, b"0%d" % n]))
        return [cl + b"%d" % n, cl + second], payload
    if kind == "length-list":
        return [cl + draw(st.sampled_from([b"%d, %d", b"%d,%d"])) % (n, n)], payload
    if kind == "length-two":
        lines = [cl + b"%d" % n, cl + b"%d" % (n + draw(st.integers(1, 5)))]
        return (lines if draw(st.booleans()) else lines[::-1]), payload
    if kind in ("chunked", "chunked-extensions", "chunked-bad"):
        value = draw(st.sampled_from([b"chunked", b"Chunked", b"CHUNKED", b" chunked "]))
        return [b"Transfer-Encoding: " + value], chunked(draw, payload, kind == "chunked-extensions",
                                                         kind == "chunked-bad")
    if kind == "length-and-chunked":
        body = chunked(draw, payload)
        lines = [cl + b"%d" % draw(st.sampled_from([n, len(body), 0])), b"Transfer-Encoding: chunked"]
        return (lines if draw(st.booleans()) else lines[::-1]), body
    if kind == "codings":
        codings = draw(st.lists(st.sampled_from(["gzip", "chunked", "identity", "deflate", "compress"]),
                                min_size=1, max_size=3))
        spelled = [draw(st.sampled_from([c, c.upper(), c.capitalize()])).encode() for c in codings]
        if len(spelled) > 1 and draw(st.booleans()):  # one header line per coding
            lines = [b"Transfer-Encoding: " + c for c in spelled]
        else:
            lines = [b"Transfer-Encoding: " + draw(st.sampled_from([b", ", b",", b" , "])).join(spelled)]
        return lines, (chunked(draw, payload) if "chunked" in codings else payload)
    raise AssertionError(kind)


# The plain ones first: hypothesis draws the first entries more often, and shrinks towards them.
FRAMINGS = ("length", "chunked", "none", "chunked-extensions", "length-odd", "length-non-ascii", "length-twice",
            "length-list", "length-two", "chunked-bad", "length-and-chunked", "codings")
# No "Host:<TAB>name": nginx takes the tab for part of the name (400), a quirk of nginx, not the edge's business.
HOSTS = ("plain", "upper", "port", "dot", "missing", "twice", "other")
TWISTS = ("connection-content-length", "connection-transfer-encoding", "connection-host",
          "connection-close-x-foo", "connection-keep-alive", "connection-close", "obs-fold",
          "obs-fold-value", "space-before-colon", "bare-lf", "expect-continue", "upgrade-websocket",
          "te-trailers", "keep-alive-header")
# The property runs once per family (see the test), so that every framing and every twist gets its share
# of the examples, and a bug in one family does not hide those of another (hypothesis stops looking soon
# after its first failure).
FAMILIES = [f"framing={kind}" for kind in FRAMINGS] + [f"twist={twist}" for twist in TWISTS]
OTHER_FIELDS = [b"Accept: */*", b"User-Agent: property/1", b"Cookie: a=b; c=d", b"X-Empty:",
                b"X-Utf8: caf\xc3\xa9", b"X-Tab:\tv", b"X-Foo: bar"]


def host_lines(kind: str) -> list[bytes]:
    return {
        "plain": [b"Host: app.example.test"], "upper": [b"HOST: APP.Example.TEST"],
        "port": [b"Host: app.example.test:443"], "dot": [b"Host: app.example.test."], "missing": [],
        "twice": [b"Host: app.example.test", b"Host: app.example.test"], "other": [b"Host: other.example.test"],
    }[kind]


@st.composite
def requests(draw: Draw, family: str) -> Case:
    """A request of ``family``: ``framing=KIND`` (twists drawn, or none) or ``twist=NAME`` (framing drawn)."""
    axis, _, name = family.partition("=")
    method = draw(st.sampled_from(METHODS))
    target = draw(targets())
    kind = name if axis == "framing" else draw(st.sampled_from(FRAMINGS))
    payload = b"" if kind == "none" else draw(payloads())
    fields, body = framing(draw, kind, payload)
    host = draw(st.sampled_from(HOSTS))
    twists = [name] if axis == "twist" else []
    if draw(st.booleans()):
        twists += draw(st.lists(st.sampled_from([t for t in TWISTS if t not in twists]), max_size=1))
    fields += draw(st.lists(st.sampled_from(OTHER_FIELDS), max_size=2, unique=True))
    for twist in twists:
        fields += {
            "connection-content-length": [b"Connection: content-length"],
            "connection-transfer-encoding": [b"Connection: transfer-encoding"],
            "connection-host": [b"Connection: host"],
            "connection-close-x-foo": [b"Connection: close, x-foo", b"X-Foo: dropped"],
            "connection-keep-alive": [b"Connection: keep-alive"],
            "connection-close": [b"Connection: close"],
            "expect-continue": [b"Expect: 100-continue"],
            "upgrade-websocket": [b"Upgrade: websocket"],
            "te-trailers": [b"TE: trailers"],
            "keep-alive-header": [b"Keep-Alive: timeout=5"],
        }.get(twist, [])
    fields = list(draw(st.permutations(fields)))
    at = draw(st.integers(0, len(fields)))
    fields[at:at] = host_lines(host)
    ends = [b"\r\n"] * (len(fields) + 1)
    for twist in twists:
        if not fields:
            break
        i = draw(st.integers(0, len(fields) - 1))
        name, _, value = fields[i].partition(b":")
        if twist == "obs-fold":  # a continuation line after a field
            fields[i] += b"\r\n" + draw(st.sampled_from([b" ", b"\t"])) + b"folded"
        elif twist == "obs-fold-value":  # the value moved to a continuation line
            fields[i] = name + b":\r\n" + draw(st.sampled_from([b" ", b"\t"])) + value.strip()
        elif twist == "space-before-colon":
            fields[i] = name + draw(st.sampled_from([b" ", b"\t"])) + b":" + value
        elif twist == "bare-lf":
            ends[draw(st.integers(0, len(fields)))] = b"\n"
    canary_host = draw(st.sampled_from([HOST.encode(), b"other.example.test"]))
    label = "+".join([kind, f"host={host}", *twists])
    return build(label, method, target, fields, body, payload, ends, canary_host)


# -- the running edge and origin -------------------------------------------------------------------

class Origin:
    """nginx: the front block logs each request (JSON) and proxies to the back block, which says ok."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port, self.back = free_port(), free_port()
        self.access = tmp / "origin-access.log"
        self.server = self._start()

    def _start(self) -> Nginx:
        fields = ('"case":"$http_x_case","method":"$request_method","uri":"$request_uri","status":"$status",'
                  '"length":"$request_length","cl":"$http_content_length","te":"$http_transfer_encoding",'
                  '"host":"$http_host","body":"$request_body"')
        server = Nginx(self.tmp, f"""
            log_format probe escape=json '{{{fields}}}';
            server {{
              listen 127.0.0.1:{self.port};
              access_log {self.access} probe;
              client_max_body_size 1m;
              client_body_buffer_size 64k;
              client_body_in_single_buffer on;
              client_header_timeout 5s;
              client_body_timeout 5s;
              keepalive_requests 100000;
              location / {{ proxy_pass http://127.0.0.1:{self.back}; }}
            }}
            server {{
              listen 127.0.0.1:{self.back};
              location / {{ return 200 "ok"; }}
            }}
            """)
        for port in (self.port, self.back):
            wait_listening(port, proc=server.proc)
        return server

    def restart(self) -> None:
        """A fresh nginx on the same ports: no connection of the failed example lingers."""
        self.server.stop()
        self.server = self._start()

    def size(self) -> int:
        return self.access.stat().st_size if self.access.exists() else 0

    def lines_until(self, offset: int, uri: bytes, timeout: float = LOG_TIMEOUT) -> list[dict[str, bytes]] | None:
        """Log lines from ``offset`` on, once one has ``uri``; None if none does before the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            with open(self.access, "rb") as f:
                f.seek(offset)
                text = f.read()
            lines = [parse_line(line) for line in text.split(b"\n")[:-1]]  # complete lines only
            if any(line["uri"] == uri for line in lines):
                return lines
            if time.monotonic() > deadline:
                return None
            time.sleep(0.005)

    def stop(self) -> None:
        self.server.stop()


def parse_line(line: bytes) -> dict[str, bytes]:
    """One JSON log line: nginx escapes quotes, backslashes and control bytes, others stay raw."""
    return {key: value.encode("latin-1") for key, value in json.loads(line.decode("latin-1")).items()}


@dataclass
class Stack:
    edge: Edge
    origin: Origin
    context: ssl.SSLContext

    def connect(self) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.edge.https_port), timeout=READ_TIMEOUT)
        return self.context.wrap_socket(raw, server_hostname=HOST)

    def edge_log_size(self) -> int:
        return self.edge.log_path.stat().st_size

    def edge_log_since(self, offset: int) -> str:
        with open(self.edge.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One nginx and one edge for every example of this module."""
    tmp = tmp_path_factory.mktemp("request_property")
    origin = Origin(tmp)
    try:
        edge = Edge(tmp / "edge", one_route(f'["http://127.0.0.1:{origin.port}"]'), http=False,
                    timeouts='inspect = "2s"\nconnect = "2s"\nidle = "10s"\nresponse = "5s"\ndrain = "1s"')
    except BaseException:
        origin.stop()
        raise
    try:
        context = ssl.create_default_context(cafile=local_ca(edge))
        context.set_alpn_protocols(["http/1.1"])
        yield Stack(edge, origin, context)
    finally:
        origin.stop()  # first: the edge's idle connections to it close, so the edge stops at once
        edge.stop()


# -- talking to the edge ------------------------------------------------------------------------------

@dataclass
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes

    @property
    def closes(self) -> bool:
        return b"close" in self.headers.get(b"connection", b"").lower()


class Reader:
    """Responses off one connection; a read that ends in EOF or a timeout says which."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.buffer = b""
        self.ended: str | None = None
        self.timed_out = False

    def _more(self) -> bool:
        if self.ended:
            return False
        try:
            data = self.sock.recv(65536)
        except (TimeoutError, socket.timeout):
            self.ended, self.timed_out = f"no answer within {READ_TIMEOUT:g}s", True
            return False
        except OSError as e:  # a reset, or TLS cut without close_notify
            self.ended = f"connection ended: {e!r}"
            return False
        if not data:
            self.ended = "connection closed"
            return False
        self.buffer += data
        return True

    def _until(self, marker: bytes) -> int:
        while (at := self.buffer.find(marker)) < 0:
            if not self._more():
                return -1
        return at

    def _take(self, count: int) -> bytes | None:
        while len(self.buffer) < count:
            if not self._more():
                return None
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def response(self) -> Response | str:
        """The next final response (interim 1xx skipped), or why there is none."""
        while True:
            at = self._until(b"\r\n\r\n")
            if at < 0:
                return f"{self.ended} (read {self.buffer[:200]!r})"
            head, self.buffer = self.buffer[:at], self.buffer[at + 4:]
            lines = head.split(b"\r\n")
            words = lines[0].split()
            if len(words) < 2 or not words[0].startswith(b"HTTP/1.") or not words[1].isdigit():
                return f"not an HTTP/1.x answer: {head[:200]!r}"
            status = int(words[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            if 100 <= status < 200:
                continue
            if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
                body = b""
                while True:
                    at = self._until(b"\r\n")
                    if at < 0:
                        return f"chunked answer cut short: {self.ended}"
                    size = int(self.buffer[:at].split(b";")[0], 16)
                    self.buffer = self.buffer[at + 2:]
                    data = self._take(size + 2)
                    if data is None:
                        return f"chunked answer cut short: {self.ended}"
                    if size == 0:
                        break
                    body += data[:-2]
            elif b"content-length" in headers:
                data = self._take(int(headers[b"content-length"]))
                if data is None:
                    return f"answer body cut short: {self.ended}"
                body = data
            else:
                while self._more():
                    pass
                body, self.buffer = self.buffer, b""
            return Response(status, headers, body)


def canary(marker: str, which: str, close: bool = False, host: bytes = HOST.encode()) -> bytes:
    return (b"GET /canary-%s-%s HTTP/1.1\r\nHost: %s\r\nX-Case: %s-%s\r\n%s\r\n"
            % (marker.encode(), which.encode(), host, marker.encode(), which.encode(),
               b"Connection: close\r\n" if close else b""))


# -- the oracle ------------------------------------------------------------------------------------

class PropertyFailure(AssertionError):
    """The property does not hold; the subclasses are the kinds hypothesis reports apart."""


class Smuggled(PropertyFailure):
    """The origin received a request the client did not send as a whole, or lost the canary."""


class Altered(PropertyFailure):
    """The origin received the request, changed: method, target, Host or body."""


class RefusedByOrigin(PropertyFailure):
    """The edge forwarded a request the origin found malformed (the edge should have refused it)."""


class NoAnswer(PropertyFailure):
    """The edge neither refused the request nor forwarded it (no answer, or a wrong one)."""


class EdgeTraceback(PropertyFailure):
    """The edge logged a traceback."""


def refused(answer: Response | str) -> bool:
    return isinstance(answer, Response) and (400 <= answer.status < 500 or answer.status == 501)


def judge(case: Case, marker: str, first: Response | str, second: Response | str | None,
          lines: list[dict[str, bytes]] | None, edge_log: str) -> list[tuple[type[PropertyFailure], str]]:
    """Every way the example breaks the property, each with its kind."""
    problems: list[tuple[type[PropertyFailure], str]] = []
    if "Traceback" in edge_log or "Unhandled Error" in edge_log:
        problems.append((EdgeTraceback, "the edge logged a traceback"))
    if lines is None:
        return problems + [(Smuggled, "the final canary (a new connection) never reached the origin")]
    canary_a = f"/canary-{marker}-a".encode()
    canary_z = f"/canary-{marker}-z".encode()
    seen = [line for line in lines if line["uri"] not in (canary_a, canary_z)]
    canaries = [line for line in lines if line["uri"] == canary_a]
    if not seen:
        if not refused(first):
            problems.append((NoAnswer, f"the origin received nothing, and the client got {summary(first)}"))
    elif len(seen) > 1:
        problems.append((Smuggled, f"the origin received {len(seen)} requests for one"))
    else:
        line = seen[0]
        if line["case"] != marker.encode():
            problems.append((Smuggled, f"the origin received a request marked {line['case']!r}"))
        for what, got, want in (("method", line["method"], case.method.encode()), ("target", line["uri"], case.target),
                                ("body", line["body"], case.payload)):
            if got != want:
                problems.append((Altered, f"{what}: origin got {got[:300]!r}, client sent {want[:300]!r}"))
        if case.host is not None and line["host"] != case.host:
            problems.append((Altered, f"Host: origin got {line['host']!r}, client sent {case.host!r}"))
        if line["status"] != b"200":
            problems.append((RefusedByOrigin, f"the origin answered {line['status'].decode()} to what the edge "
                                              f"forwarded (cl={line['cl']!r} te={line['te']!r})"))
        elif not (isinstance(first, Response) and first.status == 200):
            problems.append((NoAnswer, f"the origin answered 200 but the client got {summary(first)}"))
    if len(canaries) > 1 or len([line for line in lines if line["uri"] == canary_z]) != 1:
        problems.append((Smuggled, "a canary reached the origin more than once"))
    if case.canary_host != HOST.encode():
        if canaries:
            problems.append((Smuggled, "the pipelined request for another host reached the origin"))
        if second is not None and not refused(second):
            problems.append((Smuggled, f"the pipelined request for another host got {summary(second)}"))
    elif second is not None:  # the edge kept the connection open after its first answer
        if not (isinstance(second, Response) and second.status == 200 and len(canaries) == 1):
            problems.append((Smuggled, f"the pipelined canary: origin saw it {len(canaries)} times, "
                                       f"the client got {summary(second)}"))
    return problems


def summary(answer: Response | str | None) -> str:
    if isinstance(answer, Response):
        return f"{answer.status} {answer.body[:80]!r}"
    return str(answer)


def check(stack: Stack, case: Case) -> None:
    """Send ``case`` and the canaries, then judge; on failure restart the origin and raise."""
    marker = f"{RUN}-{next(_EXAMPLES)}"
    offset, edge_offset = stack.origin.size(), stack.edge_log_size()
    second: Response | str | None = None
    sent = case.wire(marker) + canary(marker, "a", host=case.canary_host)
    with stack.connect() as tls:
        try:
            tls.sendall(sent)
        except OSError:
            pass  # the edge may refuse and close before reading it all: its answer is still there to read
        reader = Reader(tls)
        first = reader.response()
        if isinstance(first, Response) and not first.closes:
            second = reader.response()
            if isinstance(second, str) and not reader.buffer and not reader.timed_out:
                second = None  # closed without a word after the first answer: the canary was not taken
    with stack.connect() as tls:
        tls.sendall(canary(marker, "z", close=True))
        final = Reader(tls).response()
    lines = stack.origin.lines_until(offset, f"/canary-{marker}-z".encode())
    problems = judge(case, marker, first, second, lines, stack.edge_log_since(edge_offset))
    if isinstance(final, str) or final.status != 200:
        problems.append((NoAnswer, f"the final canary got {summary(final)}"))
    if problems:
        stack.origin.restart()
        order = (EdgeTraceback, Smuggled, NoAnswer, RefusedByOrigin, Altered)
        kind = min((kind for kind, _ in problems), key=order.index)
        raise kind("\n".join(
            [f"{case.label}: {'; '.join(text for _, text in problems)}",
             f"sent: {sent[:1500]!r}",
             f"answers: {summary(first)} / {summary(second)}",
             "origin log:", *(repr(line) for line in lines or [])]))


# -- the tests -------------------------------------------------------------------------------------

PROPERTY_SETTINGS = settings(
    max_examples=15, deadline=None, database=None, print_blob=True,
    derandomize=not os.environ.get("EDGE_PROPERTY_RANDOM"),
    phases=[Phase.explicit, Phase.generate, Phase.shrink],  # no "explain": it names the origin's restart lines
)


def property_test(family: str) -> Callable[..., None]:
    """The property for one family, as a test function of its own.

    One function per family rather than ``pytest.mark.parametrize``: pytest-twisted (installed for
    the other tests) wraps a hypothesis test's ``inner_test`` on the function object at every call,
    so the parametrized runs of one function would nest the wrapper and fail."""
    @PROPERTY_SETTINGS
    @given(case=requests(family))
    def test(stack: Stack, case: Case) -> None:
        check(stack, case)

    test.__name__ = test.__qualname__ = "test_request_reaches_origin_whole_or_not_at_all_" + \
        family.replace("=", "_").replace("-", "_")
    return test


for _family in FAMILIES:
    _test = property_test(_family)
    globals()[_test.__name__] = _test
del _family, _test


H = b"Host: app.example.test"
PINNED = {
    # A Connection header naming Content-Length must not strip the length and relay the body as a request.
    "connection-names-content-length": build(
        "pinned", "POST", b"/", [H, b"Content-Length: %d" % len(SMUGGLED), b"Connection: content-length"],
        SMUGGLED, SMUGGLED),
    "connection-names-transfer-encoding": build(
        "pinned", "POST", b"/", [H, b"Transfer-Encoding: chunked", b"Connection: transfer-encoding"],
        b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
    "connection-names-host": build("pinned", "GET", b"/", [H, b"Connection: host"], b"", b""),
    # '\xb2' is '²' in latin-1: str.isdigit() is true, int() raises.
    "content-length-superscript-two": build("pinned", "POST", b"/", [H, b"Content-Length: \xb2"], b"ab", b"ab"),
    "content-length-arabic-indic-one": build("pinned", "POST", b"/", [H, "Content-Length: ١".encode()], b"a", b"a"),
    "content-length-underscore": build("pinned", "POST", b"/", [H, b"Content-Length: 0_5"], b"hello", b"hello"),
    "content-length-twice-equal": build(
        "pinned", "POST", b"/", [H, b"Content-Length: 5", b"Content-Length: 5"], b"hello", b"hello"),
    "content-length-two": build(
        "pinned", "POST", b"/", [H, b"Content-Length: 5", b"Content-Length: 6"], b"hello", b"hello"),
    "content-length-and-chunked": build(
        "pinned", "POST", b"/", [H, b"Content-Length: 5", b"Transfer-Encoding: chunked"],
        b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
    "query-holding-a-url": build("pinned", "GET", b"/q?next=https://x.test/other", [H], b"", b""),
    "path-holding-a-url": build("pinned", "GET", b"/a/http://b.test/c", [H], b"", b""),
    "gzip-then-chunked": build(
        "pinned", "POST", b"/", [H, b"Transfer-Encoding: gzip, chunked"], b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
    "chunked-then-gzip-in-two-lines": build(
        "pinned", "POST", b"/", [H, b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip"],
        b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
    "chunked-twice": build(
        "pinned", "POST", b"/", [H, b"Transfer-Encoding: chunked, chunked"], b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
    "identity": build("pinned", "POST", b"/", [H, b"Transfer-Encoding: identity"], b"hello", b"hello"),
    "chunk-size-underscore": build(
        "pinned", "POST", b"/", [H, b"Transfer-Encoding: chunked"], b"1_0\r\n0123456789abcdef\r\n0\r\n\r\n",
        b"0123456789abcdef"),
    "chunk-size-bare-lf": build(
        "pinned", "POST", b"/", [H, b"Transfer-Encoding: chunked"], b"5\nhello\r\n0\r\n\r\n", b"hello"),
    "obs-fold-transfer-encoding": build(
        "pinned", "POST", b"/", [H, b"Transfer-Encoding:\r\n chunked"], b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
    "space-before-colon": build(
        "pinned", "POST", b"/", [H, b"Content-Length : 5"], b"hello", b"hello"),
    # An Upgrade the origin never accepted must not turn the connection into a raw tunnel: the next
    # request (for another host) would reach the origin unread by the edge.
    "upgrade-not-accepted-then-other-host": build(
        "pinned", "GET", b"/", [H, b"Upgrade: websocket"], b"", b"", canary_host=b"other.example.test"),
    "chunked-with-extensions-and-trailer": build(
        "pinned", "PUT", b"/x?y=1", [H, b"Transfer-Encoding: chunked"],
        b'3;a=b\r\nhel\r\n2;n="q;v"\r\nlo\r\n0\r\nX-Trailer: 1\r\n\r\n', b"hello"),
}


PINNED = {name: replace(case, label=f"pinned:{name}") for name, case in PINNED.items()}


@pytest.mark.parametrize("name", PINNED)
def test_pinned_request(stack: Stack, name: str) -> None:
    check(stack, PINNED[name])
