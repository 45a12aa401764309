"""The sans-IO access rules: address lists, token buckets, users files, the HTTP policy's Guard, and their config."""

from __future__ import annotations

import base64
import subprocess
import textwrap

import pytest
from hypothesis import given, settings, strategies as st

from edge.config import access
from edge.config.access import AddressRule, Limiter, Rate, TokenBucket, Users, parse_networks, parse_users, sha512_crypt
from edge.config import ConfigError, load
from edge.http.policy import Admitted, Answer, Guard
from tests.support.config import site
from tests.support.edge import run_edge_command


def rule(allow=(), deny=()) -> AddressRule:
    return AddressRule(parse_networks(allow), parse_networks(deny))


def test_address_rules():
    assert rule().permits("192.0.2.1") and not rule()
    home = rule(["198.51.100.0/24", "2001:db8::/32"], ["198.51.100.66"])
    assert home.permits("198.51.100.7") and home.permits("2001:db8:12::1") and home.permits("::ffff:198.51.100.7")
    assert not home.permits("198.51.100.66") and not home.permits("::ffff:198.51.100.66")
    assert not home.permits("8.8.8.8") and not home.permits("not an address")
    assert rule(deny=["::1"]).permits("127.0.0.1") and not rule(deny=["::1"]).permits("::1")
    assert not rule(deny=["fe80::/10"]).permits("fe80::1%eth0")
    with pytest.raises(ValueError, match="'nope' is not an address"):
        parse_networks(["nope"])


@given(st.integers(1, 50), st.floats(0.01, 100), st.integers(1, 50),
       st.lists(st.floats(0, 10), min_size=1, max_size=200))
@settings(max_examples=200, deadline=None)
def test_token_bucket_never_admits_more_than_burst_plus_rate(count, per, burst, steps):
    rate = Rate(count, per, burst)
    bucket = TokenBucket(rate, 0.0)
    now, admitted = 0.0, 0
    for step in steps:
        now += step
        wait = bucket.take(now)
        if wait == 0:
            admitted += 1
        else:
            assert 0 < wait <= rate.interval + 1e-9
            assert bucket.take(now + wait + 1e-6) == 0  # the wait it names is enough
            admitted += 1
            now += wait + 1e-6
    assert admitted <= burst + now / rate.interval + 1e-6


def test_token_bucket_burst_then_rate():
    bucket = TokenBucket(Rate(2, 1.0, 5), 100.0)
    assert [bucket.take(100.0) for _ in range(5)] == [0.0] * 5
    assert bucket.take(100.0) == pytest.approx(0.5)
    assert bucket.take(100.5) == 0.0 and bucket.take(100.5) == pytest.approx(0.5)
    assert [bucket.take(1000.0) for _ in range(6)].count(0.0) == 5  # full again, no more than burst


def test_limiter_table_is_bounded_least_recently_used_first():
    limiter = Limiter(Rate(1, 60.0, 1), max_keys=100)
    assert limiter.take("203.0.113.1", 0.0) == 0.0
    for i in range(10_000):  # a spray of addresses
        limiter.take(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 1.0)
        if i % 50 == 0:
            assert limiter.take("192.0.2.7", 1.0) >= 0  # seen often: kept
    assert len(limiter.buckets) == 100
    assert "192.0.2.7" in limiter.buckets and "203.0.113.1" not in limiter.buckets


@pytest.mark.parametrize("password", ["secret", "a", "x" * 100, "pässwörd"])  # "" is below, from glibc
def test_sha512_crypt_matches_openssl(password):
    stored = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password + "\n", capture_output=True,
                            text=True, check=True).stdout.strip()
    assert sha512_crypt(password.encode(), stored) == stored
    assert sha512_crypt(b"other", stored) != stored


def test_sha512_crypt_with_rounds():
    # glibc's crypt(3) for "hello" with $6$rounds=1234$abcdefgh
    stored = "$6$rounds=1234$abcdefgh$wlMN1ZXW/mlphCk.vmTfCQ/PxdaTm1/y9KkvwKQ6LGb8k/flv2UUGb/iIAQVyLfhFLq3tw0XAJsFl1OHYjGKi0"
    assert sha512_crypt(b"", stored) == stored


