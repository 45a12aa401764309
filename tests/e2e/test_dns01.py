"""ACME DNS-01 against real programs on loopback: BIND 9 authoritative for x.test (updates allowed for a TSIG
key), pebble told to resolve through it, and the edge writing challenge records with each provider."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from tests.support.acme import Pebble
from tests.support.bind import KEY_NAME, Bind
from tests.support.edge import Edge, run_edge_command
from tests.support.procs import Program, free_port, wait_listening
from tests.e2e.test_acme import fetch, origin  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bind(start, tmp_path):
    return start(Bind, tmp_path)


def acme_table(pebble: Pebble, ca, dns: str, challenge: str = "dns-01") -> str:
    return f"""
    [acme]
    email = "owner@example.test"
    directory = "{pebble.directory}"
    ca_bundle = "{ca.ca_pem}"
    challenge = "{challenge}"
    retry = "1s"
    [acme.dns]
    propagation_interval = "100ms"
    propagation_timeout = "60s"
    """ + dns


def rfc2136(bind: Bind, secret_file: Path | None = None) -> str:
    return f"""
    provider = "rfc2136"
    server = "{bind.server}"
    tsig_key_name = "{KEY_NAME}"
    tsig_secret_file = "{secret_file or bind.secret_file}"
    """


def routes(origin: int, *hosts_and_challenges: tuple[list[str], str | None]) -> str:
    text = f"""
    [backends.web]
    servers = ["http://127.0.0.1:{origin}"]
    """
    for hosts, challenge in hosts_and_challenges:
        text += f"""
    [[routes]]
    hosts = {json.dumps(hosts)}
    tls = "edge"
    backend = "web"
    """ + (f'acme_challenge = "{challenge}"\n' if challenge else "")
    return text


def start_pebble(start, tmp_path, ca, bind: Bind) -> tuple[Pebble, dict[str, int]]:
    ports = {"http": free_port(), "https": free_port()}
    return start(Pebble, tmp_path, ca, bind.port, ports["http"], ports["https"]), ports


def assert_served(edge: Edge, pebble: Pebble, tmp_path, *hosts: str) -> None:
    root = pebble.root_pem()
    for host in hosts:
        result = fetch(edge.https_port, host, root, tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"origin for {host}\n"


def hook(tmp_path: Path, bind: Bind) -> Path:
    """lego's exec convention (``hook present|cleanup FQDN VALUE``), done with BIND's own nsupdate.
    While the file ``withhold`` exists next to it, ``present`` writes nothing (the test applies it late)."""
    path = tmp_path / "dns-hook"
    path.write_text(f"""#!/bin/sh
set -e
echo "$@" >> "{tmp_path}/hook.calls"
case "$1" in
  present) op=add; [ -e "{tmp_path}/withhold" ] && exit 0 ;;
  cleanup) op=delete ;;
  *) echo "unknown action $1" >&2; exit 2 ;;
