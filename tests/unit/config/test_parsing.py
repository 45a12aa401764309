"""Every config mistake stops start-up with one line naming file, key and problem."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from edge.config import ConfigError, load, parse_duration
from tests.support.edge import ROOT, run_edge_command

GOOD = """
[ssh]
backend = "git"
[backends.git]
servers = ["127.0.0.1:22"]
[backends.tls]
servers = ["127.0.0.1:9443"]
[backends.web]
servers = ["http://127.0.0.1:8000"]
[backends.secure]
servers = ["https://127.0.0.1:8001"]
[[routes]]
hosts = ["a.example.test"]
tls = "passthrough"
backend = "tls"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_shipped_example_loads_as_the_contract_says():
    config = load(ROOT / "etc" / "edge.toml")
    assert [str(a) for a in config.listen.ssh] == ["0.0.0.0:22", "[::]:22"]
    assert [str(a) for a in config.listen.https] == ["0.0.0.0:443", "[::]:443"]
    assert config.listen.trusts("10.1.2.3") and not config.listen.trusts("192.0.2.1")
    assert config.timeouts.inspect == 5 and config.timeouts.idle == 3600
    assert config.ssh_backend == "git-ssh"
    kube = config.backends["kube"]
    assert (kube.balance, kube.max_conn, kube.proxy_protocol, len(kube.servers)) == ("leastconn", 128, "v2", 3)
    assert config.backends["git-ssh"].balance == "roundrobin"
    assert config.backends["vault"].servers[0].scheme == "https"
    assert [(r.hosts, r.tls, r.backend, r.acme_backend) for r in config.routes] == [
        (("*.kube.example.tld",), "passthrough", "kube", "kube-http"),
        (("vault.example.tld",), "reencrypt", "vault", None),
        (("prometheus.example.tld",), "edge", "prometheus", None),
    ]


def test_local_example_loads_on_loopback_only():
    config = load(ROOT / "etc" / "edge.local.toml")
    for door in (config.listen.ssh, config.listen.http, config.listen.https):
        assert all(a.host in ("127.0.0.1", "::1") and a.port > 1024 for a in door)


def test_defaults_when_listen_is_absent(tmp_path):
    config = load(write(tmp_path, GOOD))
    assert [str(a) for a in config.listen.http] == ["0.0.0.0:80", "[::]:80"]
    assert config.listen.accept_proxy == ()