def users_file(tmp_path) -> str:
    path = tmp_path / "users"
    subprocess.run(["htpasswd", "-cbB", str(path), "alice", "wonderland"], check=True, capture_output=True)
    from argon2 import PasswordHasher

    six = subprocess.run(["openssl", "passwd", "-6", "builder"], capture_output=True, text=True).stdout.strip()
    return path.read_text() + f"# comment\n\nbob:{six}\ncarol:{PasswordHasher().hash('chess')}\n"


def test_users_file_kinds_and_the_verification_cache(tmp_path, monkeypatch):
    users = Users(parse_users(users_file(tmp_path)))
    assert users.verify("alice", b"wonderland") and users.verify("bob", b"builder") and users.verify("carol", b"chess")
    assert not users.verify("alice", b"wrong") and not users.verify("bob", b"wonderland")
    assert not users.verify("nobody", b"wonderland")
    calls = []
    real = access._check_bcrypt
    monkeypatch.setattr(access, "_check_bcrypt", lambda stored, password: calls.append(1) or real(stored, password))
    for _ in range(10):
        assert users.verify("alice", b"wonderland") and not users.verify("alice", b"wrong")
    assert calls == []  # remembered: bcrypt ran once for each
    small = Users(parse_users(users_file(tmp_path)), cache_size=4)
    assert small.verify("alice", b"wonderland")
    for i in range(10):  # a flood of wrong passwords: their own small cache, the right one stays
        small.verify("alice", str(i).encode())
    assert len(small.failed) == 1 and len(small.cache) == 1
    calls.clear()
    assert small.verify("alice", b"wonderland") and calls == []
    assert all(b"wonderland" not in key for key in users.cache)


def test_a_long_password_is_refused_unhashed_and_unknown_users_cost_the_dearest_hash(tmp_path, monkeypatch):
    users = Users(parse_users(users_file(tmp_path)))
    seen = []
    for name in ("_check_bcrypt", "_check_sha512", "_check_argon2"):
        real = getattr(access, name)
        monkeypatch.setattr(access, name, lambda stored, password, real=real, name=name: seen.append(name)
                            or real(stored, password))
    assert not users.verify("bob", b"A" * 47000) and seen == []  # SHA-512 crypt's cost grows with the length
    assert not users.verify("nobody", b"x")
    assert seen == ["_check_argon2"]  # the file's dearest hash (argon2 here), not a cheap fixed one


def test_rate_limits_count_ipv6_clients_by_their_64():
    assert access.limit_key("2001:db8::1") == access.limit_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert access.limit_key("2001:db8:0:1::1") != access.limit_key("2001:db8::1")
    assert access.limit_key("::ffff:192.0.2.1") == access.limit_key("192.0.2.1") == "192.0.2.1"


@pytest.mark.parametrize("value, problem", [
    ("198.51.100.10/0", "did you mean 0.0.0.0/0"), ("198.51.100.7/24", "did you mean 198.51.100.0/24"),
    ("x", "not an address"),
])
def test_networks_with_bits_beyond_the_prefix_are_refused(value, problem):
    with pytest.raises(ValueError, match=problem):
        access.parse_networks([value])


def test_mapped_ipv6_networks_match_ipv4_clients():
    rule = access.AddressRule(allow=access.parse_networks(["::ffff:198.51.100.0/120"]))
    assert rule.permits("198.51.100.3") and rule.permits("::ffff:198.51.100.3") and not rule.permits("198.51.101.3")


def test_malformed_sha512_lines_are_refused_when_the_file_is_read():
    with pytest.raises(access.UsersFileError, match="malformed SHA-512"):
        parse_users("bob:$6$rounds=abc$salt$" + "x" * 86 + "\n")