esac
nsupdate -k "{bind.key_file}" <<EOF
server 127.0.0.1 {bind.port}
update $op $2 60 TXT "$3"
send
EOF
""")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_rfc2136_wildcard_and_apex(start, tmp_path, ca, bind, origin):
    """One certificate for *.x.test and x.test through RFC 2136 + TSIG; served for a.x.test, b.x.test and x.test;
    the TXT records are gone afterwards."""
    pebble, ports = start_pebble(start, tmp_path, ca, bind)
    body = acme_table(pebble, ca, rfc2136(bind)) + routes(origin, (["*.x.test"], None), (["x.test"], None))
    edge = start(Edge, tmp_path / "edge", body, ports=ports)
    edge.wait_log("certificate for *.x.test obtained from ACME", timeout=90)
    assert_served(edge, pebble, tmp_path, "a.x.test", "b.x.test", "x.test")
    assert pebble.count("POST /finalize-order/") == 1  # one order: the apex rides with the wildcard
    assert bind.dig("_acme-challenge.x.test") == []
    assert "certificate for x.test obtained" not in edge.log()
    assert not list((tmp_path / "edge" / "state" / "acme").glob("*/dns-pending.json"))
    edge.assert_alive()


def test_exec_hook_with_nsupdate_and_a_cname_delegated_name(start, tmp_path, ca, bind, origin):
    """_acme-challenge.d.x.test is a CNAME to d.delegated.x.test: the hook is called for the target."""
    pebble, ports = start_pebble(start, tmp_path, ca, bind)
    dns = f'provider = "exec"\nprogram = "{hook(tmp_path, bind)}"\nresolvers = ["{bind.server}"]\n'
    body = acme_table(pebble, ca, dns) + routes(origin, (["d.x.test"], None))
    edge = start(Edge, tmp_path / "edge", body, ports=ports)
    edge.wait_log("certificate for d.x.test obtained from ACME", timeout=90)
    assert_served(edge, pebble, tmp_path, "d.x.test")
    calls = (tmp_path / "hook.calls").read_text().splitlines()
    assert [c.split()[:2] for c in calls] == [["present", "d.delegated.x.test."], ["cleanup", "d.delegated.x.test."]]
    assert bind.dig("d.delegated.x.test") == []


def test_propagation_waits_for_a_record_applied_late(start, tmp_path, ca, bind, origin):
    """The hook writes nothing; the edge keeps asking BIND and tells the CA only once the test adds the record."""
    pebble, ports = start_pebble(start, tmp_path, ca, bind)
    (tmp_path / "withhold").touch()
    dns = f'provider = "exec"\nprogram = "{hook(tmp_path, bind)}"\nresolvers = ["{bind.server}"]\n'
    body = acme_table(pebble, ca, dns) + routes(origin, (["late.x.test"], None))
    edge = start(Edge, tmp_path / "edge", body, ports=ports)
    edge.wait_log("waiting for the TXT records to propagate", timeout=60)
    assert "obtained from ACME" not in edge.log()
    _, fqdn, value = (tmp_path / "hook.calls").read_text().split()
    bind.nsupdate(f'update add {fqdn} 60 TXT "{value}"')  # the update arrives late
    edge.wait_log("certificate for late.x.test obtained from ACME", timeout=60)  # pebble validates only once
    assert "the TXT records are served now" in edge.log()
    assert bind.dig("_acme-challenge.late.x.test") == []  # cleanup ran the hook's delete


class AcmeDnsStandIn(Program):
    """tests/support/acme_dns.py: a stand-in for joohoi/acme-dns (not packaged in Debian) speaking its /update API."""

    def __init__(self, tmp: Path, bind: Bind, fulldomain: str) -> None:
        self.port = free_port()
        self.credentials = tmp / "acme-dns.json"
        self.credentials.write_text(json.dumps({"ad.x.test": {
            "username": "c36f50e8-4632-44f0-83fe-e070fef28a10", "password": "htB9mR9DYgcu9bX_afHF62erXaH2TS7bg9KW3F7Z",
            "fulldomain": fulldomain, "subdomain": fulldomain.split(".")[0], "allowfrom": []}}))
        super().__init__([sys.executable, str(ROOT / "tests" / "support" / "acme_dns.py"), str(self.port),
                          str(self.credentials), bind.server, str(bind.secret_file)], tmp / "acme-dns.log")
        wait_listening(self.port, proc=self.proc)


def test_acme_dns_stand_in(start, tmp_path, ca, bind, origin):
    """*.ad.x.test through acme-dns: _acme-challenge.ad.x.test is a CNAME to the account's fulldomain."""
    pebble, ports = start_pebble(start, tmp_path, ca, bind)
    api = start(AcmeDnsStandIn, tmp_path, bind, "0d1e2f.auth.x.test")
    dns = f'provider = "acme-dns"\napi = "http://127.0.0.1:{api.port}"\ncredentials_file = "{api.credentials}"\n' \
          f'resolvers = ["{bind.server}"]\n'
    body = acme_table(pebble, ca, dns) + routes(origin, (["*.ad.x.test"], None))
    edge = start(Edge, tmp_path / "edge", body, ports=ports)
    edge.wait_log("certificate for *.ad.x.test obtained from ACME", timeout=90)
    assert_served(edge, pebble, tmp_path, "one.ad.x.test")
    assert '"POST /update HTTP/1.1" 200' in api.log()