@pytest.mark.parametrize(
    "text, key, words",
    [
        ("x = [", "", "invalid TOML"),
        ('bogus = 1', "bogus", "unknown key"),
        ('[edge]\nstat_dir = "/x"', "edge.stat_dir", "unknown key"),
        ('[admin]\nlisten = "127.0.0.1:9090"\ndebug = "yes"', "admin.debug", "true or false"),
        ('[listen]\nhttps = "0.0.0.0:443"', "listen.https", "list of strings"),
        ('[listen]\nhttps = ["0.0.0.0:99999"]', "listen.https", "not a port"),
        ('[listen]\nhttps = ["::1:443"]', "listen.https", "brackets"),
        ('[listen]\nhttps = ["nohost"]', "listen.https", "host:port"),
        ('[listen]\naccept_proxy = ["10.0.0.0/33"]', "listen.accept_proxy", "CIDR"),
        ('[timeouts]\nidle = "forever"', "timeouts.idle", "not a duration"),
        ('[timeouts]\nconnect = "-1s"', "timeouts.connect", "duration"),
        ('[timeouts]\ninspekt = "1s"', "timeouts.inspekt", "unknown key"),
        ('[backends.b]\nbalance = "random"\nservers = ["127.0.0.1:1"]', "backends.b.balance", "not one of"),
        ('[backends.b]\nservers = []', "backends.b.servers", "at least one"),
        ('[backends.b]\nmax_conn = 5', "backends.b.servers", "missing"),
        ('[backends.b]\nservers = ["127.0.0.1:1"]\nmax_conn = 0', "backends.b.max_conn", "positive"),
        ('[backends.b]\nservers = ["127.0.0.1:1"]\nproxy_protocol = "v3"', "backends.b.proxy_protocol", "not one of"),
        ('[backends.b]\nservers = ["127.0.0.1:1", "http://127.0.0.1:2"]', "backends.b.servers", "mixes"),
        ('[backends.b]\nservers = ["ftp://127.0.0.1:2"]', "backends.b.servers", "only http"),
        ('[ssh]\nbackend = "nope"', "ssh.backend", "no backend named 'nope'"),
        ('[listen]\nssh = ["127.0.0.1:2222"]', "ssh.backend", "needs a backend"),
        ('[[routes]]\nhosts = ["a.test"]\ntls = "passthrough"\nbackend = "missing"', "routes[0].backend", "no backend named"),
        ('[backends.w]\nservers = ["http://127.0.0.1:1"]\n[[routes]]\nhosts = ["a.test"]\ntls = "passthrough"\nbackend = "w"',
         "routes[0].backend", "needs host:port"),
        ('[backends.t]\nservers = ["127.0.0.1:1"]\n[[routes]]\nhosts = ["a.test"]\ntls = "edge"\nbackend = "t"',
         "routes[0].backend", "needs http"),
        ('[backends.w]\nservers = ["http://127.0.0.1:1"]\n[[routes]]\nhosts = ["a.test"]\ntls = "reencrypt"\nbackend = "w"',
         "routes[0].backend", "https://"),
        ('[backends.t]\nservers = ["127.0.0.1:1"]\n[[routes]]\nhosts = ["a.test"]\ntls = "tcp"\nbackend = "t"', "routes[0].tls", "not one of"),
        ('[backends.t]\nservers = ["127.0.0.1:1"]\n[[routes]]\nhosts = ["a.test"]\ntls = "passthrough"', "routes[0].backend", "missing"),
        ('[backends.t]\nservers = ["127.0.0.1:1"]\n[[routes]]\nhosts = ["a_b..test"]\ntls = "passthrough"\nbackend = "t"', "routes[0].hosts", "not a host name"),
        ('[backends.t]\nservers = ["127.0.0.1:1"]\n[[routes]]\nhosts = ["A.test"]\ntls = "passthrough"\nbackend = "t"\n'
         '[[routes]]\nhosts = ["a.test."]\ntls = "passthrough"\nbackend = "t"', "routes[1].hosts", "already routed by routes[0]"),
        ('[backends.t]\nservers = ["127.0.0.1:1"]\n[[routes]]\nhosts = ["a.test"]\ntls = "passthrough"\nbackend = "t"\nacme_backend = "nope"',
         "routes[0].acme_backend", "no backend named"),
        ('[backends.t]\nservers = ["127.0.0.1:1"]\n[[routes]]\nhosts = ["a.test"]\ntls = "passthrough"\nbackend = "t"\nhttp = "maybe"',
         "routes[0].http", "not one of"),
        ('[backends.t]\nservers = ["127.0.0.1:1"]\n[[routes]]\nhosts = ["a.test"]\ntls = "passthrough"\nbackend = "t"\npaths = ["/api/"]',
         "routes[0].paths", "cannot see paths"),
        ('[backends.t]\nservers = ["127.0.0.1:1"]\n[[routes]]\nhosts = ["a.test"]\ntls = "passthrough"\nbackend = "t"\nbogus = 1',
         "routes[0].bogus", "unknown key"),
        ('[backends.w]\nservers = ["http://127.0.0.1:1"]\n[[routes]]\nhosts = ["a.test"]\ntls = "edge"\nbackend = "w"\npaths = ["/a/"]\n'
         '[[routes]]\nhosts = ["a.test"]\ntls = "edge"\nbackend = "w"\npaths = ["/b/", "/a/"]', "routes[1].hosts", "path '/a/' is already routed by routes[0]"),
        ('[backends.w]\nservers = ["http://127.0.0.1:1"]\n[backends.t]\nservers = ["127.0.0.1:1"]\n[[routes]]\nhosts = ["a.test"]\ntls = "edge"\nbackend = "w"\npaths = ["/a/"]\n'
         '[[routes]]\nhosts = ["a.test"]\ntls = "passthrough"\nbackend = "t"', "routes[1].hosts", "passthrough host takes one route"),
        ('[backends.w]\nservers = ["http://127.0.0.1:1"]\n[[routes]]\nhosts = ["a.test"]\ntls = "edge"\nbackend = "w"\nmax_body = "lots"',
         "routes[0].max_body", "not a size"),
        ('[backends.w]\nservers = ["http://127.0.0.1:1"]\n[[routes]]\nhosts = ["a.test"]\ntls = "edge"\nbackend = "w"\npaths = ["api"]',
         "routes[0].paths", "starting with"),
        ('[backends.w]\nservers = ["http://127.0.0.1:1"]\nverify = false', "backends.w.verify", "only applies to https"),
        ('[backends.s]\nservers = ["https://127.0.0.1:1"]\nverify = "no"', "backends.s.verify", "true or false"),
        ('[backends.s]\nservers = ["https://127.0.0.1:1"]\nproxy_protocol = "v2"', "backends.s.proxy_protocol", "TCP"),
        ('[backends.g]\nservers = ["http://127.0.0.1:1"]\nprotocol = "h3"', "backends.g.protocol", "not one of"),
        ('[backends.g]\nservers = ["127.0.0.1:1"]\nprotocol = "h2"', "backends.g.protocol", "http:// and https://"),
        ('[backends.g]\nservers = ["http://127.0.0.1:1"]\nprotocol = "h2"\ncheck = "http GET /"', "backends.g.check",
         "use \"tcp\" or \"tls\""),
        (GOOD + '[[routes]]\nname = "web"\nhosts = ["b.example.test"]\ntls = "passthrough"\nbackend = "tls"\n'
         '[[routes]]\nname = "web"\nhosts = ["c.example.test"]\ntls = "passthrough"\nbackend = "tls"\n',
         "routes[2].name", "'web' is already the name of routes[1]"),
        (GOOD + '[[routes]]\nname = "has space"\nhosts = ["b.example.test"]\ntls = "passthrough"\nbackend = "tls"\n',
         "routes[1].name", "must be a name"),
        ('[listen]\nhttp = ["127.0.0.1:8080"]\nhttps = ["127.0.0.1:8080"]', "listen.https",
         "127.0.0.1:8080 is also in listen.http"),
        ('[listen]\nhttp = ["*:8080", "0.0.0.0:8080"]', "listen.http", "0.0.0.0:8080 is twice in it"),
        ('[listen]\nhttp = ["*:99999"]', "listen.http", "not a port"),
        ('[timeouts]\nidle = "1h30"', "timeouts.idle", "not a duration"),
        ('[tls]\nissuer = "acme-ish"', "tls.issuer", "not one of"),
        ('routes = 5', "routes", "array of tables"),
        ('[storage]\nredis = "http://127.0.0.1:6379"', "storage.redis", "must be a URL like"),
        ('[storage]\nredis = 6379', "storage.redis", "must be a URL like"),
        ('[storage]\npassword_file = "pw"', "storage.password_file", "needs storage.redis"),
        ('[storage]\nredis = "redis://127.0.0.1:6379/0"\npassword_file = "/nonexistent/pw"', "storage.password_file",
         "cannot read /nonexistent/pw"),
        ('[storage]\nfiles = "/srv"', "storage.files", "unknown key"),
    ],
)
def test_each_mistake_names_file_key_and_problem(tmp_path, text, key, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    message = str(caught.value)
    assert caught.value.key == key
    assert message.startswith(f"{path}: ")
    assert words in message
    assert "\n" not in message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load(tmp_path / "absent.toml")


@pytest.mark.parametrize("text, seconds", [("5s", 5), ("100ms", 0.1), ("2m", 120), ("1h", 3600), ("1d", 86400), (7, 7),
                                           ("1h30m", 5400), ("2m30s", 150), ("1d12h", 129600), ("1s500ms", 1.5)])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


def test_twist_edge_reports_a_bad_config_on_one_line(tmp_path):
    path = write(tmp_path, GOOD + '\n[[routes]]\nhosts = ["a.example.test"]\ntls = "passthrough"\nbackend = "tls"\n')
    result = run_edge_command(path)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"edge: {path}: routes[1].hosts: 'a.example.test' is already routed by routes[0]"], result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_twist_edge_reports_a_port_it_cannot_bind(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = write(tmp_path, f'[listen]\nssh = []\nhttp = ["127.0.0.1:{port}"]\nhttps = []\n')
        result = run_edge_command(path)
    assert result.returncode != 0
    assert f"listen.http: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_twist_edge_help_describes_it(tmp_path):
    result = run_edge_command(tmp_path / "unused.toml", "--help")
    assert result.returncode == 0
    assert "--config" in result.stdout and "/etc/edge/edge.toml" in result.stdout
    assert "SNI" in result.stdout
    assert "--check" in result.stdout and "--version" in result.stdout
    assert "--worker" not in result.stdout  # internal: how edge starts its own workers
    assert "HUP" in result.stdout and "--log-format" in result.stdout and "README" in result.stdout


def test_backend_names_survive_health_options(tmp_path):
    config = load(write(tmp_path, '[backends.web]\nservers = ["http://127.0.0.1:1"]\ncheck = "http GET /healthz"\n'
                                  'check_interval = "1s"\nrise = 3\nfall = 4\n'))
    web = config.backends["web"]
    assert (web.name, str(web.check), web.check_interval, web.rise, web.fall) == ("web", "http GET /healthz", 1.0, 3, 4)
    assert (web.check.kind, web.check.method, web.check.path) == ("http", "GET", "/healthz")  # parsed once, here


def test_check_says_ok_in_one_line_and_binds_nothing(tmp_path):
    """``twist edge --check`` (nginx -t, haproxy -c): the listen addresses are in use by another socket
    here, which --check does not care about: it binds nothing."""
    import socket

    busy, other = socket.socket(), socket.socket()
    for each in (busy, other):
        each.bind(("127.0.0.1", 0))
        each.listen(1)
    port = busy.getsockname()[1]
    try:
        path = write(tmp_path, f'[edge]\nstate_dir = "{tmp_path / "state"}"\n[listen]\nhttps = ["127.0.0.1:{port}"]\n'
                               f'http = ["127.0.0.1:{other.getsockname()[1]}"]\nssh = []\n[tls]\nissuer = "local"\n' + GOOD
                     + '[[routes]]\nhosts = ["b.example.test"]\ntls = "edge"\nbackend = "web"\n')
        result = run_edge_command(path, "--check")
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"{path}: OK, 2 routes, 4 backends, 0 certificate files (the local CA issues the rest)\n"
        assert result.stderr == ""
    finally:
        busy.close()
        other.close()


@pytest.mark.parametrize("text, words", [
    ("[listen]\nhttps = \"x\"\n", "listen.https: must be a list of strings"),
    (GOOD + '[[routes]]\nhosts = ["b.example.test"]\ntls = "edge"\nbackend = "web"\n', "no certificate for 'b.example.test'"),
])
def test_check_names_the_problem_and_exits_2(tmp_path, text, words):
    path = write(tmp_path, f'[edge]\nstate_dir = "{tmp_path / "state"}"\n' + text if "[edge]" not in text else text)
    result = run_edge_command(path, "--check")
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"edge: {path}: ") and words in lines[0], result.stderr


