"""The one admission step (edge.http.policy.Admission, port80): Host, route, access rules and the
forward_auth question as one decision, the way both HTTP servers and port 80 ask it.  No sockets."""

from __future__ import annotations

import base64
import subprocess
import textwrap

import pytest

from edge.config import load
from edge.config.access import Limiter
from edge.config.routes import RouteTable
from edge.http.policy import (
    MISDIRECTED, NO_ROUTE, Admission, Answer, Ask, AuthQuestion, Forward, Guard, HandOver, PasswordCheck, Passed,
    Refusal, host_entry, port80,
)

CONFIG = """
[backends.web]
servers = ["http://127.0.0.1:8000"]
[backends.admin]
servers = ["http://127.0.0.1:8001"]
[backends.acme]
servers = ["127.0.0.1:8089"]
[backends.plain]
servers = ["127.0.0.1:8080"]

[[routes]]
name = "site"
hosts = ["a.test"]
tls = "edge"
backend = "web"

[[routes]]
name = "admin"
hosts = ["a.test"]
paths = ["/admin/"]
tls = "edge"
backend = "admin"
basic_auth = { file = "users", realm = "Admin" }
user_header = "Remote-User"
http = "deny"

[[routes]]
name = "sso"
hosts = ["sso.test"]
tls = "edge"
backend = "web"
strip_prefix = "/app"
paths = ["/app/"]
forward_auth = { url = "http://127.0.0.1:9091/check", copy_headers = ["Remote-User"] }

[[routes]]
name = "office"
hosts = ["office.test"]
tls = "edge"
backend = "web"
allow = ["192.0.2.0/24"]

[[routes]]
name = "open"
hosts = ["open.test"]
tls = "edge"
backend = "web"
http = "allow"
acme_backend = "acme"

[[routes]]
name = "whole"
hosts = ["whole.test"]
tls = "edge"
backend = "web"
http = "forward"
http_backend = "plain"
"""


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("admission")
    stored = subprocess.run(["openssl", "passwd", "-6", "wonderland"], capture_output=True, text=True,
                            check=True).stdout.strip()
    (folder / "users").write_text(f"alice:{stored}\n")
    path = folder / "edge.toml"
    path.write_text(textwrap.dedent(CONFIG))
    return load(path)


def admission(config, scheme: str = "https", sni: str | None = None, client: str = "198.51.100.7") -> Admission:
    routes = RouteTable(config.routes)
    guards = {route.name: Guard(route, Limiter(route.rate_limit) if route.rate_limit else None)
              for route in config.routes if route.guarded}
    return Admission(routes, guards, scheme, sni, client, 443, lambda: 100.0)


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


def no_fields():
    raise AssertionError("the headers of a request for an unguarded route are not read")


def fields(*pairs):
    return lambda: list(pairs)


def test_an_unguarded_route_is_the_decision_itself_and_its_headers_are_not_read(config):
    step = admission(config, sni="a.test")
    decision = step.admit(b"a.test", b"GET", "/page", no_fields)
    assert decision.name == "site" and step.host == "a.test"
    again = step.admit(b"a.test", b"GET", "/other", no_fields)  # keep-alive: the same Host, looked up once
    assert again is decision


def test_host_against_sni_is_421(config):
    step = admission(config, sni="a.test")
    assert step.admit(b"open.test", b"GET", "/", no_fields) == MISDIRECTED
    assert step.admit(b"A.TEST:443", b"GET", "/", no_fields).name == "site"  # case and port do not matter
    assert step.admit(b"a.test.", b"GET", "/", no_fields).name == "site"  # nor a final dot


def test_unknown_missing_and_invalid_hosts(config):
    step = admission(config)
    assert step.admit(b"nowhere.test", b"GET", "/", no_fields) == NO_ROUTE
    missing = step.admit(None, b"GET", "/", no_fields)
    assert missing.status == 400 and missing.close
    assert step.admit(b"", b"GET", "/", no_fields).status == 400
    for hostile in (b"a.test/evil", b"a.test:", b"a b", b"[::1", b"a.test:80:80", b"a.test\x00"):
        bad = step.admit(hostile, b"GET", "/", no_fields)
        assert (bad.status, bad.close) == (400, True), hostile
    assert step.admit(b"a.test", b"GET", "/", no_fields).name == "site"  # nothing of the bad one is kept


@pytest.mark.parametrize("path", ["/admin/", "/%61dmin/x", "/%2561dmin/", "//admin/x", "/x/../admin/y",
                                  "/./admin/", "/admin/?q=1"])
def test_a_guarded_prefix_cannot_be_walked_around(config, path):
    decision = admission(config).admit(b"a.test", b"GET", path, fields())
    if path == "/%2561dmin/":  # decoded once, as a backend does: "/%61dmin/" is not the guarded prefix
        assert decision.name == "site"
        return
    assert type(decision) is Answer and decision.status == 401 and decision.route.name == "admin"
    assert decision.headers == (("www-authenticate", 'Basic realm="Admin"'),)


