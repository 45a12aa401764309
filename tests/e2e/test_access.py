"""Who may come in, end to end: allow/deny lists (terminated, passthrough, SSH, doors, [listen] deny), basic auth
with a users file from Debian's htpasswd, and rate limits; curl from 127.0.0.1 and ::1, over HTTP/1.1 and HTTP/2."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import time

import pytest

from tests.support.config import passthrough, route, site
from tests.support.procs import free_port, wait_listening
from tests.support.servers import Nginx
from tests.e2e.test_terminate import local_ca

HOST = "app.example.test"
PROTOCOLS = ["--http1.1", "--http2"]


@pytest.fixture
def echo(start, tmp_path):
    """nginx answering with the request headers that access rules touch."""
    port = free_port()
    server = start(Nginx, tmp_path, f"""
        server {{
          listen 127.0.0.1:{port};
          location / {{ return 200 "auth=$http_authorization|user=$http_remote_user|xff=$http_x_forwarded_for\\n"; }}
        }}
        """)
    wait_listening(port, proc=server.proc)
    server.port = port
    return server


def web(port: int, **keys) -> str:
    """Backend ``web`` at ``port``, and a route for ``HOST`` to it with ``keys`` (tests/support/config.py)."""
    return site(f"http://127.0.0.1:{port}", host=HOST, **keys)


def curl(e, protocol: str, *args: str, source: str = "127.0.0.1", path: str = "/") -> tuple[int, dict, str]:
    """One request to the edge's HTTPS door on ``source`` (127.0.0.1 or ::1): status, headers, body."""
    port = e.https_port6 if source == "::1" else e.https_port
    address = "[::1]" if source == "::1" else "127.0.0.1"
    result = subprocess.run(
        ["curl", "-sS", "-i", "--max-time", "20", protocol, "--cacert", local_ca(e),
         "--resolve", f"{HOST}:{port}:{address}", *args, f"https://{HOST}:{port}{path}"],
        capture_output=True, text=True, timeout=40)
    assert result.returncode == 0, result.stderr
    head, _, body = result.stdout.replace("\r\n", "\n").partition("\n\n")
    lines = head.split("\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def wait_events(e, count: int, kind: str = "request", timeout: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [event for event in e.events() if event.get("kind") == kind]
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} {kind} events:\n{e.log()}")


# -- allow / deny ---------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_terminated_allow_list_admits_one_loopback_and_refuses_the_other(edge, echo, protocol):
    e = edge(web(echo.port, allow=["127.0.0.0/8"]), ipv6=True, log_format="json")
    status, _, body = curl(e, protocol, source="127.0.0.1")
    assert status == 200 and body.startswith("auth=|"), body
    status, _, body = curl(e, protocol, source="::1")
    assert (status, body) == (403, "access denied\n")
    events = wait_events(e, 2)
    assert [(ev["client"], ev["status"], ev["outcome"], ev["server"]) for ev in events] == [
        ("127.0.0.1", 200, "completed", f"http://127.0.0.1:{echo.port}"), ("::1", 403, "answered", "-")]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_terminated_deny_beats_allow(edge, echo, protocol):
    e = edge(web(echo.port, allow=["::/0", "0.0.0.0/0"], deny=["::1"]), ipv6=True)
    assert curl(e, protocol, source="127.0.0.1")[0] == 200
    assert curl(e, protocol, source="::1")[0] == 403


