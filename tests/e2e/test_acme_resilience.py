"""ACME that survives what a user's box does to it: stops mid-order, corrupt state, crashes between
writes, reloads mid-order, a flaky CA.  Real pebble, faults injected with its own environment variables."""

from __future__ import annotations

import re
import time

from tests.support.acme import Pebble
from tests.support.edge import Edge
from tests.support.procs import free_port
from tests.e2e.test_acme import HOSTS, acme_body, dns, fetch, origin  # noqa: F401 (fixtures)

DRAIN = 2.0


def wait_count(program, text: str, count: int, timeout: float = 60) -> None:
    """Wait until ``text`` is in ``program``'s log ``count`` times (a restarted edge appends to it)."""
    deadline = time.monotonic() + timeout
    while program.log().count(text) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not {count} times in the log:\n{program.log()}")
        time.sleep(0.05)


def wait_exit(program, timeout: float) -> float:
    """Seconds until ``program`` exited; AssertionError if it is still running after ``timeout``."""
    began = time.monotonic()
    while program.proc.poll() is None:
        if time.monotonic() - began > timeout:
            raise AssertionError(f"still running {timeout:g}s after SIGTERM:\n{program.log()}")
        time.sleep(0.05)
    return time.monotonic() - began


def test_sigterm_during_a_validation_exits_within_the_drain_time(start, tmp_path, ca, dns, origin):
    """pebble's VA sleeps before validating: the order is polling its authorization when SIGTERM comes."""
    ports = {"http": free_port(), "https": free_port()}
    pebble = start(Pebble, tmp_path, ca, dns.dns_port, ports["http"], ports["https"],
                   env={"PEBBLE_VA_NOSLEEP": None, "PEBBLE_VA_SLEEPTIME": "40"})
    edge = start(Edge, tmp_path / "edge", acme_body(origin, pebble.directory, ca), ports=ports,
                 timeouts=f'inspect = "2s"\nconnect = "2s"\ndrain = "{DRAIN:g}s"')
    # Both hosts are ordered one after the other: wait for a validation that sleeps long enough.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(int(n) >= 5 for n in re.findall(r"Sleeping for (\d+)", pebble.log())):
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"no validation in flight:\n{pebble.log()}")
    assert "obtained from ACME" not in edge.log() or "ordering a certificate for b.example.test" in edge.log()
    edge.proc.send_signal(15)
    took = wait_exit(edge, DRAIN + 5)
    assert edge.proc.returncode in (0, -15), edge.log()  # twist re-raises the signal that stopped it
    assert took < DRAIN + 5
    assert "Traceback" not in edge.log(), edge.log()
    assert "failed" not in edge.log(), edge.log()


def multi_host_body(origin: int, directory: str, ca, hosts, extra: str = "") -> str:
    body = acme_body(origin, directory, ca).replace(f"hosts = {list(HOSTS)!r}".replace("'", '"'),
                                                    f"hosts = {list(hosts)!r}".replace("'", '"'))
    return body.replace('retry = "1s"', 'retry = "1s"\n' + extra) if extra else body


def state_dir_certs(edge: Edge):
    return list((edge.config.parent / "state" / "acme").glob("*/certs"))[0]


CORRUPT = ("good.example.test", "cert-cut.example.test", "key-empty.example.test", "key-other.example.test",
           "chain-cut.example.test")


