"""Let's Encrypt over ACME, against Debian's pebble: HTTP-01, TLS-ALPN-01, restart, renewal, outages."""

from __future__ import annotations

import datetime
import time
import socket
import ssl
import stat
import subprocess

import pytest
import trustme

from tests.support.acme import ChallTestSrv, Pebble
from tests.support.edge import Edge
from tests.support.procs import free_port, wait_listening
from tests.support.servers import Nginx

HOSTS = ("a.example.test", "b.example.test")


@pytest.fixture
def origin(start, tmp_path):
    port = free_port()
    server = start(Nginx, tmp_path, f'server {{ listen 127.0.0.1:{port}; return 200 "origin for $host\\n"; }}')
    wait_listening(port, proc=server.proc)
    return port


@pytest.fixture
def dns(start, tmp_path):
    return start(ChallTestSrv, tmp_path)


def acme_body(origin: int, pebble_directory: str, ca, challenge: str = "http-01") -> str:
    return f"""
    [acme]
    email = "owner@example.test"
    directory = "{pebble_directory}"
    ca_bundle = "{ca.ca_pem}"
    challenge = "{challenge}"
    retry = "1s"
    [backends.web]
    servers = ["http://127.0.0.1:{origin}"]
    [[routes]]
    hosts = {list(HOSTS)!r}
    tls = "edge"
    backend = "web"
    """.replace("'", '"')


def fetch(port: int, host: str, root: str, tmp_path) -> subprocess.CompletedProcess:
    bundle = tmp_path / "pebble-root.pem"
    bundle.write_text(root)
    return subprocess.run(["curl", "-sS", "--max-time", "10", "--resolve", f"{host}:{port}:127.0.0.1",
                           "--cacert", str(bundle), f"https://{host}:{port}/"], capture_output=True, text=True)


def read_response(sock) -> bytes:
    """One HTTP/1.1 response with a Content-Length, read off a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(4096)
    return head + b"\r\n\r\n" + body


def state_certs(edge: Edge):
    return list((edge.config.parent / "state" / "acme").glob("*/certs"))[0]


def test_http01_obtains_and_serves_certificates(start, tmp_path, ca, dns, origin):
    ports = {"http": free_port(), "https": free_port()}
    pebble = start(Pebble, tmp_path, ca, dns.dns_port, ports["http"], ports["https"])
    edge = start(Edge, tmp_path / "edge", acme_body(origin, pebble.directory, ca), ports=ports)
    for host in HOSTS:
        edge.wait_log(f"certificate for {host} obtained from ACME", timeout=60)
    root = pebble.root_pem()
    for host in HOSTS:
        result = fetch(edge.https_port, host, root, tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"origin for {host}\n"
    certs = state_certs(edge)
    for path in list(certs.glob("*.pem")) + list(certs.parent.glob("account.key")):  # a .pem holds the key too
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert len(list(certs.glob("*.pem"))) == 2

    # A restart reuses the account and the certificates: no new order.
    orders = pebble.count("POST /finalize-order/")
    assert orders == 2
    ordered = edge.log().count("ordering a certificate")
    edge.stop()
    again = start(Edge, tmp_path / "edge", acme_body(origin, pebble.directory, ca), ports=ports)
    again.wait_log("certificate for b.example.test: ACME, expires")
    assert fetch(again.https_port, "a.example.test", root, tmp_path).returncode == 0
    assert again.log().count("ordering a certificate") == ordered  # the log file is appended to
    assert pebble.count("POST /finalize-order/") == orders


def test_tls_alpn01_without_a_port_80_listener(start, tmp_path, ca, dns, origin):
    ports = {"https": free_port()}
    pebble = start(Pebble, tmp_path, ca, dns.dns_port, free_port(), ports["https"])
    edge = start(Edge, tmp_path / "edge", acme_body(origin, pebble.directory, ca, "tls-alpn-01"), http=False, ports=ports,
                 log_format="json")
    for host in HOSTS:
        edge.wait_log(f"certificate for {host} obtained from ACME", timeout=60)
    result = fetch(edge.https_port, "b.example.test", pebble.root_pem(), tmp_path)
    assert result.returncode == 0, result.stderr
    # The validations' own connections are logged like any other (they used to leave no line and no metric).
    deadline = time.monotonic() + 10
    while (validated := {ev["sni"] for ev in edge.events() if ev.get("tls_mode") == "acme-tls/1"}) != set(HOSTS):
        assert time.monotonic() < deadline, edge.events()
        time.sleep(0.05)


def test_outage_backoff_recovery_and_live_swap(start, tmp_path, ca, dns, origin):
    """Pebble is down: the edge serves the old, nearly expired certificate and backs off.
    Pebble comes back: the certificate is renewed and swapped while a client stays connected."""
    ports = {"http": free_port(), "https": free_port()}
    pebble_port, management = free_port(), free_port()
    directory = f"https://127.0.0.1:{pebble_port}/dir"
    # Seed state_dir with a certificate two thirds through its life, from another CA.
    old_ca = trustme.CA()
    now = datetime.datetime.now(datetime.timezone.utc)
    old = old_ca.issue_cert("a.example.test", not_before=now - datetime.timedelta(days=20),
                            not_after=now + datetime.timedelta(days=4))
    slug = "".join(c if c.isalnum() else "_" for c in directory.split("://", 1)[-1])[:80]
    certs = tmp_path / "edge" / "state" / "acme" / slug / "certs"
    certs.mkdir(parents=True)
    (certs / "a.example.test.pem").write_bytes(b"".join(b.bytes() for b in old.cert_chain_pems))
    (certs / "a.example.test.key").write_bytes(old.private_key_pem.bytes())
    old_root = tmp_path / "old-root.pem"
    old_ca.cert_pem.write_to_path(str(old_root))

    body = acme_body(origin, directory, ca).replace('hosts = ["a.example.test", "b.example.test"]', 'hosts = ["a.example.test"]')
    edge = start(Edge, tmp_path / "edge", body, ports=ports)
    edge.wait_log("ACME certificate for a.example.test failed: cannot reach the ACME server: Connection refused")
    edge.wait_log("retrying in 2s")  # the back-off doubles
    context = ssl.create_default_context(cafile=str(old_root))
    with socket.create_connection(("127.0.0.1", edge.https_port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="a.example.test") as kept:
            request = b"GET / HTTP/1.1\r\nHost: a.example.test\r\n\r\n"
            kept.sendall(request)
            assert b"origin for a.example.test" in read_response(kept)

            pebble = start(Pebble, tmp_path, ca, dns.dns_port, ports["http"], ports["https"],
                           port=pebble_port, management=management)
            edge.wait_log("certificate for a.example.test obtained from ACME", timeout=90)
            assert fetch(edge.https_port, "a.example.test", pebble.root_pem(), tmp_path).returncode == 0

            kept.sendall(request)  # the old connection carries on with the certificate it started with
            assert b"origin for a.example.test" in read_response(kept)
    assert edge.log().count("Traceback") == 0


def test_wildcard_terminated_host_needs_a_static_certificate(tmp_path, ca):
    from tests.support.edge import run_edge_command

    path = tmp_path / "edge.toml"
    path.write_text('[listen]\nssh = []\nhttp = []\nhttps = []\n[acme]\nemail = "o@example.test"\n'
                    '[backends.w]\nservers = ["http://127.0.0.1:1"]\n'
                    '[[routes]]\nhosts = ["*.example.test"]\ntls = "edge"\nbackend = "w"\n')
    result = run_edge_command(path)
    assert result.returncode != 0
    assert "routes[0].hosts: '*.example.test' needs a static certificate" in result.stderr