@pytest.mark.parametrize("text, problem", [
    ("alice:$apr1$abc$def\n", "line 1 (alice): not a bcrypt"),
    ("alice:plain\n", "line 1 (alice): not a bcrypt"),
    ("# nobody\n", "no users in it"),
    ("just a line\n", "line 1: not \"name:hash\""),
])
def test_users_file_refusals(text, problem):
    with pytest.raises(access.UsersFileError, match=problem.replace("(", r"\(").replace(")", r"\)").replace("$", r"\$")):
        parse_users(text)


def route_config(tmp_path, extra: str, tls: str = "edge"):
    path = tmp_path / "edge.toml"
    server = "http://127.0.0.1:8000" if tls != "passthrough" else "127.0.0.1:8443"
    path.write_text(textwrap.dedent(f"""
        [backends.web]
        servers = ["{server}"]
        [[routes]]
        name = "app"
        hosts = ["app.example.test"]
        tls = "{tls}"
        backend = "web"
        """) + textwrap.dedent(extra))
    return load(path)


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


def decided(guard, verdict, now: float = 0.0):
    """A verdict whose password must be hashed (``ask`` is a PasswordCheck), hashed here as the worker thread
    would (edge.http.password_checks), then judged as the reactor does."""
    check = getattr(verdict, "ask", None)
    if type(check).__name__ != "PasswordCheck":
        return verdict
    users = check.users
    right = users.compute(check.user, check.password)
    users.remember(check.user, check.password, right)
    return guard.judged(check.key, check.user, right, now)


def test_guard_steps_in_order(tmp_path):
    (tmp_path / "users").write_text(users_file(tmp_path))
    config = route_config(tmp_path, """
        allow = ["127.0.0.0/8", "::1"]
        basic_auth = { file = "users", realm = "Home" }
        user_header = "Remote-User"
        rate_limit = { requests = 1, per = "10s", burst = 2 }
        """)
    route = config.routes[0]
    guard = Guard(route, Limiter(route.rate_limit))
    assert guard.check("192.0.2.1", basic("alice", "wonderland"), 0.0) == Answer(403, "access denied")
    challenge = guard.check("127.0.0.1", None, 0.0)
    assert challenge.status == 401 and challenge.headers == (("www-authenticate", 'Basic realm="Home"'),)
    first = guard.check("127.0.0.1", basic("alice", "wonderland"), 0.0)
    assert first.ask.user == "alice"  # not known yet: to be hashed off the reactor
    assert decided(guard, first) == Admitted(
        "alice", frozenset({b"authorization", b"remote-user", b"remote_user"}), ((b"remote-user", b"alice"),))
    limited = guard.check("127.0.0.1", basic("alice", "wonderland"), 0.0)  # before any password is checked
    assert limited.status == 429 and limited.headers == (("retry-after", "10"),)
    assert guard.check("::1", b"Basic !!!", 0.0).status == 401


def test_forward_auth_guard_drops_the_headers_it_copies(tmp_path):
    route = route_config(tmp_path, """
        forward_auth = { url = "http://[::1]:9091/api/authz/forward-auth", copy_headers = ["Remote-User"] }
        """).routes[0]
    auth = route.forward_auth
    assert (auth.host, auth.port, auth.target) == ("::1", 9091, "/api/authz/forward-auth")
    admitted = Guard(route).check("127.0.0.1", None, 0.0)
    assert admitted.ask is auth and admitted.drop == frozenset({b"remote-user", b"remote_user"})


def test_wrong_passwords_are_limited_per_client_before_hashing(tmp_path):
    (tmp_path / "users").write_text(users_file(tmp_path))
    route = route_config(tmp_path, 'basic_auth = "users"\n').routes[0]
    guard = Guard(route)
    for _ in range(10):
        assert decided(guard, guard.check("2001:db8::1", basic("alice", "guess"), 0.0)).status == 401
    limited = guard.check("2001:db8::2", basic("alice", "wonderland"), 0.0)  # the same /64: no more tries
    assert limited.status == 429 and limited.headers == (("retry-after", "6"),)
    assert decided(guard, guard.check("2001:db8:1::1", basic("alice", "wonderland"), 0.0)).user == "alice"
    assert guard.check("2001:db8::2", basic("alice", "wonderland"), 7.0).user == "alice"  # known now, refilled