def test_bad_tsig_secret_is_one_line_and_backs_off_while_http01_hosts_get_theirs(start, tmp_path, ca, bind, origin):
    pebble, ports = start_pebble(start, tmp_path, ca, bind)
    wrong = tmp_path / "wrong.secret"
    wrong.write_text("d3Jvbmcgc2VjcmV0IHdyb25nIHNlY3JldCB3cm9uZyE=\n")
    body = acme_table(pebble, ca, rfc2136(bind, wrong), challenge="http-01") \
        + routes(origin, (["*.x.test"], None), (["www.x.test"], None))
    edge = start(Edge, tmp_path / "edge", body, ports=ports)
    edge.wait_log("certificate for www.x.test obtained from ACME", timeout=90)
    log = edge.wait_log("retrying in 2s", timeout=30)  # the back-off doubles
    lines = [line for line in log.splitlines() if "ACME certificate for *.x.test failed" in line]
    assert lines[0].split("failed: ", 1)[1] == (
        f"rfc2136: adding TXT _acme-challenge.x.test (zone x.test) at {bind.server}: the server answered BADSIG "
        f"for key {KEY_NAME} (wrong tsig_secret_file?); retrying in 1s")
    assert "Traceback" not in log
    assert_served(edge, pebble, tmp_path, "www.x.test")
    assert bind.dig("_acme-challenge.x.test") == []


def test_removal_pending_at_stop_is_done_at_the_next_start(start, tmp_path, ca, bind, origin):
    """Stopped while waiting for propagation: the journal keeps the record; the next start removes it."""
    pebble, ports = start_pebble(start, tmp_path, ca, bind)
    (tmp_path / "withhold").touch()
    dns = f'provider = "exec"\nprogram = "{hook(tmp_path, bind)}"\nresolvers = ["{bind.server}"]\n'
    body = acme_table(pebble, ca, dns) + routes(origin, (["stop.x.test"], None))
    edge = start(Edge, tmp_path / "edge", body, ports=ports)
    edge.wait_log("waiting for the TXT records to propagate", timeout=60)
    _, fqdn, value = (tmp_path / "hook.calls").read_text().split()
    bind.nsupdate(f'update add {fqdn} 3600 TXT "other"')  # not the value: the edge keeps waiting
    edge.stop()
    journal = list((tmp_path / "edge" / "state" / "acme").glob("*/dns-pending.json"))
    assert [e["value"] for e in json.loads(journal[0].read_text())] == [value]
    bind.nsupdate(f'update add {fqdn} 60 TXT "{value}"')
    (tmp_path / "withhold").unlink()
    again = start(Edge, tmp_path / "edge", body, ports=ports)
    again.wait_log("removed the leftover TXT record at _acme-challenge.stop.x.test", timeout=30)
    left = bind.dig(fqdn)  # the new order may have written its own value by now
    assert '"other"' in left and f'"{value}"' not in left
    again.wait_log("certificate for stop.x.test obtained from ACME", timeout=60)
    assert bind.dig(fqdn) == ['"other"']