def test_corrupt_state_never_stops_the_edge(start, tmp_path, ca, dns, origin):
    """Each kind of damage a user's disk can do to state_dir: the edge starts, serves the intact host at
    once, names each bad file, moves it aside and orders that host again; a truncated account key is
    replaced; a certificate deleted while running is ordered again without stopping the other checks."""
    ports = {"http": free_port(), "https": free_port()}
    pebble = start(Pebble, tmp_path, ca, dns.dns_port, ports["http"], ports["https"])
    body = multi_host_body(origin, pebble.directory, ca, CORRUPT, 'check_interval = "2s"')
    first = start(Edge, tmp_path / "edge", body, ports=ports)
    for host in CORRUPT:
        first.wait_log(f"certificate for {host} obtained from ACME", timeout=60)
    first.stop()
    assert pebble.count("POST /finalize-order/") == len(CORRUPT)
    root = pebble.root_pem()

    certs = state_dir_certs(first)
    account = certs.parent / "account.key"
    account.write_bytes(account.read_bytes()[:60])
    from tests.support.acme_state import corrupt
    bad = corrupt(certs, CORRUPT[1:])

    edge = start(Edge, tmp_path / "edge", body, ports=ports)
    result = fetch(edge.https_port, CORRUPT[0], root, tmp_path)  # served from the first moment
    assert result.returncode == 0, result.stderr
    for host, path in bad.items():
        edge.wait_log(f"stored ACME certificate for {host} is unusable: {path}:", timeout=10)
    edge.wait_log(f"ACME account key {account}: ")
    for host in CORRUPT[1:]:
        wait_count(edge, f"certificate for {host} obtained from ACME", 2)
        assert fetch(edge.https_port, host, root, tmp_path).returncode == 0
    assert pebble.count("POST /finalize-order/") == 2 * len(CORRUPT) - 1
    assert len(list(certs.parent.glob("account.key.bad-*"))) == 1
    for host in CORRUPT[1:]:
        assert list(certs.glob(f"{host}.*.bad-*")), host
    assert edge.log().count("ordering a certificate for good.example.test") == 1  # the first edge's order only

    # Deleted while running: the next check notices, orders it again, and checks the others too.
    for path in certs.glob(f"{CORRUPT[0]}.*"):
        path.unlink()
    edge.wait_log(f"stored ACME certificate for {CORRUPT[0]} is gone", timeout=10)
    wait_count(edge, f"certificate for {CORRUPT[0]} obtained from ACME", 2)
    assert fetch(edge.https_port, CORRUPT[0], root, tmp_path).returncode == 0
    assert "Traceback" not in edge.log(), edge.log()