@pytest.mark.parametrize("extra, tls, message", [
    ('allow = []', "edge", "routes[0].allow: is empty, which would refuse everyone"),
    ('deny = ["198.51.100.0/33"]', "edge", "routes[0].deny: '198.51.100.0/33' is not an address or CIDR network"),
    ('conn_limit = { new = 1, per = "1m" }', "edge", "routes[0].conn_limit: is for passthrough routes"),
    ('rate_limit = { requests = 1, per = "1m" }', "passthrough", "cannot see HTTP requests (use conn_limit)"),
    ('rate_limit = { requests = 1 }', "edge", "routes[0].rate_limit.per: missing"),
    ('rate_limit = { requests = 0, per = "1s" }', "edge", "routes[0].rate_limit.requests: must be a positive integer"),
    ('basic_auth = "missing.htpasswd"', "edge", "routes[0].basic_auth: cannot read"),
    ('user_header = "Remote-User"', "edge", "routes[0].user_header: only applies together with basic_auth"),
    ('forward_auth = { url = "https://auth/" }', "edge", "routes[0].forward_auth.url: must be an http:// URL"),
    ('forward_auth = { url = "http://a/", copy_headers = ["Host"] }', "edge", "'Host' is a header edge sets"),
])
def test_config_refusals(tmp_path, extra, tls, message):
    with pytest.raises(ConfigError) as caught:
        route_config(tmp_path, extra, tls)
    assert message in str(caught.value)


def test_bad_users_file_stops_start_up_in_one_line(tmp_path):
    (tmp_path / "users.htpasswd").write_text("alice:$apr1$x$y\n")
    config = tmp_path / "edge.toml"
    config.write_text(site("http://127.0.0.1:8000", issuer=None, basic_auth="users.htpasswd"))
    result = run_edge_command(config)
    assert result.returncode == 2
    line = f"{config}: routes[0].basic_auth: {tmp_path}/users.htpasswd: line 1 (alice): not a bcrypt"
    assert line in result.stderr and len([l for l in result.stderr.splitlines() if "basic_auth" in l]) == 1, \
        result.stderr


def test_ssh_doors_and_listen_keys(tmp_path):
    path = tmp_path / "edge.toml"
    path.write_text(textwrap.dedent("""
        [listen]
        deny = ["203.0.113.0/24"]
        [ssh]
        backend = "git"
        allow = ["198.51.100.0/24"]
        conn_limit = { new = 10, per = "1m" }
        [backends.git]
        servers = ["127.0.0.1:22"]
        [[doors]]
        name = "alt"
        listen = "127.0.0.1:2222"
        backend = "git"
        deny = ["::1"]
        conn_limit = { new = 3, per = "1h", burst = 5 }
        """))
    config = load(path)
    assert not config.listen.deny.permits("203.0.113.9") and config.listen.deny.permits("192.0.2.1")
    assert config.ssh_addresses.permits("198.51.100.1") and not config.ssh_addresses.permits("192.0.2.1")
    assert config.ssh_conn_limit == Rate(10, 60.0, 10)
    assert config.doors[0].conn_limit == Rate(3, 3600.0, 5) and not config.doors[0].addresses.permits("::1")


def test_gates_refuse_by_address_then_by_rate():
    """The snapshot's TCP gates (passthrough routes, the SSH door, [[doors]]), as the dispatcher and port 80 ask them."""
    gates = access.Gates({"ssh": (rule(allow=["192.0.2.0/24"]), Limiter(Rate(1, 60.0, 2))),
                          "route:open": (rule(), None)})
    assert gates.refused("ssh", "198.51.100.1", 0.0) == "address not allowed"
    assert [gates.refused("ssh", "192.0.2.9", 0.0) for _ in range(3)] == [None, None, "too many connections"]
    assert gates.refused("ssh", "192.0.2.9", 60.0) is None  # refilled
    assert gates.refused("route:open", "203.0.113.5", 0.0) is None and gates.refused("door:none", "::1", 0.0) is None