def test_two_authorization_headers_are_no_credentials(config):
    """Edge must not check one while a backend reads the other (pass_authorization)."""
    right = basic("alice", "wonderland")
    step = admission(config)
    decision = step.admit(b"a.test", b"GET", "/admin/", fields((b"authorization", right), (b"authorization", right)))
    assert type(decision) is Answer and decision.status == 401


def test_basic_auth_asks_for_hashing_then_forwards_as_the_user(config):
    step = admission(config)
    decision = step.admit(b"a.test", b"GET", "/admin/", fields((b"authorization", basic("alice", "wonderland"))))
    assert type(decision) is Ask and type(decision.question) is PasswordCheck and decision.route.name == "admin"
    check = decision.question
    users = check.guard.route.basic_auth.users
    right = users.compute(check.user, check.password)  # as the worker thread does (edge.http.password_checks)
    users.remember(check.user, check.password, right)
    judged = check.guard.judged(check.key, check.user, right, 100.0)
    forward = decision.answered(Passed(judged.add, judged.user))
    assert type(forward) is Forward and forward.admitted.user == "alice"
    assert forward.admitted.add == ((b"remote-user", b"alice"),)
    assert {b"authorization", b"remote-user", b"remote_user"} <= forward.admitted.drop
    known = step.admit(b"a.test", b"GET", "/admin/", fields((b"authorization", basic("alice", "wonderland"))))
    assert type(known) is Forward and known.admitted.user == "alice"  # remembered: no second hashing


def test_forward_auth_is_asked_about_the_request_as_sent(config):
    step = admission(config, client="2001:db8::7")
    sent = [(b"cookie", b"session=1"), (b"remote-user", b"forged")]
    decision = step.admit(b"SSO.test:443", b"POST", "/app/x?y=1", fields(*sent))
    assert type(decision) is Ask and decision.route.name == "sso"
    assert decision.question == AuthQuestion(decision.route.forward_auth, "POST", "https", "SSO.test:443",
                                             "/app/x?y=1", "2001:db8::7", sent)  # before strip_prefix
    assert {b"remote-user", b"remote_user"} <= decision.admitted.drop  # a client's own copy cannot pass
    assert decision.answered(None) is None  # no answer: 503, failing closed
    refusal = Refusal(302, [(b"location", b"https://login.test/")], b"")
    assert decision.answered(refusal) is refusal
    forward = decision.answered(Passed(((b"remote-user", b"bob"),), "bob"))
    assert type(forward) is Forward and forward.admitted.user == "bob"
    assert forward.admitted.add == ((b"remote-user", b"bob"),) and forward.admitted.ask is None


def test_address_rules_refuse_with_the_route_named(config):
    refused = admission(config, client="203.0.113.9").admit(b"office.test", b"GET", "/", fields())
    assert refused.status == 403 and refused.route.name == "office"  # its response rules and log line
    assert admission(config, client="192.0.2.44").admit(b"office.test", b"GET", "/", fields()).route.name == "office"


def test_plain_http_on_the_proxy(config):
    """Requests on a connection port 80 handed over (``http = "allow"``) are decided per request."""
    step = admission(config, scheme="http")
    assert step.admit(b"open.test", b"GET", "/", no_fields).name == "open"
    moved = step.admit(b"a.test:80", b"GET", "/x?y", no_fields)
    assert moved.status == 308 and moved.location == "https://a.test/x?y"
    assert step.admit(b"a.test", b"GET", "/admin/", no_fields).status == 404  # http = "deny"


def port80_for(config, host: str, path: str, door: bool = True):
    entry = host_entry(RouteTable(config.routes), host)[1]
    return port80(entry, host, path, 8443, door)


def test_port80_decisions(config):
    allow = port80_for(config, "open.test", "/")
    assert type(allow) is HandOver and allow.backend is None and allow.route.name == "open"
    on_443 = port80_for(config, "open.test", "/", door=False)  # plain HTTP arriving on 443: only redirected
    assert on_443.status == 308 and on_443.location == "https://open.test:8443/"
    whole = port80_for(config, "whole.test", "/any")
    assert whole == HandOver(whole.route, "plain", True)  # past the route's allow/deny and conn_limit first
    denied = port80_for(config, "a.test", "/admin/x")
    assert denied.status == 404 and denied.route.name == "admin"
    unknown = port80_for(config, "nowhere.test", "/p?q")
    assert unknown.status == 308 and unknown.location == "https://nowhere.test:8443/p?q" and unknown.route is None


def test_port80_acme_challenges_go_to_the_acme_backend(config):
    challenge = port80_for(config, "open.test", "/.well-known/acme-challenge/token", door=False)
    assert challenge == HandOver(challenge.route, "acme", False)
    # a path no route has still takes the host's ACME and plain-HTTP settings (its shortest prefix)
    deny = port80_for(config, "a.test", "/.well-known/acme-challenge/token")
    assert deny.status == 308 and deny.route.name == "site"