def test_a_pair_is_replaced_as_one_and_the_state_is_private(start, tmp_path, ca, dns, origin):
    """Under umask 000 every directory under state_dir is 0700; a host's key and chain live in one file.
    A crash cut short (a half-written temp file, the old layout's key left beside a new bundle) still
    loads a consistent pair, and the old two-file layout is read without ordering again."""
    import os
    import stat

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from tests.support.acme_state import stored

    ports = {"http": free_port(), "https": free_port()}
    pebble = start(Pebble, tmp_path, ca, dns.dns_port, ports["http"], ports["https"])
    body = acme_body(origin, pebble.directory, ca)
    previous = os.umask(0)
    try:
        first = start(Edge, tmp_path / "edge", body, ports=ports)
        for host in HOSTS:
            first.wait_log(f"certificate for {host} obtained from ACME", timeout=60)
    finally:
        os.umask(previous)
    first.stop()
    state = tmp_path / "edge" / "state"
    # state_dir is traversable (0711) so the local CA's public ca.pem can be read; the rest is private
    assert stat.S_IMODE(state.stat().st_mode) == 0o711
    for directory in [p for p in state.rglob("*") if p.is_dir()]:
        expected = 0o755 if directory.name == "local-ca" else 0o700
        assert stat.S_IMODE(directory.stat().st_mode) == expected, directory
    certs = state_dir_certs(first)
    assert sorted(p.name for p in certs.iterdir()) == [f"{host}.pem" for host in HOSTS]
    for path in certs.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path

    # a: a crash during the next write left half a temp file, and an upgrade left the old layout's key.
    bundle, key, chain = stored(certs, HOSTS[0])
    (certs / f"{HOSTS[0]}.pem.tmp").write_bytes((key + chain)[:500])
    stale = ec.generate_private_key(ec.SECP256R1())
    (certs / f"{HOSTS[0]}.key").write_bytes(stale.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    # b: the layout before bundles, chain and key in two files.
    bundle, key, chain = stored(certs, HOSTS[1])
    bundle.write_bytes(chain)
    (certs / f"{HOSTS[1]}.key").write_bytes(key)

    edge = start(Edge, tmp_path / "edge", body, ports=ports)
    root = pebble.root_pem()
    for host in HOSTS:
        result = fetch(edge.https_port, host, root, tmp_path)
        assert result.returncode == 0, result.stderr
    assert not (certs / f"{HOSTS[0]}.pem.tmp").exists()
    assert "unusable" not in edge.log(), edge.log()
    assert pebble.count("POST /finalize-order/") == len(HOSTS)


def test_a_reload_during_an_order_starts_no_second_one(start, tmp_path, ca, dns, origin):
    """SIGHUP while pebble is validating: the one ACME service takes the new config and carries on;
    pebble sees exactly one order per name, and a host added by the reload is ordered too."""
    import signal

    ports = {"http": free_port(), "https": free_port()}
    pebble = start(Pebble, tmp_path, ca, dns.dns_port, ports["http"], ports["https"],
                   env={"PEBBLE_VA_NOSLEEP": None, "PEBBLE_VA_SLEEPTIME": "8"})
    edge = start(Edge, tmp_path / "edge", acme_body(origin, pebble.directory, ca), ports=ports)
    deadline = time.monotonic() + 60
    while not any(int(n) >= 3 for n in re.findall(r"Sleeping for (\d+)", pebble.log())):
        assert time.monotonic() < deadline, pebble.log()
        time.sleep(0.05)
    added = "c.example.test"
    edge.config.write_text(edge.config.read_text().replace('"b.example.test"]', f'"b.example.test", "{added}"]'))
    edge.proc.send_signal(signal.SIGHUP)
    edge.wait_log("reloaded")
    for host in HOSTS + (added,):
        edge.wait_log(f"certificate for {host} obtained from ACME", timeout=90)
    assert pebble.count("Added order") == 3, pebble.log()
    assert pebble.count("POST /finalize-order/") == 3
    assert "failed" not in edge.log(), edge.log()


def test_renewal_information_is_asked_kept_and_honoured_after_a_restart(start, tmp_path, ca, dns, origin):
    """An ARI-capable directory (a stand-in in front of pebble, whose Debian version has no renewalInfo):
    every certificate's window is asked for and asked again when Retry-After ends, whatever
    check_interval says; the window and Retry-After are kept in state_dir; after a restart the edge asks
    at once and renews early when the CA's window says so."""
    import datetime
    import json

    from cryptography import x509

    from tests.support.ari import AriStandIn

    ports = {"http": free_port(), "https": free_port()}
    pebble = start(Pebble, tmp_path, ca, dns.dns_port, ports["http"], ports["https"])
    ari = start(AriStandIn, tmp_path, ca, pebble.directory)
    ari.set_window(30 * 86400, 31 * 86400, 1)
    body = acme_body(origin, ari.directory, ca)  # check_interval is the default hour
    edge = start(Edge, tmp_path / "edge", body, ports=ports)
    for host in HOSTS:
        edge.wait_log(f"certificate for {host} obtained from ACME", timeout=60)
    deadline = time.monotonic() + 30
    while ari.asked() < 2 * len(HOSTS):  # asked, then asked again once Retry-After (1s) ended
        assert time.monotonic() < deadline, ari.log()
        time.sleep(0.05)

    ari.set_window(30 * 86400, 31 * 86400, 3600)
    certs = state_dir_certs(edge)
    deadline = time.monotonic() + 30
    while True:
        now = datetime.datetime.now(datetime.timezone.utc)
        kept = [json.loads(p.read_text()) for p in certs.glob("*.ari.json")]
        if len(kept) == len(HOSTS) and all(datetime.datetime.fromisoformat(k["ask_again"]) > now
                                           + datetime.timedelta(seconds=3000) for k in kept):
            break
        assert time.monotonic() < deadline, kept
        time.sleep(0.05)
    edge.stop()

    # Hours later (the Retry-After has passed while the edge was down) the CA wants early renewal.
    for path in certs.glob("*.ari.json"):
        kept = json.loads(path.read_text())
        kept["ask_again"] = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1)).isoformat()
        path.write_text(json.dumps(kept))
    # One fixed window, whenever it is asked: it opens after the certificates were issued (pebble's
    # notBefore is the issuance second), so they are due; the renewed ones are issued after it opened, so
    # they are not due again however late (under load) their own renewal information is asked for.
    issued = max(x509.load_pem_x509_certificates(p.read_bytes())[0].not_valid_before_utc
                 for p in certs.glob("*.pem"))
    opened = issued + datetime.timedelta(seconds=1)
    deadline = time.monotonic() + 10
    while datetime.datetime.now(datetime.timezone.utc) < opened + datetime.timedelta(seconds=1.5):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    ari.set_window(opened.timestamp(), opened.timestamp() + 1, 3600, absolute=True)
    asked_before = ari.asked()
    again = start(Edge, tmp_path / "edge", body, ports=ports)
    for host in HOSTS:
        again.wait_log(f"the CA asks for {host} to be renewed early", timeout=60)
        wait_count(again, f"certificate for {host} obtained from ACME", 2, timeout=90)
    # the renewed certificates' own renewal information is asked for (and says: not due) before counting
    deadline = time.monotonic() + 60
    while ari.asked() < asked_before + 2 * len(HOSTS):
        assert time.monotonic() < deadline, ari.log()
        time.sleep(0.05)
    assert pebble.count("POST /finalize-order/") == 2 * len(HOSTS)
    assert "Traceback" not in again.log(), again.log()