@pytest.mark.parametrize("dns, problem", [
    ('provider = "rfc2136"\nserver = "127.0.0.1:53"\ntsig_key_name = "k"\ntsig_secret_file = "missing.secret"\n',
     "acme.dns.tsig_secret_file: cannot read {dir}/missing.secret: No such file or directory"),
    ('provider = "rfc2136"\nserver = "127.0.0.1:53"\ntsig_key_name = "k"\ntsig_secret_file = "ok.secret"\n'
     'tsig_algorithm = "hmac-sha257"\n',
     "acme.dns.tsig_algorithm: 'hmac-sha257' is not one of 'hmac-sha256', 'hmac-sha384'"),
    ('provider = "rfc2136"\nserver = "127.0.0.1:53"\ntsig_key_name = "k"\ntsig_secret_file = "ok.secret"\n'
     'program = "/bin/true"\n',
     "acme.dns.program: unknown key (expected one of: provider, resolvers, propagation_timeout, "
     "propagation_interval, server, zone, tsig_key_name, tsig_algorithm, tsig_secret_file)"),
    ('provider = "route53"\n', "acme.dns.provider: 'route53' is not one of 'rfc2136', 'acme-dns', 'exec'"),
    ("", 'acme.challenge: "dns-01" needs a DNS provider in [acme.dns]'),
])
def test_config_mistakes_are_one_line_start_up_errors(tmp_path, dns, problem):
    (tmp_path / "ok.secret").write_text("c2VjcmV0\n")
    path = tmp_path / "edge.toml"
    path.write_text('[listen]\nssh = []\nhttp = []\nhttps = []\n'
                    '[acme]\nemail = "o@example.test"\nchallenge = "dns-01"\n'
                    + ("[acme.dns]\n" + dns if dns else "")
                    + '[backends.w]\nservers = ["http://127.0.0.1:1"]\n'
                    '[[routes]]\nhosts = ["*.x.test"]\ntls = "edge"\nbackend = "w"\n')
    result = run_edge_command(path)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert f"{path}: " + problem.format(dir=tmp_path) in lines[0]


def test_route_dns01_without_provider_is_a_config_error(tmp_path):
    path = tmp_path / "edge.toml"
    path.write_text('[listen]\nssh = []\nhttp = []\nhttps = []\n[acme]\nemail = "o@example.test"\n'
                    '[backends.w]\nservers = ["http://127.0.0.1:1"]\n'
                    '[[routes]]\nhosts = ["a.x.test"]\ntls = "edge"\nbackend = "w"\nacme_challenge = "dns-01"\n')
    result = run_edge_command(path)
    assert result.returncode == 2
    assert f'{path}: routes[0].acme_challenge: "dns-01" needs a DNS provider in [acme.dns]' in result.stderr


def test_rfc2136_names_what_the_server_answered(bind):
    """The provider alone against BIND: a zone BIND does not serve (NOTAUTH), a key it does not know (BADKEY)."""
    from edge.acme.dns01 import DnsProblem, Record
    from edge.acme.dns_providers import Rfc2136
    from edge.config import AcmeDnsConfig

    secret = bind.secret_file.read_text().strip()
    record = Record("y.test", "_acme-challenge.y.test", "_acme-challenge.y.test", "v" * 43)
    other_zone = Rfc2136(AcmeDnsConfig("rfc2136", server=("127.0.0.1", bind.port), zone="y.test",
                                       tsig_key_name=KEY_NAME, tsig_secret=secret))
    with pytest.raises(DnsProblem) as caught:
        other_zone.present(record)
    assert str(caught.value) == (f"rfc2136: adding TXT _acme-challenge.y.test (zone y.test) at {bind.server}: "
                                 "the server answered NOTAUTH")
    unknown_key = Rfc2136(AcmeDnsConfig("rfc2136", server=("127.0.0.1", bind.port), tsig_key_name="nobody",
                                        tsig_secret=secret))
    record = Record("x.test", "_acme-challenge.x.test", "_acme-challenge.x.test", "v" * 43)
    with pytest.raises(DnsProblem, match="answered BADKEY for key nobody"):
        unknown_key.present(record)
    assert bind.dig("_acme-challenge.x.test") == []
