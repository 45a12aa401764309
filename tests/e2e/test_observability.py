"""JSON access logs field by field, /metrics parsed with prometheus_client, the status page."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.config import route, site
from tests.support.procs import free_port, wait_listening
from tests.support.servers import Nginx
from tests.e2e.test_ssh import run_ssh
from tests.e2e.test_terminate import curl, local_ca, split


@pytest.fixture
def busy_edge(edge, start, tmp_path, sshd, tls_origin):
    web = free_port()
    nginx = start(Nginx, tmp_path, f'server {{ listen 127.0.0.1:{web}; return 200 "web\\n"; }}')
    wait_listening(web, proc=nginx.proc)
    origin = tls_origin("pass.example.test")
    e = edge(site(f"http://127.0.0.1:{web}", tables={"ssh": {"backend": "git"}},
                  backends={"git": f"127.0.0.1:{sshd.port}", "pass": f"127.0.0.1:{origin.port}"},
                  routes=[route("pass.example.test", "pass", tls="passthrough")]), log_format="json", admin=True)
    e.origin = origin
    return e


def events(edge) -> list[dict]:
    found = []
    for line in edge.log().split("\n")[:-1]:  # the last piece may be a line still being written
        event = json.loads(line)  # every line is one JSON object
        if event.get("logger") == "edge.access":
            found.append(event)
    return found


def wait_events(edge, predicate, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in events(edge):
            if predicate(event):
                return event
        time.sleep(0.1)
    raise AssertionError(f"no matching access-log event in {events(edge)}")


def test_json_access_log_fields(busy_edge, sshd, ca):
    e = busy_edge
    assert len(run_ssh(sshd, e.ssh_port, "head -c 300000 /dev/zero").stdout) == 300000
    assert run_ssh(sshd, e.https_port, "true").returncode == 0
    assert subprocess.run(["curl", "-sS", "--max-time", "10", "--resolve", f"pass.example.test:{e.https_port}:127.0.0.1",
                           "--cacert", str(ca.ca_pem), "--interface", "127.0.0.6",
                           f"https://pass.example.test:{e.https_port}/"], capture_output=True).returncode == 0
    assert split(curl(e.https_port, "app.example.test", "/x?y=1", cafile=local_ca(e)).stdout)[0] == 200
    subprocess.run(["curl", "-sS", "--max-time", "10", "-H", "Host: www.example.test", f"http://127.0.0.1:{e.http_port}/"],
                   capture_output=True)

    port22 = wait_events(e, lambda ev: ev.get("listener") == "ssh" and "bytes_in" in ev)
    assert (port22["protocol"], port22["backend"], port22["server"]) == ("ssh", "git", f"127.0.0.1:{sshd.port}")
    assert port22["bytes_in"] > 0 and port22["bytes_out"] > 0 and port22["duration"] > 0
    assert port22["client"] == "127.0.0.1" and port22["ended"] in ("closed", "client closed", "server closed")
    assert port22["bytes_out"] > 300000
    assert port22["spliced"] is True  # past the first 32 KiB the zero-copy path (os.splice) carried it
    ssh443 = wait_events(e, lambda ev: ev.get("listener") == "https" and ev.get("protocol") == "ssh")
    assert ssh443["backend"] == "git"
    passthrough = wait_events(e, lambda ev: ev.get("sni") == "pass.example.test")
    assert passthrough["client"] == "127.0.0.6" and passthrough["protocol"] == "tls"
    assert passthrough["tls_mode"] == "passthrough" and passthrough["route"] == "pass.example.test"
    assert passthrough["backend"] == "pass" and passthrough["server"] == f"127.0.0.1:{e.origin.port}"
    assert passthrough["spliced"] is False and passthrough["bytes_out"] > 1000  # a short exchange stays in Twisted
    request = wait_events(e, lambda ev: ev.get("method") == "GET" and ev.get("status") == 200)
    assert (request["host"], request["path"], request["backend"], request["route"]) == (
        f"app.example.test:{e.https_port}", "/x?y=1", "web", "app.example.test")
    assert request["upstream_time"] >= 0 and request["sni"] == "app.example.test"
    terminated = wait_events(e, lambda ev: ev.get("sni") == "app.example.test" and "bytes_in" in ev)
    assert terminated["tls_mode"] == "edge"
    redirect = wait_events(e, lambda ev: ev.get("status") == 308)
    assert redirect["host"] == "www.example.test" and redirect["listener"] == "http"


def scrape(edge) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{edge.admin_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_metrics_parse_and_count(busy_edge, ca):
    e = busy_edge
    for _ in range(3):
        assert split(curl(e.https_port, "app.example.test", "/", cafile=local_ca(e)).stdout)[0] == 200
    with socket.create_connection(("127.0.0.1", e.https_port), timeout=5) as sock:
        sock.sendall(b"\x00garbage")
        sock.recv(10)
    deadline = time.monotonic() + 10
    while True:
        families = scrape(e)
        requests = [s for s in families["edge_http_requests"].samples
                    if s.name == "edge_http_requests_total" and s.labels["status"] == "200"]
        errors = [s for s in families["edge_connections"].samples if s.labels.get("outcome") == "error"]
        if (requests and requests[0].value >= 3 and errors) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert requests[0].labels["backend"] == "web" and requests[0].value >= 3
    assert errors
    up = {s.labels["backend"]: s.value for s in families["edge_backend_server_up"].samples}
    assert up == {"git": 1.0, "web": 1.0, "pass": 1.0}
    expiry = families["edge_certificate_expiry_timestamp_seconds"].samples
    assert any("app.example.test" in s.labels["names"] and s.value > time.time() for s in expiry)
    assert "edge_http_request_duration_seconds" in families


def test_quiet_log_level_still_counts(edge, start, tmp_path):
    """With ``twist --log-level warn`` no access-log events are built, yet /metrics counts and warnings log."""
    web = free_port()
    nginx = start(Nginx, tmp_path, f'server {{ listen 127.0.0.1:{web}; return 200 "web\\n"; }}')
    wait_listening(web, proc=nginx.proc)
    e = edge(site(f"http://127.0.0.1:{web}", backends={"gone": f"http://127.0.0.1:{free_port()}"},
                  routes=[route("gone.example.test", "gone")]), log_format="json", admin=True, log_level="warn")
    for _ in range(3):
        assert split(curl(e.https_port, "app.example.test", "/", "--http1.1", cafile=local_ca(e)).stdout)[0] == 200
    assert split(curl(e.https_port, "gone.example.test", "/", "--http1.1", cafile=local_ca(e)).stdout)[0] == 502
    e.wait_log("backend gone refused the connection")  # warnings are still logged
    assert split(curl(e.https_port, "app.example.test", "/", "--http2", cafile=local_ca(e)).stdout)[0] == 200
    samples = [s for s in scrape(e)["edge_http_requests"].samples if s.name == "edge_http_requests_total"]
    by = {(s.labels["backend"], s.labels["protocol"], s.labels["outcome"], s.labels["status"]): s.value for s in samples}
    assert by[("web", "HTTP/1.1", "completed", "200")] == 3
    assert by[("web", "HTTP/2", "completed", "200")] == 1
    assert by[("gone", "HTTP/1.1", "backend_failed", "502")] == 1
    assert events(e) == []


def test_status_page_lists_what_runs(busy_edge):
    with urllib.request.urlopen(f"http://127.0.0.1:{busy_edge.admin_port}/", timeout=10) as response:
        page = response.read().decode()
    for text in ("<title>edge status</title>", "app.example.test", "pass.example.test", "passthrough", "git"):
        assert text in page
    # no backend here has a health check: none is claimed to be up
    assert ">not checked<" in page and '<span class="up">' not in page
    from edge import __version__

    assert f"edge {__version__}, up 0h 0m" in page or f"edge {__version__}, up 0h 1m" in page
    assert "last reload: none since start" in page
    assert f"<td>https</td><td><code>127.0.0.1:{busy_edge.https_port}</code></td>" in page
    assert f"<td>admin</td><td><code>127.0.0.1:{busy_edge.admin_port}</code></td>" in page


def test_status_page_in_headless_chromium(busy_edge, tmp_path):
    """Debian's chromium renders the page; its DOM shows routes, backends, certificates and errors."""
    url = f"http://127.0.0.1:{busy_edge.admin_port}/"
    result = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium'}", "--dump-dom", url],
        capture_output=True, text=True, timeout=120)
    dom = result.stdout
    assert "<h1>edge</h1>" in dom, result.stderr[-2000:]
    for text in ("app.example.test", "pass.example.test", "Backends", "Certificates", "Recent warnings and errors",
                 "Listeners", f"127.0.0.1:{busy_edge.https_port}", "last reload: none since start", ">not checked<"):
        assert text in dom, text