def test_passthrough_allow_list_closes_before_a_byte_reaches_the_backend(edge, tls_origin, ca):
    origin = tls_origin(HOST)
    e = edge(passthrough(f"127.0.0.1:{origin.port}", host=HOST, allow=["::1/128"]), ipv6=True, log_format="json")
    ok = subprocess.run(["curl", "-sS", "--max-time", "20", "--cacert", str(ca.ca_pem), "--resolve",
                         f"{HOST}:{e.https_port6}:[::1]", f"https://{HOST}:{e.https_port6}/"],
                        capture_output=True, text=True, timeout=40)
    assert ok.returncode == 0 and "s_server" in ok.stdout, ok.stderr
    refused = subprocess.run(["curl", "-sS", "--max-time", "20", "--cacert", str(ca.ca_pem), "--resolve",
                              f"{HOST}:{e.https_port}:127.0.0.1", f"https://{HOST}:{e.https_port}/"],
                             capture_output=True, text=True, timeout=40)
    assert refused.returncode != 0
    events = wait_events(e, 2, "connection")
    by_client = {ev["client"]: ev for ev in events}
    assert by_client["::1"]["server"] == f"127.0.0.1:{origin.port}"
    bad = by_client["127.0.0.1"]
    assert bad["ended"] == "refused: address not allowed" and bad["server"] == "-" and bad["route"] == HOST


def ssh(sshd, port: int, host: str) -> subprocess.CompletedProcess:
    return subprocess.run(sshd.ssh_args(port) + [f"{sshd.user}@{host}", "echo", "in"], capture_output=True,
                          timeout=60)


def test_ssh_allow_list_with_openssh(edge, sshd):
    """Port 22 listens on 127.0.0.1, 443 on 127.0.0.1 and ::1 (SSH is recognised there too)."""
    e = edge(f"""
    [ssh]
    backend = "git"
    allow = ["::1"]
    [backends.git]
    servers = ["127.0.0.1:{sshd.port}"]
    """, ipv6=True, log_format="json")
    assert ssh(sshd, e.https_port6, "::1").stdout == b"in\n"
    for port in (e.ssh_port, e.https_port):
        assert ssh(sshd, port, "127.0.0.1").returncode == 255
    events = wait_events(e, 3, "connection")
    refused = [ev for ev in events if ev["client"] == "127.0.0.1"]
    assert len(refused) == 2 and all(ev["ended"] == "refused: address not allowed" and ev["server"] == "-"
                                     for ev in refused), refused


def test_door_deny_and_conn_limit_with_openssh(edge, sshd):
    v4, v6 = free_port(), free_port("::1")
    e = edge(f"""
    [backends.git]
    servers = ["127.0.0.1:{sshd.port}"]
    [[doors]]
    name = "alt"
    listen = ["127.0.0.1:{v4}", "[::1]:{v6}"]
    backend = "git"
    deny = ["127.0.0.1"]
    conn_limit = {{ new = 2, per = "1h" }}
    """, log_format="json")
    assert ssh(sshd, v4, "127.0.0.1").returncode == 255
    assert ssh(sshd, v6, "::1").stdout == b"in\n"
    assert ssh(sshd, v6, "::1").stdout == b"in\n"
    assert ssh(sshd, v6, "::1").returncode == 255  # the third new connection within the hour
    # Four connection lines; a passed connection's line can come after the next one's refusal (edge logs the
    # close when it sees it, ssh may exit first), so the lines are compared without their order.
    ended = sorted(ev["ended"] for ev in wait_events(e, 4, "connection"))
    assert ended == ["closed", "closed", "refused: address not allowed", "refused: too many connections"], ended


def test_listen_deny_refuses_everywhere(edge, echo):
    e = edge(web(echo.port), ipv6=True, listen_extra='deny = ["::1/128"]', log_format="json")
    assert curl(e, "--http2", source="127.0.0.1")[0] == 200
    with pytest.raises(AssertionError):
        curl(e, "--http2", source="::1")
    refused = [ev for ev in wait_events(e, 2, "connection") if ev["client"] == "::1"]
    assert refused and refused[0]["ended"] == "refused: address denied"


# -- basic auth -----------------------------------------------------------------------------------


def htpasswd(path, user: str, password: str) -> None:
    """Debian's htpasswd (apache2-utils), bcrypt (-B) as the README tells users to."""
    flags = "-bB" if path.exists() else "-cbB"
    subprocess.run(["htpasswd", flags, str(path), user, password], check=True, capture_output=True)


