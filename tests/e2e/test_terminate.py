"""TLS termination (edge and reencrypt routes) with real curl, openssl and nginx."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess

import pytest
import trustme

from edge.sniff.proxy import build_v2
from tests.support.config import route, site
from tests.support.procs import free_port, wait_listening
from tests.support.servers import Nginx

REPORT = ('backend=$server_port host=$host xff=$http_x_forwarded_for proto=$http_x_forwarded_proto '
          'xhost=$http_x_forwarded_host fwd=$http_forwarded conn=$http_connection te=$http_te '
          'keepalive=$http_keep_alive secret=$http_x_secret uri=$request_uri\\n')


@pytest.fixture
def origin(start, tmp_path, ca):
    """nginx: a plain HTTP origin on two ports and a TLS origin, all reporting what they received."""
    http1, http2, tls = free_port(), free_port(), free_port()
    cert, key, _ = ca.issue("vault.internal.test")
    files = tmp_path / "files"
    files.mkdir()
    (files / "small.txt").write_text("small file\n")
    server = start(Nginx, tmp_path, f"""
        server {{
          listen 127.0.0.1:{http1};
          listen 127.0.0.1:{http2};
          listen 127.0.0.1:{tls} ssl;
          ssl_certificate {cert};
          ssl_certificate_key {key};
          root {files};
          client_max_body_size 100m;
          location /files/ {{ alias {files}/; dav_methods PUT; create_full_put_path on; }}
          location / {{ return 200 "{REPORT}"; }}
        }}
        """)
    for port in (http1, http2, tls):
        wait_listening(port, proc=server.proc)
    server.http, server.http2, server.tls = http1, http2, tls
    return server


def curl(edge_port: int, host: str, path: str = "/", *extra: str, cafile=None) -> subprocess.CompletedProcess:
    argv = ["curl", "-sS", "-i", "--max-time", "20", "--resolve", f"{host}:{edge_port}:127.0.0.1"]
    if cafile:
        argv += ["--cacert", str(cafile)]
    return subprocess.run(argv + list(extra) + [f"https://{host}:{edge_port}{path}"],
                          capture_output=True, text=True, timeout=30)


def split(response: str) -> tuple[int, dict[str, str], str]:
    head, _, body = response.replace("\r\n", "\n").partition("\n\n")
    while head.split(" ", 2)[1:2] == ["100"]:  # interim 100 Continue
        head, _, body = body.partition("\n\n")
    lines = head.split("\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def report(body: str) -> dict[str, str]:
    fields = {}
    for item in body.split():
        if "=" in item:
            key, _, value = item.partition("=")
            fields[key] = value
    return fields


def local_ca(edge) -> str:
    return str(edge.config.parent / "state" / "local-ca" / "ca.pem")


@pytest.fixture
def web_edge(edge, origin):
    return edge(site(f"http://127.0.0.1:{origin.http}", host=["app.example.test", "*.apps.example.test"],
                     backends={"api": f"http://127.0.0.1:{origin.http2}"},
                     routes=[route("app.example.test", "api", paths=["/api/"], max_body="1M")]))


@pytest.mark.parametrize("version", ["--http1.1", "--http2"])
def test_edge_route_over_http1_and_http2_with_the_local_ca(web_edge, origin, version):
    result = curl(web_edge.https_port, "app.example.test", "/hello?x=1", version, "-v", cafile=local_ca(web_edge))
    assert result.returncode == 0, result.stderr
    status, _, body = split(result.stdout)
    assert status == 200
    assert ("ALPN: server accepted h2" if version == "--http2" else "ALPN: server accepted http/1.1") in result.stderr
    fields = report(body)
    assert fields["backend"] == str(origin.http) and fields["uri"] == "/hello?x=1"
    assert fields["host"] == "app.example.test"


def test_longest_path_prefix_picks_the_backend(web_edge, origin):
    ca = local_ca(web_edge)
    assert report(split(curl(web_edge.https_port, "app.example.test", "/api/v1", cafile=ca).stdout)[2])["backend"] == str(origin.http2)
    assert report(split(curl(web_edge.https_port, "app.example.test", "/apiary", cafile=ca).stdout)[2])["backend"] == str(origin.http)


def test_forwarding_headers_as_the_backend_sees_them(web_edge):
    result = curl(web_edge.https_port, "app.example.test", "/", "-H", "X-Forwarded-For: 192.0.2.1",
                  "-H", "Connection: keep-alive, X-Secret", "-H", "X-Secret: drop-me", "-H", "Keep-Alive: 5",
                  "--interface", "127.0.0.5", "--http1.1", cafile=local_ca(web_edge))
    fields = report(split(result.stdout)[2])
    assert fields["xff"] == "192.0.2.1,"  # nginx's $http_x_forwarded_for keeps the raw list: see below
    raw = split(result.stdout)[2]
    assert "xff=192.0.2.1, 127.0.0.5 " in raw
    authority = f"app.example.test:{web_edge.https_port}"
    assert fields["proto"] == "https" and fields["xhost"] == authority
    assert f'fwd=for=127.0.0.5;host="{authority}";proto=https' in raw
    assert fields["keepalive"] == "" and fields["te"] == "" and fields["secret"] == ""
    assert fields["conn"] in ("", "close", "keep-alive")  # hop-by-hop: the client's value did not pass


def test_real_client_address_from_an_accepted_proxy_header(edge, origin):
    e = edge(site(f"http://127.0.0.1:{origin.http}"), accept_proxy=["127.0.0.0/8"])
    context = ssl.create_default_context(cafile=local_ca(e))
    with socket.create_connection(("127.0.0.1", e.https_port), timeout=10) as raw:
        raw.sendall(build_v2(("2001:db8::7", 4000), ("127.0.0.1", 443)))
        with context.wrap_socket(raw, server_hostname="app.example.test") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: app.example.test\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(4096):
                data += chunk
    body = data.decode().split("\r\n\r\n", 1)[1]
    assert "xff=2001:db8::7 " in body
    assert 'fwd=for="[2001:db8::7]";' in body


def test_host_must_agree_with_sni(web_edge):
    result = curl(web_edge.https_port, "app.example.test", "/", "-H", "Host: other.apps.example.test", cafile=local_ca(web_edge))
    assert split(result.stdout)[0] == 421


def test_unknown_name_gets_an_unrecognized_name_alert(web_edge):
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{web_edge.https_port}", "-servername", "nobody.example.test"],
        input=b"", capture_output=True, timeout=20,
    )
    assert b"unrecognized name" in result.stderr, result.stderr
    assert b"BEGIN CERTIFICATE" not in result.stdout
    web_edge.assert_alive()


def test_wildcard_host_gets_a_certificate_for_its_own_name(web_edge):
    result = curl(web_edge.https_port, "x.apps.example.test", "/", cafile=local_ca(web_edge))
    assert result.returncode == 0 and split(result.stdout)[0] == 200, result.stderr


def test_passthrough_and_terminated_routes_share_the_port(edge, origin, tls_origin, ca):
    passthrough = tls_origin("pass.example.test")
    e = edge(site(f"http://127.0.0.1:{origin.http}", backends={"pass": f"127.0.0.1:{passthrough.port}"},
                  routes=[route("pass.example.test", "pass", tls="passthrough")]))
    terminated = curl(e.https_port, "app.example.test", "/", cafile=local_ca(e))
    assert split(terminated.stdout)[0] == 200
    passed = curl(e.https_port, "pass.example.test", "/", cafile=ca.ca_pem)
    assert passed.returncode == 0 and "s_server" in passed.stdout, passed.stderr


@pytest.mark.parametrize("layout", ["combined", "crt+key"])
def test_static_certificates_from_certs_dir(edge, origin, ca, tmp_path, layout):
    certs = tmp_path / f"certs-{layout}"
    certs.mkdir()
    cert, key, both = ca.issue("static.example.test")
    if layout == "combined":
        (certs / "static.pem").write_bytes(both.read_bytes())
    else:
        (certs / "static.crt").write_bytes(cert.read_bytes())
        (certs / "static.key").write_bytes(key.read_bytes())
    e = edge(site(f"http://127.0.0.1:{origin.http}", host="static.example.test", issuer=None), certs_dir=str(certs))
    result = curl(e.https_port, "static.example.test", "/", cafile=ca.ca_pem)
    assert result.returncode == 0 and split(result.stdout)[0] == 200, result.stderr


def test_terminated_host_without_certificate_is_a_startup_error(tmp_path):
    from tests.support.edge import run_edge_command

    path = tmp_path / "edge.toml"
    path.write_text('[listen]\nssh = []\nhttp = []\nhttps = []\n[backends.w]\nservers = ["http://127.0.0.1:1"]\n'
                    '[[routes]]\nhosts = ["a.example.test"]\ntls = "edge"\nbackend = "w"\n')
    result = run_edge_command(path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"edge: {path}: routes[0].hosts: no certificate for 'a.example.test' "
        f"(put one in [edge] certs_dir, set [tls] issuer = \"local\", or configure [acme])"
    ]


def reencrypt_edge(edge, origin, extra: str):
    return edge(f"""
    [tls]
    issuer = "local"
    [backends.vault]
    servers = ["https://127.0.0.1:{origin.tls}"]
    server_name = "vault.internal.test"
    {extra}
    [[routes]]
    hosts = ["vault.example.test"]
    tls = "reencrypt"
    backend = "vault"
    """)


@pytest.mark.parametrize("version", ["--http1.1", "--http2"])
def test_reencrypt_verifies_the_backend_against_its_ca(edge, origin, ca, version):
    e = reencrypt_edge(edge, origin, f'ca = "{ca.ca_pem}"')
    status, _, body = split(curl(e.https_port, "vault.example.test", "/", version, cafile=local_ca(e)).stdout)
    assert status == 200 and report(body)["backend"] == str(origin.tls)


@pytest.mark.parametrize("version", ["--http1.1", "--http2"])
def test_reencrypt_with_the_wrong_ca_is_a_502(edge, origin, tmp_path, version):
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    e = reencrypt_edge(edge, origin, f'ca = "{other}"')
    status, _, body = split(curl(e.https_port, "vault.example.test", "/", version, cafile=local_ca(e)).stdout)
    assert status == 502
    # The client is told what happened in plain words; the detail and what to do go to the log only.
    assert body == "the service did not answer\n" and "vault" not in body and "certificate" not in body
    line = e.wait_log("certificate verify failed")
    assert "set ca = " in line and "verify = false" in line


def test_reencrypt_without_verification_for_self_signed_backends(edge, origin):
    e = reencrypt_edge(edge, origin, "verify = false")
    status, _, _ = split(curl(e.https_port, "vault.example.test", "/", cafile=local_ca(e)).stdout)
    assert status == 200
    assert e.log().count("verify = false") == 1
    os.kill(e.pid, signal.SIGHUP)  # an unchanged backend is kept on reload, and not announced again
    e.wait_log("reloaded")
    assert e.log().count("verify = false") == 1


def test_tls13_session_resumption(web_edge, tmp_path):
    session = tmp_path / "session.pem"
    base = ["openssl", "s_client", "-connect", f"127.0.0.1:{web_edge.https_port}", "-servername", "app.example.test"]
    def connect(*extra: str) -> subprocess.CompletedProcess:
        # Stay connected a moment: TLS 1.3 tickets arrive after the handshake.
        feeder = subprocess.Popen(["sleep", "1"], stdout=subprocess.PIPE)
        try:
            return subprocess.run(base + list(extra), stdin=feeder.stdout, capture_output=True, timeout=20)
        finally:
            feeder.wait()

    first = connect("-sess_out", str(session))
    assert b"New, TLSv1.3" in first.stdout
    second = connect("-sess_in", str(session))
    assert b"Reused, TLSv1.3" in second.stdout, second.stdout[-1500:]


def test_start_up_says_which_certificate_serves_each_terminated_host(edge, tmp_path):
    """One line per terminated host: the file (or the local CA) that covers it and when it expires; a
    warning when a wildcard route takes names deeper than its wildcard certificate covers."""
    import trustme

    ca = trustme.CA()
    certs = tmp_path / "certs"
    certs.mkdir()
    wildcard = ca.issue_cert("*.example.test")
    (certs / "wild.pem").write_bytes(wildcard.cert_chain_pems[0].bytes() + wildcard.private_key_pem.bytes())
    e = edge(site("http://127.0.0.1:1", host="*.example.test", name="apps", routes=[route("other.test")]),
             certs_dir=str(certs))
    log = e.log()
    assert f"*.example.test (apps): certificate {certs / 'wild.pem'}, for *.example.test, expires " in log
    assert "*.example.test (apps) matches names at any depth below example.test, its certificate one level " \
           "only: a.b.example.test gets a certificate of the local CA" in log
    assert "other.test (other.test): certificate of the local CA, issued on first use" in log