def test_status_page_says_how_the_last_reload_went(edge):
    import os
    import signal

    e = edge('[tls]\nissuer = "local"\n[backends.w]\nservers = ["127.0.0.1:1"]\n'
             '[[routes]]\nhosts = ["a.example.test"]\ntls = "passthrough"\nbackend = "w"\n', admin=True)
    good = e.config.read_text()
    e.config.write_text(good + "\nbogus = 1\n")
    os.kill(e.pid, signal.SIGHUP)
    e.wait_log("reload refused")
    with urllib.request.urlopen(f"http://127.0.0.1:{e.admin_port}/", timeout=10) as response:
        page = response.read().decode()
    assert "UTC, refused: " in page and "bogus: unknown key" in page
    e.config.write_text(good)
    os.kill(e.pid, signal.SIGHUP)
    e.wait_log("reloaded")
    with urllib.request.urlopen(f"http://127.0.0.1:{e.admin_port}/", timeout=10) as response:
        assert "UTC, applied" in response.read().decode()


def test_only_loopback_admin_addresses_go_unwarned():
    from edge.app.service import _loopback

    assert _loopback("127.0.0.1") and _loopback("127.0.0.2") and _loopback("::1") and _loopback("localhost")
    assert not _loopback("0.0.0.0") and not _loopback("::") and not _loopback("192.0.2.1") and not _loopback("edge")