def basic(user: str, password: str) -> str:
    return "Authorization: Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_basic_auth_with_htpasswd_bcrypt(edge, echo, tmp_path, protocol):
    htpasswd(tmp_path / "users.htpasswd", "alice", "wonderland")
    e = edge(web(echo.port, basic_auth={"file": "../users.htpasswd", "realm": "Home lab"}, user_header="Remote-User"),
             ipv6=True, log_format="json")
    status, headers, _ = curl(e, protocol)
    assert status == 401 and headers["www-authenticate"] == 'Basic realm="Home lab"'
    assert curl(e, protocol, "-H", basic("alice", "wrong"))[0] == 401
    assert curl(e, protocol, "-H", basic("mallory", "wonderland"))[0] == 401
    assert curl(e, protocol, "-H", "Authorization: Bearer abc")[0] == 401
    status, _, body = curl(e, protocol, "-u", "alice:wonderland", "-H", "Remote-User: admin", source="::1")
    # The password never reaches the backend, and a client-sent Remote-User is replaced by the real one.
    assert (status, body) == (200, "auth=|user=alice|xff=::1\n")
    for _ in range(3):  # the verification cache answers these; the result is the same
        assert curl(e, protocol, "-u", "alice:wonderland")[0] == 200
    events = wait_events(e, 8)
    assert [ev["user"] for ev in events][-5:] == ["-", "alice", "alice", "alice", "alice"]
    assert events[0]["status"] == 401 and events[0]["server"] == "-"


def test_basic_auth_passes_authorization_when_asked(edge, echo, tmp_path):
    htpasswd(tmp_path / "users.htpasswd", "alice", "wonderland")
    e = edge(web(echo.port, basic_auth=f"{tmp_path}/users.htpasswd", pass_authorization=True))
    status, _, body = curl(e, "--http2", "-u", "alice:wonderland")
    assert status == 200 and body.startswith("auth=Basic YWxpY2U6d29uZGVybGFuZA==|user=|"), body