def test_check_reads_certificate_files(tmp_path):
    """A certificate whose key does not match is found by --check, as start-up would find it."""
    import trustme

    ca = trustme.CA()
    certs = tmp_path / "certs"
    certs.mkdir()
    one, other = ca.issue_cert("b.example.test"), ca.issue_cert("b.example.test")
    (certs / "b.pem").write_bytes(one.cert_chain_pems[0].bytes() + other.private_key_pem.bytes())
    path = write(tmp_path, f'[edge]\nstate_dir = "{tmp_path / "state"}"\ncerts_dir = "{certs}"\n' + GOOD
                 + '[[routes]]\nhosts = ["b.example.test"]\ntls = "edge"\nbackend = "web"\n')
    result = run_edge_command(path, "--check")
    assert result.returncode == 2 and "certs_dir" in result.stderr and len(result.stderr.splitlines()) == 1, \
        result.stderr
    (certs / "b.pem").write_bytes(one.cert_chain_pems[0].bytes() + one.private_key_pem.bytes())
    result = run_edge_command(path, "--check")
    assert result.returncode == 0 and "1 certificate file" in result.stdout, result.stderr


def test_version_is_edges_own(tmp_path):
    from edge import __version__

    result = run_edge_command(tmp_path / "none.toml", "--version")
    assert result.returncode == 0 and result.stdout == f"edge {__version__}\n"