def test_route_names_survive_a_reorder_on_reload(edge, start, tmp_path):
    """Metrics series and log lines follow the route's name, not its place: inserting a route before it
    and reordering on reload leaves ``route="app"`` one series that keeps counting."""
    import os
    import signal

    web = free_port()
    nginx = start(Nginx, tmp_path, f'server {{ listen 127.0.0.1:{web}; return 200 "web\\n"; }}')
    wait_listening(web, proc=nginx.proc)
    app = '[[routes]]\nname = "app"\nhosts = ["app.example.test"]\ntls = "edge"\nbackend = "web"\n'
    other = '[[routes]]\nname = "{name}"\nhosts = ["{host}"]\ntls = "edge"\nbackend = "web"\n'
    head = f'[tls]\nissuer = "local"\n[backends.web]\nservers = ["http://127.0.0.1:{web}"]\n'
    e = edge(head + app + other.format(name="blog", host="blog.example.test"), log_format="json", admin=True)
    assert split(curl(e.https_port, "app.example.test", "/", cafile=local_ca(e)).stdout)[0] == 200
    e.config.write_text(e.config.read_text().split("[[routes]]")[0] + other.format(name="new", host="new.example.test")
                        + other.format(name="blog", host="blog.example.test") + app)
    os.kill(e.pid, signal.SIGHUP)
    e.wait_log("reloaded")
    assert split(curl(e.https_port, "app.example.test", "/", cafile=local_ca(e)).stdout)[0] == 200
    requests = [ev for ev in wait_all(e, 2) if ev.get("kind") == "request"]
    assert [ev["route"] for ev in requests] == ["app", "app"]
    samples = [s for s in scrape(e)["edge_http_requests"].samples
               if s.name == "edge_http_requests_total" and s.labels["status"] == "200"]
    assert {s.labels["route"]: s.value for s in samples} == {"app": 2}


