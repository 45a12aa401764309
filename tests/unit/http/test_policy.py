"""The routing decision (edge.http.policy): route, or edge's own 404/421/308, max_body and WebSockets."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import given, strategies as st

from edge.config import parse
from edge.http.h1 import BadRequest
from edge.http.policy import (
    MISDIRECTED,
    NO_PLAIN_HTTP,
    NO_ROUTE,
    Answer,
    body_limit,
    decide,
    host_entry,
    https_location,
    is_websocket,
)
from edge.config.routes import RouteTable

CONFIG = """
[backends.web]
servers = ["http://127.0.0.1:8000"]
[backends.api]
servers = ["http://127.0.0.1:8001"]
[backends.admin]
servers = ["http://127.0.0.1:8002"]
[backends.tcp]
servers = ["127.0.0.1:9443"]

[[routes]]              # 0
hosts = ["a.test", "*.a.test"]
tls = "edge"
backend = "web"

[[routes]]              # 1
hosts = ["a.test"]
tls = "edge"
backend = "api"
paths = ["/api/", "/v2/"]
http = "allow"
max_body = 100

[[routes]]              # 2
hosts = ["a.test"]
tls = "edge"
backend = "admin"
paths = ["/api/admin/"]
http = "deny"

[[routes]]              # 3
hosts = ["pass.test"]
tls = "passthrough"
backend = "tcp"

[[routes]]              # 4
hosts = ["open.test"]
tls = "edge"
backend = "web"
http = "allow"

[[routes]]              # 5
hosts = ["only.test"]
tls = "edge"
backend = "web"
paths = ["/app/"]
"""

DEFAULT = CONFIG + """
[[routes]]              # 6
hosts = ["*"]
tls = "edge"
backend = "web"
"""


def table(text: str = CONFIG) -> RouteTable:
    return RouteTable(parse(tomllib.loads(text)).routes)


ROUTES = table()
ROUTES_WITH_DEFAULT = table(DEFAULT)


def decide_for(host_value: str, path: str = "/", scheme: str = "https", sni: str | None = None,
               https_port: int = 443, routes: RouteTable = ROUTES):
    host, entry = host_entry(routes, host_value)
    return decide(entry, host, host_value, path, scheme, sni, https_port)


# -- host_entry --------------------------------------------------------------------------------


def test_host_entry_lower_cases_and_drops_the_port():
    name, entry = host_entry(ROUTES, "A.Test:8443")
    assert name == "a.test"
    assert [route.index for route in entry.routes] == [2, 1, 1, 0]
    name, entry = host_entry(ROUTES, "X.A.TEST.")
    assert name == "x.a.test" and [route.index for route in entry.routes] == [0]


def test_host_entry_unknown_host():
    assert host_entry(ROUTES, "nowhere.test") == ("nowhere.test", None)
    name, entry = host_entry(ROUTES_WITH_DEFAULT, "nowhere.test")
    assert name == "nowhere.test" and entry.routes[0].index == 6


def test_host_entry_ipv6_literal():
    name, entry = host_entry(ROUTES_WITH_DEFAULT, "[2001:DB8::1]:8443")
    assert name == "2001:db8::1" and entry.routes[0].index == 6


@pytest.mark.parametrize("value", ["a b", "a.test:", "a.test:123456", "a/b", "", "[::1", "a.test:80:80", "\"a\""])
def test_host_entry_invalid_host_is_400(value):
    with pytest.raises(BadRequest) as caught:
        host_entry(ROUTES, value)
    assert caught.value.status == 400


# -- decide: 421 -------------------------------------------------------------------------------


def test_host_against_sni_is_421_over_https():
    answer = decide_for("a.test", sni="x.a.test")
    assert answer is MISDIRECTED
    assert answer == Answer(421, "the Host header does not match the TLS server name", None)


def test_host_matching_sni_is_routed():
    route = decide_for("A.Test:443", sni="a.test")  # the port and case of the Host header do not matter
    assert route.index == 0 and route.backend == "web"


def test_421_comes_before_no_route():
    assert decide_for("nowhere.test", sni="a.test") is MISDIRECTED


def test_no_sni_is_not_421():
    assert decide_for("a.test", sni=None).index == 0


def test_sni_is_not_checked_on_plain_http():
    route = decide_for("open.test", scheme="http", sni="a.test")
    assert route.index == 4


# -- decide: 404 -------------------------------------------------------------------------------


def test_no_route_for_the_host_is_404():
    answer = decide_for("nowhere.test")
    assert answer is NO_ROUTE
    assert answer == Answer(404, "no route for this host and path", None)
    assert decide_for("nowhere.test", scheme="http") is NO_ROUTE


def test_no_route_for_the_path_is_404():
    assert decide_for("only.test", "/app/x").index == 5
    assert decide_for("only.test", "/") is NO_ROUTE
    assert decide_for("only.test", "/app") is NO_ROUTE  # a prefix, not a directory name


def test_only_the_path_is_matched_not_the_query():
    routes = table(CONFIG + """
