"""Live reload (SIGHUP, file watch) and graceful stop (SIGTERM drain) of the real edge."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time

import pytest
from websockets.sync.client import connect as ws_connect

from tests.support.config import route, site
from tests.support.procs import Program, free_port, wait_listening
from tests.support.servers import Nginx
from tests.e2e.test_acme import read_response
from tests.e2e.test_http_proxy import ECHO_SERVER
from tests.e2e.test_terminate import local_ca


@pytest.fixture
def origins(start, tmp_path, ca):
    """Two plain HTTP origins and two TLS origins (nginx), each saying which it is, and a WebSocket echo."""
    ports = {name: free_port() for name in ("web1", "web2", "tls1", "tls2")}
    cert, key, _ = ca.issue("pass.example.test")
    files = tmp_path / "files"
    files.mkdir()
    (files / "slow.bin").write_bytes(os.urandom(600 * 1024))
    servers = "".join(
        f'server {{ listen 127.0.0.1:{port}{" ssl" if name.startswith("tls") else ""}; '
        f'ssl_certificate {cert}; ssl_certificate_key {key}; keepalive_timeout 120s; '
        f'location /slow.bin {{ root {files}; limit_rate 200k; }} '
        f'location / {{ return 200 "{name}\\n"; }} }}\n'
        for name, port in ports.items()
    )
    nginx = start(Nginx, tmp_path, servers)
    for port in ports.values():
        wait_listening(port, proc=nginx.proc)
    ports["echo"] = free_port()
    script = tmp_path / "echo.py"
    script.write_text(ECHO_SERVER)
    echo = start(Program, [sys.executable, str(script), str(ports["echo"])], tmp_path / "echo.log")
    wait_listening(ports["echo"], proc=echo.proc)
    return ports


def body(ports: dict, web: str, tls: str, issuer: str | None = "local") -> str:
    return site(f"http://127.0.0.1:{ports[web]}", issuer=issuer,
                backends={"pass": f"127.0.0.1:{ports[tls]}", "echo": f"http://127.0.0.1:{ports['echo']}"},
                routes=[route("pass.example.test", "pass", tls="passthrough"), route("ws.example.test", "echo")])


def open_tls(port: int, host: str, cafile: str) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["http/1.1"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(raw, server_hostname=host)


def ask(sock: ssl.SSLSocket, host: str) -> str:
    sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return read_response(sock).split(b"\r\n\r\n", 1)[1].decode().strip()


def new_answer(port: int, host: str, cafile: str) -> str:
    with open_tls(port, host, cafile) as sock:
        return ask(sock, host)


def rewrite(edge, old: str, new: str) -> None:
    text = edge.config.read_text()
    edge.config.write_text(text.replace(old, new))


def test_sighup_keeps_open_connections_and_new_ones_follow_new_routes(edge, origins, ca):
    # a generous inspect time: this test is about reloads, and a loaded machine once took over 2 s between
    # the WebSocket's TLS handshake and its upgrade request (edge then rightly answered 408)
    e = edge(body(origins, "web1", "tls1"), timeouts='inspect = "10s"\nconnect = "2s"\nidle = "60s"')
    edge_ca = local_ca(e)
    held_http = open_tls(e.https_port, "app.example.test", edge_ca)
    held_pass = open_tls(e.https_port, "pass.example.test", str(ca.ca_pem))
    ws_context = ssl.create_default_context(cafile=edge_ca)
    held_ws = ws_connect(f"wss://ws.example.test:{e.https_port}/", ssl=ws_context,
                         sock=socket.create_connection(("127.0.0.1", e.https_port)), server_hostname="ws.example.test")
    held_ws.__enter__()
    try:
        assert ask(held_http, "app.example.test") == "web1"
        assert ask(held_pass, "pass.example.test") == "tls1"
        held_ws.send("before")
        assert held_ws.recv(timeout=10) == "before"

        rewrite(e, f"127.0.0.1:{origins['web1']}", f"127.0.0.1:{origins['web2']}")
        rewrite(e, f"127.0.0.1:{origins['tls1']}", f"127.0.0.1:{origins['tls2']}")
        os.kill(e.pid, signal.SIGHUP)
        e.wait_log("reloaded")

        assert new_answer(e.https_port, "app.example.test", edge_ca) == "web2"
        assert new_answer(e.https_port, "pass.example.test", str(ca.ca_pem)) == "tls2"
        assert ask(held_http, "app.example.test") == "web1"  # open connections keep their configuration
        assert ask(held_pass, "pass.example.test") == "tls1"
        held_ws.send("after")
        assert held_ws.recv(timeout=10) == "after"

        e.config.write_text(e.config.read_text() + "\n[[routes]]\nhosts = 5\n")
        os.kill(e.pid, signal.SIGHUP)
        e.wait_log("reload refused")
        assert "routes[3].tls: missing" in e.log()
        assert new_answer(e.https_port, "app.example.test", edge_ca) == "web2"
        assert ask(held_http, "app.example.test") == "web1"
        e.assert_alive()
    finally:
        held_http.close()
        held_pass.close()
        held_ws.close()


def test_listeners_follow_the_config_and_watch_reloads_on_change(edge, origins):
    e = edge(body(origins, "web1", "tls1"))
    extra = free_port()
    text = e.config.read_text()
    text = text.replace(f'http = ["127.0.0.1:{e.http_port}"]', f'http = ["127.0.0.1:{extra}"]')
    text = text.replace("[edge]\n", "[edge]\nwatch = true\n")
    e.config.write_text(text)
    os.kill(e.pid, signal.SIGHUP)
    e.wait_log("reloaded")
    wait_listening(extra)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", e.http_port), timeout=2).close()
    # With watch = true a change of the file alone reloads it.
    time.sleep(1.1)
    e.config.write_text(e.config.read_text().replace(f"127.0.0.1:{origins['web1']}", f"127.0.0.1:{origins['web2']}"))
    e.wait_log("changed", timeout=15)
    deadline = time.monotonic() + 15  # "changed" is logged before the reload that follows it
    while e.log().count("reloaded") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert e.log().count("reloaded") == 2


def test_a_reload_that_cannot_bind_changes_nothing(edge, origins):
    """All or nothing: a door moved onto a port in use keeps its old address, and nothing else of the new
    config is taken either (here: http = "deny" set on a route in the same edit)."""
    e = edge(body(origins, "web1", "tls1"))
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        text = e.config.read_text().replace(f'http = ["127.0.0.1:{e.http_port}"]',
                                            f'http = ["127.0.0.1:{busy.getsockname()[1]}"]')
        e.config.write_text(text.replace('backend = "web"', 'backend = "web"\n    http = "deny"'))
        os.kill(e.pid, signal.SIGHUP)
        line = e.wait_log("reload refused")
        assert "cannot listen on" in line and "reloaded" not in e.log() and "no longer listening" not in e.log()
        socket.create_connection(("127.0.0.1", e.http_port), timeout=5).close()  # the old door still answers
        request = b"GET / HTTP/1.1\r\nHost: app.example.test\r\nConnection: close\r\n\r\n"
        with socket.create_connection(("127.0.0.1", e.http_port), timeout=5) as client:
            client.sendall(request)
            answer = client.recv(4096)
        assert answer.startswith(b"HTTP/1.1 308")  # the edit's http = "deny" (a 404) was not taken
        e.assert_alive()
    finally:
        busy.close()


def test_sigterm_drains_a_slow_download(edge, origins):
    e = edge(body(origins, "web1", "tls1"), timeouts='inspect = "2s"\nconnect = "2s"\nidle = "60s"\ndrain = "20s"')
    curl = subprocess.Popen(
        ["curl", "-sS", "--max-time", "30", "--cacert", local_ca(e), "--resolve", f"app.example.test:{e.https_port}:127.0.0.1",
         "-o", "-", f"https://app.example.test:{e.https_port}/slow.bin"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(0.7)  # the download is under way (600 KiB at 200 KiB/s)
    e.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", e.https_port), timeout=2).close()  # no longer accepting
    out, err = curl.communicate(timeout=40)
    assert curl.returncode == 0, err
    assert len(out) == 600 * 1024
    assert e.proc.wait(30) in (0, -signal.SIGTERM)  # twist re-raises the signal that stopped it
    assert "draining 1 open connections" in e.log()


def test_sigterm_cuts_what_outlives_the_drain_and_logs_it_as_a_shutdown(edge, origins, ca):
    """A connection still open when ``timeouts.drain`` is over is cut, and its access-log line says
    ``closed: shutdown`` (counted as outcome ``closed``)."""
    e = edge(body(origins, "web1", "tls1"), timeouts='inspect = "2s"\nconnect = "2s"\nidle = "60s"\ndrain = "1s"',
             log_format="json")
    held = open_tls(e.https_port, "pass.example.test", str(ca.ca_pem))  # through to nginx, which keeps it 120 s
    try:
        e.proc.send_signal(signal.SIGTERM)
        e.wait_log("draining 1 open connections")
        assert e.proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        held.close()
    ended = [event["ended"] for event in e.events() if event.get("kind") == "connection"]
    assert ended == ["closed: shutdown"], e.log()


def test_watch_notices_a_replaced_certificate_file(edge, origins, tmp_path):
    """A certbot renewal replaces the file in certs_dir: with watch = true the new certificate is served
    without a SIGHUP (the deploy hook a user would otherwise write)."""
    import trustme

    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    certs = tmp_path / "certs"
    certs.mkdir()

    def install() -> int:
        cert = ca.issue_cert("app.example.test", "ws.example.test")
        (certs / "app.pem").write_bytes(cert.cert_chain_pems[0].bytes() + cert.private_key_pem.bytes())
        from cryptography import x509

        return x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes()).serial_number

    def served_serial() -> int:
        from cryptography import x509

        with open_tls(e.https_port, "app.example.test", str(ca_file)) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number

    first = install()
    e = edge(body(origins, "web1", "tls1", issuer=None), certs_dir=str(certs))
    e.config.write_text(e.config.read_text().replace("[edge]\n", "[edge]\nwatch = true\n"))
    os.kill(e.pid, signal.SIGHUP)
    e.wait_log("reloaded")
    assert served_serial() == first
    second = install()
    e.wait_log(f"a certificate file in {certs} changed", timeout=15)
    deadline = time.monotonic() + 15
    while e.log().count("reloaded") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert served_serial() == second != first