def wait_all(e, count: int, timeout: float = 10) -> list[dict]:
    """The access events once ``count`` request events are there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = events(e)
        if sum(1 for ev in found if ev.get("kind") == "request") >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} request events: {events(e)}")


def test_admin_allow_and_basic_auth(edge, tmp_path):
    """[admin] allow refuses other addresses (403); basic_auth asks for a user (401), htpasswd's bcrypt
    line lets alice in, to the page and /metrics alike; a reload changes both."""
    import base64
    import os
    import signal
    import urllib.error

    users = tmp_path / "admins.htpasswd"
    subprocess.run(["htpasswd", "-B", "-b", "-c", str(users), "alice", "wonderland"], check=True,
                   capture_output=True, timeout=30)
    port = free_port()
    e = edge(f'[admin]\nlisten = "127.0.0.1:{port}"\nallow = ["127.0.0.2"]\nbasic_auth = "{users}"\n',
             log_format="json")
    url = f"http://127.0.0.1:{port}/"

    def status(path: str = "", password: str | None = None) -> int:
        request = urllib.request.Request(url + path)
        if password is not None:
            request.add_header("Authorization", "Basic " + base64.b64encode(f"alice:{password}".encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as error:
            if error.code == 401:
                assert error.headers["WWW-Authenticate"] == 'Basic realm="edge admin"'
            return error.code

    assert status(password="wonderland") == 403  # 127.0.0.1 is not on the list
    e.config.write_text(e.config.read_text().replace('allow = ["127.0.0.2"]', 'allow = ["127.0.0.0/8"]'))
    os.kill(e.pid, signal.SIGHUP)
    e.wait_log("reloaded")
    assert status() == 401
    assert status(password="wrong") == 401
    assert status(password="wonderland") == 200
    assert status("metrics", password="wonderland") == 200
    assert status("metrics") == 401
    statuses = [ev["status"] for ev in e.events() if ev.get("kind") == "request" and ev.get("listener") == "admin"]
    assert statuses == [403, 401, 401, 200, 200, 401], statuses


def test_the_status_page_takes_no_request_body(edge):
    """A body sent to the admin listener is refused (413, closed) when its head is in, not read and spooled
    first: a 50 MB upload is cut short and the page still answers."""
    port = free_port()
    e = edge(f'[admin]\nlisten = "127.0.0.1:{port}"\n', log_format="json")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 50000000\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 ")
    for head in (b"Transfer-Encoding: chunked\r\n", b""):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n" + head + b"Connection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 413 " if head else b"HTTP/1.1 200 "), answer[:100]
    statuses = [ev["status"] for ev in e.events() if ev.get("listener") == "admin"]
    assert statuses[:2] == [413, 413] and statuses[2] == 200, statuses


@pytest.mark.parametrize("ending, outcome, text", [
    ("CLIENT_CLOSED", "closed", "client closed"),
    ("SERVER_CLOSED", "closed", "server closed"),
    (("CLOSED", "shutdown"), "closed", "closed: shutdown"),
    (("TIMEOUT", "idle"), "timeout", "timeout: idle"),
    (("REFUSED", "no route for SNI"), "refused", "refused: no route for SNI"),
    (("ERROR", "connect failed"), "error", "error: connect failed"),
])
def test_connection_outcome_is_counted_from_the_enum_and_logged_as_text(ending, outcome, text):
    """The metric's outcome label comes from the ending's enum, the access log's ``ended`` from its text."""
    from twisted.logger import globalLogPublisher

    from edge.ops import access_log as connection
    from edge.ops import metrics, outcomes

    value = getattr(outcomes, ending) if isinstance(ending, str) \
        else getattr(outcomes.Outcome, ending[0]).because(ending[1])
    a, b = socket.socketpair()
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        info = connection.ConnectionInfo(("127.0.0.1", 40000), a, "outcome-test")
        info.finish(value)
        info.finish(outcomes.CLOSED)  # once only
    finally:
        globalLogPublisher.removeObserver(seen.append)
        a.close()
        b.close()
    logged = [event for event in seen if event.get("listener") == "outcome-test"]
    assert len(logged) == 1 and logged[0]["ended"] == text and type(logged[0]["ended"]) is str, logged
    counted = [key for key in metrics._CONNECTIONS if key[0] == "outcome-test"]
    assert [key[-1] for key in counted] == [outcome] and type(counted[0][-1]) is str, counted
    metrics._CONNECTIONS.pop(counted[0])