def test_routes_are_named_by_their_name_or_first_host(tmp_path):
    config = load(write(tmp_path, GOOD + textwrap.dedent("""
        [[routes]]
        name = "argocd"
        hosts = ["b.example.test"]
        tls = "passthrough"
        backend = "tls"
        [[routes]]
        hosts = ["c.example.test", "d.example.test"]
        tls = "edge"
        backend = "web"
        [[routes]]
        hosts = ["c.example.test"]
        paths = ["/api"]
        tls = "edge"
        backend = "web"
        """)))
    assert [route.name for route in config.routes] == ["a.example.test", "argocd", "c.example.test",
                                                       "c.example.test/api"]


def test_haproxy_style_wildcard_addresses_listen_on_both_families(tmp_path):
    config = load(write(tmp_path, '[listen]\nhttp = ["*:8080"]\nhttps = [":8443"]\nssh = []\n' + GOOD))
    assert [str(a) for a in config.listen.http] == ["0.0.0.0:8080", "[::]:8080"]
    assert [str(a) for a in config.listen.https] == ["0.0.0.0:8443", "[::]:8443"]


def test_a_low_port_refused_for_permission_says_how_to_allow_it(tmp_path):
    """As an unprivileged user (setpriv to nobody; CI runs as root, where port 80 binds)."""
    import os
    import subprocess
    import sys

    from tests.support.edge import edge_env

    import shutil
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="edge-unprivileged-", dir="/tmp"))  # pytest's tmp_path is root's only
    try:
        os.chmod(work, 0o777)
        path = work / "edge.toml"
        path.write_text(f'[edge]\nstate_dir = "{work / "state"}"\n[listen]\nhttp = ["127.0.0.1:80"]\nhttps = []\nssh = []\n')
        os.chmod(path, 0o644)
        result = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "twisted", "edge",
             "--config", str(path)], capture_output=True, text=True, timeout=60, env=edge_env(), cwd=work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "cannot listen on 127.0.0.1:80: Permission denied" in lines[0]
    assert "CAP_NET_BIND_SERVICE" in lines[0] and "ip_unprivileged_port_start" in lines[0] and "socket activation" in lines[0]


