"""Several edges, one set of certificates: two real edges share a state_dir, then a real redis-server.
Against Debian's pebble, whose validations go to the edge that did not order."""

from __future__ import annotations

import datetime
import hashlib
import socket
import ssl
import time

import trustme

from tests.support.acme import Pebble
from tests.support.edge import Edge
from tests.support.procs import free_port
from tests.support.redis import RedisServer
from tests.support.relay import PatientRelay
from tests.e2e.test_acme import HOSTS, acme_body, dns, fetch, origin  # noqa: F401 (fixtures)


def fingerprint(port: int, host: str) -> str:
    """SHA-256 of the leaf certificate the edge on ``port`` serves for ``host``."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()


def wait_served(edge: Edge, host: str, timeout: float = 90) -> None:
    """Wait until ``edge`` serves an ACME certificate for ``host``: its own, or one from the storage."""
    deadline = time.monotonic() + timeout
    while True:
        log = edge.log()
        if f"certificate for {host} obtained from ACME" in log or f"certificate for {host} updated from shared" in log:
            return
        assert time.monotonic() < deadline, f"{host} not served:\n{log}"
        time.sleep(0.05)


def two_edges(start, tmp_path, ca, dns, origin, challenge: str, storage: str = "", shared_state: bool = True):
    """Edge ``first`` starts ordering a.example.test; then ``second`` starts.  pebble validates at the
    second edge's ports, so the first edge's order is answered by the edge that did not start it (b is
    ordered by whichever edge takes its lock first)."""
    first_ports = {"http": free_port(), "https": free_port()}
    second_ports = {"http": free_port(), "https": free_port()}
    # the second edge is not started yet: validations wait for it in a relay instead of failing at once
    http, https = start(PatientRelay, second_ports["http"]), start(PatientRelay, second_ports["https"])
    pebble = start(Pebble, tmp_path, ca, dns.dns_port, http.port, https.port)
    body = acme_body(origin, pebble.directory, ca, challenge) + storage
    state = tmp_path / "shared-state" if shared_state else None
    first = start(Edge, tmp_path / "first", body, ports=first_ports, state_dir=state)
    first.wait_log(f"ordering a certificate for {HOSTS[0]}", timeout=30)
    second = start(Edge, tmp_path / "second", body, ports=second_ports, state_dir=state)
    for edge in (first, second):
        for host in HOSTS:
            wait_served(edge, host)
    assert (http if challenge == "http-01" else https).relayed >= 1  # pebble reaches the second edge only
    return pebble, first, second


def assert_one_order_per_name_and_the_same_certificates(pebble, first, second, tmp_path) -> None:
    assert pebble.count("Added order") == len(HOSTS), pebble.log()
    for host in HOSTS:
        ordered = [e.log().count(f"ordering a certificate for {host}") for e in (first, second)]
        assert sum(ordered) == 1, (host, ordered)
    assert first.log().count("ordering a certificate for") + second.log().count("ordering a certificate for") == 2
    root = pebble.root_pem()
    for host in HOSTS:
        prints = {fingerprint(e.https_port, host) for e in (first, second)}
        assert len(prints) == 1, host
        for edge in (first, second):
            result = fetch(edge.https_port, host, root, tmp_path)
            assert result.returncode == 0, result.stderr
            assert result.stdout == f"origin for {host}\n"
    for edge in (first, second):
        assert "Traceback" not in edge.log(), edge.log()
        assert "failed" not in edge.log(), edge.log()


def test_two_edges_sharing_a_state_dir_order_each_name_once(start, tmp_path, ca, dns, origin):
    """File backend: the lock files decide who orders; the other edge waits, then serves what was stored.
    The CA's HTTP-01 validation of the first edge's order is answered by the second.  A pair put in the
    storage later (a renewal by another edge) is picked up by both within a minute, without a restart."""
    pebble, first, second = two_edges(start, tmp_path, ca, dns, origin, "http-01")
    assert f"is ordering the certificate for {HOSTS[0]}; waiting for it" in second.log()
    assert f"certificate for {HOSTS[0]} updated from shared storage" in second.log()
    # pebble asked the second edge for the first edge's token: answered from the shared storage
    assert f"GET {HOSTS[0]}/.well-known/acme-challenge/" in second.log()
    assert f"GET {HOSTS[0]}/.well-known/acme-challenge/" not in first.log()
    assert_one_order_per_name_and_the_same_certificates(pebble, first, second, tmp_path)
    state = tmp_path / "shared-state" / "acme"
    certs = list(state.glob("*/certs"))[0]
    assert not list(certs.parent.glob("locks/*.lock")), "locks are released"
    assert not [p for p in certs.parent.glob("challenges/**/*") if p.is_file()], "answers are removed"

    # Another edge renewed a.example.test: both pick it up from the storage without a restart.
    renewer = trustme.CA()
    now = datetime.datetime.now(datetime.timezone.utc)
    renewed = renewer.issue_cert(HOSTS[0], not_before=now - datetime.timedelta(minutes=1),
                                 not_after=now + datetime.timedelta(days=3650))
    (certs / f"{HOSTS[0]}.pem").write_bytes(renewed.private_key_pem.bytes() + renewed.cert_chain_pems[0].bytes())
    for edge in (first, second):
        deadline = time.monotonic() + 70
        while edge.log().count(f"certificate for {HOSTS[0]} updated from shared storage") < \
                (2 if edge is second else 1):
            assert time.monotonic() < deadline, edge.log()
            time.sleep(0.1)
    expected = hashlib.sha256(ssl.PEM_cert_to_DER_cert(renewed.cert_chain_pems[0].bytes().decode())).hexdigest()
    for edge in (first, second):
        assert fingerprint(edge.https_port, HOSTS[0]) == expected


def test_two_edges_sharing_redis_order_each_name_once(start, tmp_path, ca, dns, origin):
    """Redis backend (with a password from a file): SET NX PX locks decide who orders; the CA's TLS-ALPN-01
    validation of the first edge's order is answered by the second, from the answer kept in Redis."""
    password = "s3cret-for-tests"
    server = start(RedisServer, tmp_path, password=password)
    (tmp_path / "redis-password").write_text(password + "\n")
    storage = f'\n[storage]\nredis = "{server.url}"\npassword_file = "{tmp_path / "redis-password"}"\n'
    pebble, first, second = two_edges(start, tmp_path, ca, dns, origin, "tls-alpn-01", storage, shared_state=False)
    # the first edge's order was validated (pebble's TLS-ALPN-01 port leads to the second edge only)
    assert f"certificate for {HOSTS[0]} obtained from ACME" in first.log()
    assert f"is ordering the certificate for {HOSTS[0]}; waiting for it" in second.log()
    assert_one_order_per_name_and_the_same_certificates(pebble, first, second, tmp_path)
    import redis

    client = redis.Redis.from_url(server.url, password=password)
    try:
        keys = sorted(k.decode() for k in client.keys("edge:*"))
    finally:
        client.close()
    assert any(k.endswith(f"/certs/{HOSTS[0]}.pem") for k in keys), keys
    assert not [k for k in keys if "/locks/" in k and not k.endswith("account.lock")], keys
    assert not [k for k in keys if "/challenges/" in k], keys
    for edge in (first, second):  # nothing ACME keeps lives in the edges' own state_dirs
        assert not list((edge.config.parent / "state").rglob("*.pem"))