def wait_count(e, text: str, count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while e.log().count(text) < count:
        assert time.monotonic() < deadline, e.log()
        time.sleep(0.05)


def test_users_file_is_read_again_on_reload_and_a_bad_one_is_refused(edge, echo, tmp_path):
    users = tmp_path / "users.htpasswd"
    htpasswd(users, "alice", "wonderland")
    e = edge(web(echo.port, basic_auth=str(users)))
    assert curl(e, "--http1.1", "-u", "bob:builder")[0] == 401
    htpasswd(users, "bob", "builder")
    os.kill(e.pid, signal.SIGHUP)
    wait_count(e, "reloaded", 1)
    assert curl(e, "--http1.1", "-u", "bob:builder")[0] == 200
    users.write_text(users.read_text() + "carol:$apr1$abc$def\n")  # MD5: refused, with its line
    os.kill(e.pid, signal.SIGHUP)
    wait_count(e, "reload refused", 1)
    assert f"{users}: line 3 (carol): not a bcrypt" in e.log()
    assert curl(e, "--http2", "-u", "bob:builder")[0] == 200  # the last good file still holds
    e.assert_alive()


# -- rate limits ----------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_rate_limit_answers_429_at_the_configured_rate_and_recovers(edge, echo, protocol):
    e = edge(web(echo.port, rate_limit={"requests": 2, "per": "1s", "burst": 5}), ipv6=True)
    port = e.https_port
    url = f"https://{HOST}:{port}/"
    result = subprocess.run(  # 12 requests on one kept-alive connection, as fast as curl sends them
        ["curl", "-sS", protocol, "--max-time", "30", "--cacert", local_ca(e), "--resolve", f"{HOST}:{port}:127.0.0.1",
         "-w", "%{http_code}\n", *["-o", "/dev/null", url] * 12], capture_output=True, text=True, timeout=60)
    codes = result.stdout.split()
    assert codes[:5] == ["200"] * 5 and "429" in codes[5:], codes
    assert codes.count("200") <= 8, codes  # the burst, and at most 2 a second more while they ran
    status, headers, body = curl(e, protocol)
    assert status == 429 and body == "too many requests\n" and int(headers["retry-after"]) == 1
    assert curl(e, protocol, source="::1")[0] == 200  # per address: ::1 has its own bucket
    deadline = time.monotonic() + 5
    while curl(e, protocol)[0] == 429:  # a token every half second
        assert time.monotonic() < deadline
        time.sleep(0.1)


# -- forward auth ---------------------------------------------------------------------------------


class AuthServer:
    """A stand-in for Authelia/Authentik/oauth2-proxy implementing the documented forward-auth contract: it reads
    X-Forwarded-Method/-Proto/-Host/-Uri/-For and the client's cookie; ``session=good`` is admitted (200 with
    Remote-User/-Groups/-Email), /private/deny is refused (403), anything else goes to the login page (302),
    and /slow answers after the edge gave up.  HTTP/1.1 with keep-alive, as the real ones speak it."""

    def __init__(self) -> None:
        import http.server
        import threading

        asked = self.asked = []
        open_sockets = self.open_sockets = set()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                open_sockets.add(self.connection)

            def finish(self) -> None:
                open_sockets.discard(self.connection)
                super().finish()

            def do_GET(self) -> None:
                asked.append({k.lower(): v for k, v in self.headers.items()} | {":path": self.path})
                uri = self.headers.get("X-Forwarded-Uri", "")
                if uri.startswith("/slow"):
                    time.sleep(2)
                if "session=good" in (self.headers.get("Cookie") or ""):
                    self._send(200, b"", [("Remote-User", "alice"), ("Remote-Groups", "admins,dev"),
                                          ("Remote-Email", "alice@example.test"), ("X-Not-Copied", "1")])
                elif uri.startswith("/private/deny"):
                    self._send(403, b"forbidden by auth\n", [("Content-Type", "text/plain")])
                else:
                    rd = f"{self.headers['X-Forwarded-Proto']}://{self.headers['X-Forwarded-Host']}{uri}"
                    self._send(302, b"<a>login</a>\n", [("Location", f"https://auth.example.test/?rd={rd}"),
                                                         ("Set-Cookie", "flow=1; Secure"), ("Content-Type", "text/html")])

            def _send(self, status: int, body: bytes, headers: list) -> None:
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # /slow writes to a connection the edge closed
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop listening and close the kept-alive connections (the edge's pool then closes its ends)."""
        self.server.shutdown()
        self.server.server_close()
        for sock in list(self.open_sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def auth_server():
    server = AuthServer()
    yield server
    server.stop()


@pytest.fixture
def logging_origin(start, tmp_path):
    """nginx whose access log records the identity headers each request carried."""
    port = free_port()
    log = tmp_path / "origin-access.log"
    server = start(Nginx, tmp_path, f"""
        log_format who '$request_uri user=$http_remote_user groups=$http_remote_groups email=$http_remote_email '
                       'notcopied=$http_x_not_copied cookie=$http_cookie';
        server {{
          listen 127.0.0.1:{port};
          access_log {log} who;
          location / {{ return 200 "ok $http_remote_user\\n"; }}
          # proxy_pass reads the whole request body before it answers: the body's size is then known
          location /upload {{ proxy_pass http://127.0.0.1:{port}/sink; }}
          location /sink {{ return 200 "ok $http_remote_user $content_length\\n"; }}
        }}
        """, name="logging-nginx")
    wait_listening(port, proc=server.proc)
    server.port, server.access_log = port, log
    return server


def forward_route(origin: int, auth: int) -> str:
    return web(origin, forward_auth={"url": f"http://127.0.0.1:{auth}/api/authz/forward-auth?x=1",
                                     "copy_headers": ["Remote-User", "Remote-Groups", "Remote-Email"], "timeout": "1s"})


def origin_lines(origin, count: int, timeout: float = 10) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = origin.access_log.read_text().splitlines() if origin.access_log.exists() else []
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"the origin logged fewer than {count} requests")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_forward_auth_admits_with_copied_headers_and_relays_refusals(edge, logging_origin, auth_server, protocol):
    e = edge(forward_route(logging_origin.port, auth_server.port), ipv6=True, log_format="json")
    forged = ["-H", "Remote-User: root", "-H", "Remote-Groups: wheel"]
    # Not logged in: the auth server's redirect to its login page, as it sent it.
    status, headers, body = curl(e, protocol, *forged, path="/private/page?a=b")
    assert status == 302 and body == "<a>login</a>\n"
    assert headers["location"] == f"https://auth.example.test/?rd=https://{HOST}:{e.https_port}/private/page?a=b"
    assert headers["set-cookie"] == "flow=1; Secure"
    # Refused outright: its 403 and body.
    status, _, body = curl(e, protocol, path="/private/deny")
    assert (status, body) == (403, "forbidden by auth\n")
    # Logged in: through, with the identity the auth server gave, never the forged one.
    status, _, body = curl(e, protocol, "-b", "session=good", *forged, path="/app", source="::1")
    assert (status, body) == (200, "ok alice\n")
    assert origin_lines(logging_origin, 1) == [
        "/app user=alice groups=admins,dev email=alice@example.test notcopied=- cookie=session=good"]
    # A request body waits while the auth server is asked, then goes to the backend whole.
    upload = e.config.parent / "upload.bin"
    upload.write_bytes(os.urandom(300_000))
    status, _, body = curl(e, protocol, "-b", "session=good", "--data-binary", f"@{upload}", path="/upload")
    assert status == 200 and body.startswith("ok alice ") and int(body.split()[2]) == 300_000, body  # whole
    assert any(line.startswith("/upload user=alice ") for line in origin_lines(logging_origin, 3))
    asked = auth_server.asked[-2]
    assert asked[":path"] == "/api/authz/forward-auth?x=1"
    assert (asked["x-forwarded-method"], asked["x-forwarded-proto"], asked["x-forwarded-host"],
            asked["x-forwarded-uri"], asked["x-forwarded-for"]) == ("GET", "https", f"{HOST}:{e.https_port6}",
                                                                    "/app", "::1")
    assert asked["cookie"] == "session=good" and asked["remote-user"] == "root"  # the auth server sees all
    events = wait_events(e, 4)
    assert [(ev["status"], ev["user"]) for ev in events] == [(302, "-"), (403, "-"), (200, "alice"), (200, "alice")]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_forward_auth_fails_closed(edge, logging_origin, auth_server, protocol):
    e = edge(forward_route(logging_origin.port, auth_server.port))
    status, _, body = curl(e, protocol, "-b", "session=good", path="/slow")
    assert (status, body) == (503, "the authentication service did not answer\n")
    auth_server.stop()
    status, _, _ = curl(e, protocol, "-b", "session=good")
    assert status == 503
    assert not logging_origin.access_log.exists() or not logging_origin.access_log.read_text()


def test_rules_match_the_client_a_trusted_proxy_header_names(edge, tls_origin, ca):
    """Behind a load balancer: the address in its PROXY header is the one allow/deny look at."""
    import ssl

    origin = tls_origin(HOST)
    e = edge(passthrough(f"127.0.0.1:{origin.port}", host=HOST, deny=["192.0.2.0/24"]), accept_proxy=["127.0.0.1"], log_format="json")
    context = ssl.create_default_context(cafile=str(ca.ca_pem))

    def through_proxy(client: str) -> bytes:
        with socket.create_connection(("127.0.0.1", e.https_port), timeout=10) as raw:
            raw.sendall(f"PROXY TCP4 {client} 127.0.0.1 40000 {e.https_port}\r\n".encode())
            try:
                with context.wrap_socket(raw, server_hostname=HOST) as tls:
                    tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
                    return tls.recv(100)
            except (ssl.SSLError, OSError):
                return b""

    assert through_proxy("192.0.2.9") == b""
    assert through_proxy("198.51.100.1").startswith(b"HTTP/1.0 200")
    events = {ev["client"]: ev for ev in wait_events(e, 2, "connection")}
    assert events["192.0.2.9"]["ended"] == "refused: address not allowed" and events["192.0.2.9"]["server"] == "-"
    assert events["198.51.100.1"]["server"] == f"127.0.0.1:{origin.port}"


# -- hostile: what a review found ---------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_guarded_path_cannot_be_walked_around(edge, start, tmp_path, protocol):
    """A basic_auth route on /admin beside an open / on the same host: encoded, doubled and dotted
    spellings of /admin are what nginx serves as /admin, so they must meet the password too."""
    port = free_port()
    server = start(Nginx, tmp_path, f"""
        server {{
          listen 127.0.0.1:{port};
          location /admin/ {{ return 200 "SECRET uri=$uri\\n"; }}
          location / {{ return 200 "public\\n"; }}
        }}
        """)
    wait_listening(port, proc=server.proc)
    users = tmp_path / "users"
    subprocess.run(["htpasswd", "-B", "-C", "5", "-b", "-c", str(users), "alice", "wonderland"], check=True,
                   capture_output=True, timeout=30)
    e = edge(web(port, routes=[route(HOST, name="admin", paths=["/admin"], basic_auth=str(users))]))
    for path in ("/admin/secret.txt", "/%61dmin/secret.txt", "//admin/secret.txt", "/./admin/secret.txt",
                 "/x/../admin/secret.txt", "/%2e%2e/admin/secret.txt"):
        status, _, body = curl(e, protocol, "--path-as-is", path=path)
        assert status == 401 and "SECRET" not in body, (path, status, body)
    status, _, body = curl(e, protocol, "--path-as-is", "-u", "alice:wonderland", path="/%61dmin/secret.txt")
    assert status == 200 and body.startswith("SECRET"), body
    assert curl(e, protocol, path="/other")[2] == "public\n"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_auth_server_judges_the_real_request_never_the_clients_x_original_url(edge, logging_origin,
                                                                                  auth_server, protocol):
    """Authelia's legacy endpoint and Authentik's nginx one prefer X-Original-URL: a client's own must not
    reach the auth server (it would have /private judged as a public URL); edge sets it from the request."""
    e = edge(forward_route(logging_origin.port, auth_server.port), log_format="json")
    status, _, _ = curl(e, protocol, "-b", "session=good", "-H", "X-Original-URL: https://public.example.test/",
                        "-H", "X-Real-IP: 203.0.113.9", "-H", "X-Original-Method: GET", path="/private?x=1")
    assert status == 200
    asked = auth_server.asked[-1]
    assert asked["x-original-url"] == f"https://{HOST}:{e.https_port}/private?x=1"
    assert asked["x-real-ip"] == "127.0.0.1" and asked["x-original-method"] == "GET"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_no_spelling_of_the_user_header_is_forged(edge, start, tmp_path, protocol):
    """With user_header, a client's Remote_User (nginx reads it as Remote-User with underscores_in_headers,
    CGI backends always do) and, over HTTP/1.1, a Connection header naming Remote-User change nothing:
    the backend sees the user edge admitted."""
    port = free_port()
    server = start(Nginx, tmp_path, f"""
        server {{
          listen 127.0.0.1:{port};
          underscores_in_headers on;
          location / {{ return 200 "user=$http_remote_user\\n"; }}
        }}
        """)
    wait_listening(port, proc=server.proc)
    users = tmp_path / "users"
    subprocess.run(["htpasswd", "-B", "-C", "5", "-b", "-c", str(users), "alice", "wonderland"], check=True,
                   capture_output=True, timeout=30)
    e = edge(web(port, basic_auth=str(users), user_header="Remote-User"))
    status, _, body = curl(e, protocol, "-u", "alice:wonderland", "-H", "Remote_User: admin", path="/")
    assert (status, body) == (200, "user=alice\n")
    if protocol == "--http1.1":
        status, _, body = curl(e, protocol, "-u", "alice:wonderland", "-H", "Connection: Remote-User", path="/")
        assert (status, body) == (200, "user=alice\n")


def test_forwarded_port_80_keeps_the_routes_allow_list(edge, start, tmp_path, echo):
    """http = "forward" hands port 80 over whole: a terminated route's allow list holds there too (403),
    and rules that need each request (basic_auth, forward_auth, rate_limit) are a config error with it."""
    e = edge(web(echo.port, allow=["192.0.2.0/24"], http="forward", http_backend="tcp",
                 backends={"tcp": f"127.0.0.1:{echo.port}"}))
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "-H",
                          f"Host: {HOST}", f"http://127.0.0.1:{e.http_port}/port80-secret"],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout == "403"
    from edge.config import ConfigError, parse
    import tomllib

    text = web(echo.port, http="forward", http_backend="tcp", basic_auth="x", backends={"tcp": "127.0.0.1:1"},
               tables={"listen": {"https": ["127.0.0.1:1"]}})
    with pytest.raises(ConfigError, match="basic_auth: cannot hold on port 80"):
        parse(tomllib.loads(text), "edge.toml")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_password_hashing_does_not_hold_up_other_requests(edge, echo, tmp_path, protocol):
    """bcrypt at cost 14 takes over a second here: while a wrong password is being hashed, a request for
    another route is answered (it finishes first); hashing used to run in the reactor thread."""
    users = tmp_path / "users"
    subprocess.run(["htpasswd", "-B", "-C", "14", "-b", "-c", str(users), "bob", "builder"], check=True,
                   capture_output=True, timeout=60)
    e = edge(web(echo.port, paths=["/private"], basic_auth=str(users), routes=[route(HOST, name="public")]))
    port = e.https_port
    slow = subprocess.Popen(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "30", protocol,
                             "--cacert", local_ca(e), "--resolve", f"{HOST}:{port}:127.0.0.1", "-u", "bob:guess",
                             f"https://{HOST}:{port}/private"], stdout=subprocess.PIPE, text=True)
    try:
        cpu = lambda: sum(int(x) for x in open(f"/proc/{e.pid}/stat").read().rsplit(")", 1)[1].split()[11:13])
        start, deadline = cpu(), time.monotonic() + 20
        while cpu() - start < 30 and time.monotonic() < deadline:  # the edge is hashing (0.3 s of CPU spent)
            time.sleep(0.02)
        assert slow.poll() is None, "the hashing ended before the edge was seen at it"
        status, _, body = curl(e, protocol, path="/public")
        assert status == 200
        assert slow.poll() is None, "the wrong password was answered before the other request"
        assert slow.communicate(timeout=30)[0] == "401"
    finally:
        slow.kill()
        slow.wait()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_two_authorization_headers_are_no_credentials(edge, echo, tmp_path, protocol):
    """With pass_authorization the backend reads Authorization too: a request carrying alice's right one
    and another must not be checked on one and passed on with both (401)."""
    users = tmp_path / "users"
    subprocess.run(["htpasswd", "-B", "-C", "5", "-b", "-c", str(users), "alice", "wonderland"], check=True,
                   capture_output=True, timeout=30)
    e = edge(web(echo.port, basic_auth=str(users), pass_authorization=True))
    right = "Authorization: Basic " + base64.b64encode(b"alice:wonderland").decode()
    other = "Authorization: Basic " + base64.b64encode(b"bob:builder").decode()
    assert curl(e, protocol, "-H", right)[0] == 200
    assert curl(e, protocol, "-H", right, "-H", other)[0] == 401