[[routes]]              # 6
hosts = ["q.test"]
tls = "edge"
backend = "web"
paths = ["/find?admin"]
""")
    assert decide_for("q.test", "/find?admin=1", routes=routes) is NO_ROUTE
    assert decide_for("q.test", "/find?admin", routes=routes) is NO_ROUTE


def test_passthrough_route_is_404_for_http_requests():
    assert decide_for("pass.test") is NO_ROUTE
    assert decide_for("pass.test", scheme="http") is NO_ROUTE


def test_the_default_route_catches_unknown_hosts():
    assert decide_for("nowhere.test", routes=ROUTES_WITH_DEFAULT).index == 6


# -- decide: paths -----------------------------------------------------------------------------


@pytest.mark.parametrize("path, index", [
    ("/", 0), ("/index.html", 0), ("/api", 0), ("/api/", 1), ("/api/x?y=1", 1), ("/v2/", 1),
    ("/api/admin/", 2), ("/api/admin/users?id=3", 2), ("/api/administrator", 1), ("/api/?q=/api/admin/", 1),
])
def test_longest_path_prefix_wins(path, index):
    route = decide_for("a.test", path)
    assert route.index == index


# -- decide: plain HTTP ------------------------------------------------------------------------


def test_redirect_to_https():
    answer = decide_for("a.test", "/x?y=1", scheme="http")
    assert answer == Answer(308, "Redirecting to https://a.test/x?y=1", "https://a.test/x?y=1")


def test_redirect_to_another_https_port_keeps_the_host_as_sent():
    answer = decide_for("A.Test:8080", "/p", scheme="http", https_port=8443)
    assert answer == Answer(308, "Redirecting to https://A.Test:8443/p", "https://A.Test:8443/p")


def test_redirect_for_an_ipv6_host():
    answer = decide_for("[2001:db8::1]:80", "/", scheme="http", routes=ROUTES_WITH_DEFAULT)
    assert answer.status == 308 and answer.location == "https://[2001:db8::1]/"
    answer = decide_for("[2001:db8::1]", "/q", scheme="http", https_port=8443, routes=ROUTES_WITH_DEFAULT)
    assert answer.location == "https://[2001:db8::1]:8443/q"


def test_deny_is_404():
    answer = decide_for("a.test", "/api/admin/x", scheme="http")
    assert answer is NO_PLAIN_HTTP
    assert answer == Answer(404, "no route for this host and path", None)
    assert decide_for("a.test", "/api/admin/x", scheme="https").index == 2


def test_allow_is_the_route():
    route = decide_for("a.test", "/api/x", scheme="http")
    assert route.index == 1 and route.http == "allow" and route.backend == "api"
    assert decide_for("open.test", "/", scheme="http").index == 4


def test_https_is_never_redirected():
    route = decide_for("a.test", "/x", scheme="https")
    assert route.index == 0 and route.http == "redirect"


def test_decide_returns_the_table_route_itself():
    host, entry = host_entry(ROUTES, "a.test")
    assert decide(entry, host, "a.test", "/api/x", "https", "a.test", 443) is entry.match("/api/x")


@pytest.mark.parametrize("host, path, port, location", [
    ("a.test", "/", 443, "https://a.test/"),
    ("a.test:80", "/x?y", 443, "https://a.test/x?y"),
    ("a.test:8080", "/", 8443, "https://a.test:8443/"),
    ("a.test", "/", 8443, "https://a.test:8443/"),
    ("[::1]", "/", 443, "https://[::1]/"),
    ("[::1]:8080", "/z", 443, "https://[::1]/z"),
    ("[2001:db8::1]:80", "/", 4443, "https://[2001:db8::1]:4443/"),
    ("127.0.0.1:80", "/", 443, "https://127.0.0.1/"),
])
def test_https_location(host, path, port, location):
    assert https_location(host, path, port) == location


@given(name=st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}", fullmatch=True),
       sent_port=st.none() | st.integers(1, 65535), port=st.integers(1, 65535),
       path=st.from_regex(r"/[A-Za-z0-9/._~%?=&-]{0,40}", fullmatch=True))
def test_https_location_property(name, sent_port, port, path):
    host = name if sent_port is None else f"{name}:{sent_port}"
    location = https_location(host, path, port)
    authority = name if port == 443 else f"{name}:{port}"
    assert location == f"https://{authority}{path}"


# -- body_limit --------------------------------------------------------------------------------


def test_body_limit():
    api = decide_for("a.test", "/api/")
    assert api.max_body == 100
    assert body_limit(api, None) == 100  # chunked: the relay counts
    assert body_limit(api, 0) == 100
    assert body_limit(api, 100) == 100
    with pytest.raises(BadRequest) as caught:
        body_limit(api, 101)
    assert caught.value.status == 413
    assert str(caught.value) == "request body larger than this route allows"


def test_no_body_limit():
    web = decide_for("a.test", "/")
    assert web.max_body is None
    assert body_limit(web, None) is None
    assert body_limit(web, 10**15) is None


# -- is_websocket ------------------------------------------------------------------------------


@pytest.mark.parametrize("version, has_body, tokens, upgrade, expected", [
    ("1.1", False, {b"upgrade"}, b"websocket", True),
    ("1.1", False, {b"upgrade", b"keep-alive"}, b"WebSocket", True),
    ("1.1", False, {b"upgrade"}, b"WEBSOCKET", True),
    ("1.0", False, {b"upgrade"}, b"websocket", False),  # HTTP/1.0 has no Upgrade
    ("2", False, {b"upgrade"}, b"websocket", False),
    ("1.1", True, {b"upgrade"}, b"websocket", False),  # a body: not a handshake
    ("1.1", False, set(), b"websocket", False),  # Upgrade not listed in Connection
    ("1.1", False, {b"keep-alive"}, b"websocket", False),
    ("1.1", False, {b"upgrade"}, None, False),  # no Upgrade header
    ("1.1", False, {b"upgrade"}, b"h2c", False),
    ("1.1", False, {b"upgrade"}, b"websocket, h2c", False),
    ("1.1", False, {b"upgrade"}, b"", False),
    ("1.1", True, set(), None, False),
])
def test_is_websocket(version, has_body, tokens, upgrade, expected):
    assert is_websocket(version, has_body, tokens, upgrade) is expected