def test_bad_nonces_are_retried_within_the_step(start, tmp_path, ca, dns, origin):
    """pebble rejects half the nonces: every step retries with a fresh one, no order fails."""
    ports = {"http": free_port(), "https": free_port()}
    pebble = start(Pebble, tmp_path, ca, dns.dns_port, ports["http"], ports["https"],
                   env={"PEBBLE_WFE_NONCEREJECT": "50"})
    edge = start(Edge, tmp_path / "edge", acme_body(origin, pebble.directory, ca), ports=ports)
    for host in HOSTS:
        edge.wait_log(f"certificate for {host} obtained from ACME", timeout=60)
    assert "Configured to reject 50% of good nonces" in pebble.log()
    assert "failed" not in edge.log(), edge.log()
    # Rejected requests reach pebble's handlers too: count what it did, not what it was sent.
    assert pebble.count("Added order") == len(HOSTS)
    assert pebble.count("Issued certificate serial") == len(HOSTS)  # none issued and then discarded


def test_an_issued_certificate_whose_download_failed_is_fetched_after_a_restart(start, tmp_path, ca, dns, origin):
    """The CA issued, the download was cut off (a stand-in in front of pebble drops it): the order was kept
    in the state before finalizing, so the restarted edge downloads that certificate instead of ordering
    again (a second order would count against Let's Encrypt's duplicate-certificate limit)."""
    from tests.support.ca_proxy import CaProxy

    ports = {"http": free_port(), "https": free_port()}
    pebble = start(Pebble, tmp_path, ca, dns.dns_port, ports["http"], ports["https"])
    proxy = start(CaProxy, tmp_path, ca, pebble.port)
    proxy.block()
    body = acme_body(origin, proxy.directory, ca)
    first = start(Edge, tmp_path / "edge", body, ports=ports)
    for host in HOSTS:
        first.wait_log(f"ACME certificate for {host} failed: cannot reach the ACME server", timeout=60)
    assert pebble.count("Issued certificate serial") == len(HOSTS)
    first.stop()
    orders = list((state_dir_certs(first).parent / "orders").glob("*.json"))
    assert sorted(p.name for p in orders) == [f"{host}.json" for host in HOSTS]

    proxy.unblock()
    again = start(Edge, tmp_path / "edge", body, ports=ports)
    root = pebble.root_pem()
    for host in HOSTS:
        again.wait_log(f"certificate for {host} obtained from ACME", timeout=60)
        assert fetch(again.https_port, host, root, tmp_path).returncode == 0
    assert again.log().count("finishing the order for") == len(HOSTS)
    assert pebble.count("Added order") == len(HOSTS), pebble.log()  # no second new-order for either name
    assert pebble.count("Issued certificate serial") == len(HOSTS)
    assert not list((state_dir_certs(again).parent / "orders").glob("*.json"))  # done: forgotten
    assert "Traceback" not in again.log(), again.log()


def test_two_minute_certificates_are_renewed_with_no_failed_request(start, tmp_path, ca, dns, origin):
    """pebble issues 2-minute certificates; with default settings (check_interval one hour) the edge renews
    each when a third of its life remains, and a curl loop meanwhile never fails."""
    import hashlib
    import socket
    import ssl

    ports = {"http": free_port(), "https": free_port()}
    pebble = start(Pebble, tmp_path, ca, dns.dns_port, ports["http"], ports["https"], validity=120)
    body = acme_body(origin, pebble.directory, ca).replace('retry = "1s"\n', "")
    edge = start(Edge, tmp_path / "edge", body, ports=ports)
    for host in HOSTS:
        edge.wait_log(f"certificate for {host} obtained from ACME", timeout=60)
    root = pebble.root_pem()

    def served(host: str) -> str:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", edge.https_port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()

    first = {host: served(host) for host in HOSTS}
    failures, requests, after = [], 0, 0
    deadline = time.monotonic() + 180  # renewal is due 80 s after issuance
    while after < 20:
        assert time.monotonic() < deadline, edge.log()
        host = HOSTS[requests % len(HOSTS)]
        result = fetch(edge.https_port, host, root, tmp_path)
        requests += 1
        if result.returncode != 0 or result.stdout != f"origin for {host}\n":
            failures.append((host, result.returncode, result.stderr))
        if all(edge.log().count(f"certificate for {h} obtained from ACME") >= 2 for h in HOSTS):
            after += 1  # a few more once both are renewed
    assert failures == [], failures
    assert requests > 100
    for host in HOSTS:
        assert served(host) != first[host]  # the renewed certificate is the one served
    assert "renewing a certificate for" in edge.log()
    assert "failed" not in edge.log(), edge.log()