def test_storage_names_redis_and_reads_its_password_from_a_file(tmp_path):
    (tmp_path / "redis.pw").write_text("s3cret\n")
    config = load(write(tmp_path, GOOD + '[storage]\nredis = "redis://10.0.0.5:6379/2"\npassword_file = "redis.pw"\n'))
    assert config.storage.redis == "redis://10.0.0.5:6379/2"
    assert config.storage.password == "s3cret"
    assert "s3cret" not in repr(config.storage)
    assert load(write(tmp_path, GOOD)).storage is None  # ACME state in state_dir's files
    (tmp_path / "empty.pw").write_text("\n")
    with pytest.raises(ConfigError, match="storage.password_file: .*empty.pw is empty"):
        load(write(tmp_path, GOOD + '[storage]\nredis = "redis://10.0.0.5:6379/2"\npassword_file = "empty.pw"\n'))


def test_the_config_builder_writes_what_its_arguments_say():
    """tests/support/config.py, which most end-to-end tests write their config with."""
    import tomllib

    from edge.config import parse
    from tests.support.config import config, route, site

    text = site("http://127.0.0.1:8000", http="allow", headers={"request": {"set": {"X-Added": "a b"}}},
                routes=[route("pass.example.test", "pass", tls="passthrough")],
                backends={"pass": "127.0.0.1:9443", "two": {"servers": ["127.0.0.1:1", "127.0.0.1:2"], "max_fails": 3}},
                tables={"ssh": {"backend": "pass"}})
    data = tomllib.loads(text)
    assert data["tls"] == {"issuer": "local"} and data["ssh"] == {"backend": "pass"}
    assert data["backends"] == {"web": {"servers": ["http://127.0.0.1:8000"]}, "pass": {"servers": ["127.0.0.1:9443"]},
                                "two": {"servers": ["127.0.0.1:1", "127.0.0.1:2"], "max_fails": 3}}
    assert data["routes"] == [
        {"hosts": ["app.example.test"], "tls": "edge", "backend": "web", "http": "allow",
         "headers": {"request": {"set": {"X-Added": "a b"}}}},
        {"hosts": ["pass.example.test"], "tls": "passthrough", "backend": "pass"}]
    parsed = parse(data)
    assert [r.backend for r in parsed.routes] == ["web", "pass"]
    assert tomllib.loads(config(issuer=None, backends={"w": ["x:1"]})) == {"backends": {"w": {"servers": ["x:1"]}}}
