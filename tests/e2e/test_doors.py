"""Extra front doors (``[[doors]]``) and port 80's ``http = "forward"``, on the real edge.

IMAPS-style: a door on its own port routes TLS by SNI to two ``openssl s_server`` backends, as port
443 does; a door without ``sni`` forwards every connection (with the PROXY protocol when the backend
asks); a passthrough route whose cluster serves its own port 80 gets every plain-HTTP request there.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import time

import pytest

from tests.support.procs import free_port, wait_listening
from tests.support.servers import Nginx
from tests.e2e.test_passthrough import s_client


def events(e) -> list[dict]:
    return e.events()


def wait_events(e, predicate, timeout: float = 10) -> list[dict]:
    """The access events once ``predicate(events)`` holds: a connection's line is written when the edge
    has closed it, which may be just after the client saw the close."""
    deadline = time.monotonic() + timeout
    while True:
        found = e.events()
        if predicate(found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"access events never matched: {found}")
        time.sleep(0.05)


def peer_names(port: int, name: str, ca) -> set[str]:
    """The DNS names of the certificate the backend behind ``port`` shows for ``name``."""
    context = ssl.create_default_context(cafile=str(ca.ca_pem))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            return {value for kind, value in tls.getpeercert()["subjectAltName"] if kind == "DNS"}


@pytest.fixture
def mail_origins(tls_origin):
    return tls_origin("mail.example.test"), tls_origin("imap2.example.test")


def test_sni_door_routes_tls_by_server_name_among_its_routes(edge, mail_origins, tls_origin, ca):
    mail, imap2 = mail_origins
    web = tls_origin("mail.example.test", "web")  # the same name on 443 is another service
    imaps = free_port()
    e = edge(f"""
        [backends.mail]
        servers = ["127.0.0.1:{mail.port}"]
        [backends.imap2]
        servers = ["127.0.0.1:{imap2.port}"]
        [backends.web]
        servers = ["127.0.0.1:{web.port}"]

        [[doors]]
        name = "imaps"
        listen = "127.0.0.1:{imaps}"
        sni = true

        [[routes]]
        name = "mail-imaps"
        hosts = ["mail.example.test"]
        tls = "passthrough"
        backend = "mail"
        doors = ["imaps"]

        [[routes]]
        hosts = ["imap2.example.test"]
        tls = "passthrough"
        backend = "imap2"
        doors = ["imaps"]

        [[routes]]
        name = "webmail"
        hosts = ["mail.example.test"]
        tls = "passthrough"
        backend = "web"
    """, log_format="json")
    e.wait_log("listening for imaps on 127.0.0.1:")
    for name in ("mail.example.test", "imap2.example.test"):
        result = s_client(imaps, name, ca)
        assert b"Verify return code: 0 (ok)" in result.stdout, result.stdout + result.stderr
    assert peer_names(imaps, "mail.example.test", ca) == {"mail.example.test"}
    assert peer_names(imaps, "imap2.example.test", ca) == {"imap2.example.test"}
    # the same name on 443 goes to the web backend, not to the mail one
    assert peer_names(e.https_port, "mail.example.test", ca) == {"mail.example.test", "web"}
    # a name no route of the door lists: an unrecognized_name alert, as on 443
    context = ssl.create_default_context(cafile=str(ca.ca_pem))
    with socket.create_connection(("127.0.0.1", imaps), timeout=10) as raw:
        with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
            context.wrap_socket(raw, server_hostname="other.example.test")
    # imap2's route is not on 443
    with socket.create_connection(("127.0.0.1", e.https_port), timeout=10) as raw:
        with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
            context.wrap_socket(raw, server_hostname="imap2.example.test")
    # not TLS at all: closed, logged
    with socket.create_connection(("127.0.0.1", imaps), timeout=10) as raw:
        raw.sendall(b"a001 LOGIN x y\r\n")
        assert raw.recv(100) == b""
    wait_events(e, lambda found: any(ev.get("ended") == "error: not TLS" for ev in found))
    found = [ev for ev in events(e) if ev.get("kind") == "connection" and ev.get("listener") == "imaps"]
    routes = {ev["route"] for ev in found}
    assert {"mail-imaps", "imap2.example.test"} <= routes, found
    assert any(ev["ended"] == "error: not TLS" for ev in found), found
    assert all(ev["bytes_out"] > 0 for ev in found if ev["route"] == "mail-imaps")
    e.assert_alive()


def test_plain_door_forwards_every_connection_with_the_proxy_protocol(edge, start, tmp_path):
    port = free_port()
    nginx = start(Nginx, tmp_path, f"""
        server {{
          listen 127.0.0.1:{port} proxy_protocol;
          location / {{ return 200 "client=$proxy_protocol_addr\\n"; }}
        }}
    """)
    wait_listening(port, proc=nginx.proc)
    door = free_port()
    e = edge(f"""
        [backends.app]
        servers = ["127.0.0.1:{port}"]
        proxy_protocol = "v1"

        [[doors]]
        name = "alt"
        listen = ["127.0.0.1:{door}"]
        backend = "app"
    """, log_format="json")
    out = subprocess.run(["curl", "-sS", "--max-time", "10", f"http://127.0.0.1:{door}/"], capture_output=True,
                         text=True, timeout=20)
    assert out.stdout == "client=127.0.0.1\n", out.stderr
    found = wait_events(e, lambda found: any(ev.get("listener") == "alt" and ev.get("bytes_out") for ev in found))
    event = next(ev for ev in found if ev.get("kind") == "connection" and ev.get("listener") == "alt"
                 and ev.get("bytes_out"))
    assert event["backend"] == "app" and event["route"] == "alt" and event["bytes_in"] > 0


def test_http_forward_sends_port_80_to_the_cluster(edge, start, tmp_path, tls_origin):
    port = free_port()
    nginx = start(Nginx, tmp_path, f"""
        server {{
          listen 127.0.0.1:{port};
          location / {{ return 200 "cluster saw $host$request_uri\\n"; }}
        }}
    """)
    wait_listening(port, proc=nginx.proc)
    origin = tls_origin("app.example.test")
    e = edge(f"""
        [backends.cluster-443]
        servers = ["127.0.0.1:{origin.port}"]
        [backends.cluster-80]
        servers = ["127.0.0.1:{port}"]

        [[routes]]
        name = "cluster"
        hosts = ["app.example.test", "*.apps.example.test"]
        tls = "passthrough"
        backend = "cluster-443"
        http = "forward"
        http_backend = "cluster-80"

        [[routes]]
        hosts = ["other.example.test"]
        tls = "passthrough"
        backend = "cluster-443"
    """, log_format="json")
    for host, path in (("app.example.test", "/.well-known/acme-challenge/tok"), ("x.apps.example.test", "/a?b=1")):
        out = subprocess.run(["curl", "-sS", "--max-time", "10", "-H", f"Host: {host}",
                              f"http://127.0.0.1:{e.http_port}{path}"], capture_output=True, text=True, timeout=20)
        assert out.stdout == f"cluster saw {host}{path}\n", out.stderr
    # a route without it is still redirected
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "-H",
                          "Host: other.example.test", f"http://127.0.0.1:{e.http_port}/"],
                         capture_output=True, text=True, timeout=20)
    assert out.stdout == "308"
    wait_events(e, lambda found: sum(1 for ev in found if ev.get("backend") == "cluster-80"
                                     and ev.get("kind") == "connection") == 2
                and any(ev.get("status") == 308 for ev in found))
    forwarded = [ev for ev in events(e) if ev.get("kind") == "request" and ev.get("outcome") == "forwarded"]
    assert len(forwarded) == 2 and {ev["backend"] for ev in forwarded} == {"cluster-80"}
    connections = [ev for ev in events(e) if ev.get("kind") == "connection" and ev.get("backend") == "cluster-80"]
    assert len(connections) == 2 and all(ev["bytes_in"] > 50 and ev["bytes_out"] > 100 for ev in connections), \
        connections
    redirect = next(ev for ev in events(e) if ev.get("kind") == "request" and ev.get("status") == 308)
    assert redirect["sent"] > 0 and redirect["route"] == "other.example.test"


def test_doors_follow_reloads(edge, tls_origin, ca):
    origin = tls_origin("mail.example.test")
    first, second = free_port(), free_port()
    body = """
        [backends.mail]
        servers = ["127.0.0.1:{origin}"]
        [[doors]]
        name = "imaps"
        listen = "127.0.0.1:{port}"
        backend = "mail"
    """
    e = edge(body.format(origin=origin.port, port=first))
    wait_listening(first)
    e.config.write_text(e.config.read_text().replace(f"127.0.0.1:{first}", f"127.0.0.1:{second}"))
    os.kill(e.pid, signal.SIGHUP)
    e.wait_log(f"no longer listening for imaps on 127.0.0.1:{first}")
    wait_listening(second)
    result = s_client(second, "mail.example.test", ca)
    assert b"Verify return code: 0 (ok)" in result.stdout
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", first), timeout=5).close()


@pytest.mark.parametrize("body, problem", [
    ('[[doors]]\nname = "https"\nlisten = "127.0.0.1:9993"\nbackend = "b"', "doors[0].name: 'https' is a built-in"),
    ('[[doors]]\nname = "imaps"\nlisten = "127.0.0.1:9993"', "doors[0].backend: missing"),
    ('[[doors]]\nname = "imaps"\nlisten = "127.0.0.1:18443"\nbackend = "b"', "also in listen.https"),
    ('[[doors]]\nname = "a"\nlisten = "127.0.0.1:9993"\nbackend = "b"\n'
     '[[doors]]\nname = "c"\nlisten = "127.0.0.1:9993"\nbackend = "b"', "doors[1].listen: 127.0.0.1:9993 is also in"),
    ('[[doors]]\nname = "imaps"\nlisten = "127.0.0.1:9993"\nsni = true', "no route lists it"),
    ('[[routes]]\nhosts = ["a.test"]\ntls = "passthrough"\nbackend = "b"\ndoors = ["imaps"]',
     "routes[0].doors: 'imaps' is not"),
    ('[[routes]]\nhosts = ["a.test"]\ntls = "passthrough"\nbackend = "b"\nhttp = "forward"',
     "routes[0].http_backend: missing"),
    ('[[routes]]\nhosts = ["a.test"]\ntls = "passthrough"\nbackend = "b"\nhttp_backend = "b"',
     "routes[0].http_backend: only used with"),
])
def test_door_and_forward_config_mistakes_are_one_line(tmp_path, body, problem):
    from edge.config import ConfigError, parse
    import tomllib

    text = '[listen]\nhttps = ["127.0.0.1:18443"]\n[backends.b]\nservers = ["127.0.0.1:1"]\n' + body
    with pytest.raises(ConfigError) as caught:
        parse(tomllib.loads(text), "edge.toml")
    assert problem in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


def test_sni_door_drops_silent_and_oversized_clients_and_keeps_serving(edge, tls_origin, ca):
    """A door with sni = true has port 443's limits: a client that says nothing is closed after
    ``inspect``, one that sends 16 KiB of no ClientHello at once; the next client is served."""
    origin = tls_origin("mail.example.test")
    imaps = free_port()
    e = edge(f"""
        [backends.mail]
        servers = ["127.0.0.1:{origin.port}"]
        [[doors]]
        name = "imaps"
        listen = "127.0.0.1:{imaps}"
        sni = true
        [[routes]]
        hosts = ["mail.example.test"]
        tls = "passthrough"
        backend = "mail"
        doors = ["imaps"]
    """, timeouts='inspect = "1s"\nconnect = "2s"\nidle = "60s"', log_format="json")
    silent = [socket.create_connection(("127.0.0.1", imaps), timeout=10) for _ in range(20)]
    # a TLS record header promising a long handshake, then filler: never a whole ClientHello
    with socket.create_connection(("127.0.0.1", imaps), timeout=10) as big:
        big.sendall(b"\x16\x03\x01\x40\x00" + b"\x01" * 17000)
        assert big.recv(100) == b""
    for sock in silent:
        assert sock.recv(100) == b""  # closed by the edge (inspect), not by us
        sock.close()
    assert peer_names(imaps, "mail.example.test", ca) == {"mail.example.test"}
    deadline = time.monotonic() + 10  # each line is written when the edge has closed its side
    while True:
        ended = [ev["ended"] for ev in e.events() if ev.get("listener") == "imaps" and ev.get("kind") == "connection"]
        if ended.count("timeout: silent client") == 20 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert ended.count("timeout: silent client") == 20, ended
    e.assert_alive()
