"""``[edge] errors_dir`` and ``intercept_errors``, end to end: nginx as the backend (HTTP/1.1 and h2c), curl over
HTTP/1.1 and HTTP/2 in front.  Edge's own errors (502, 404, 403, 401, 429) are answered with the pages; a route with
``intercept_errors`` gets the page instead of the backend's error body, a route without it the backend's body."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from edge.config import ConfigError, load
from tests.support.config import route, site
from tests.support.edge import run_edge_command
from tests.support.procs import free_port, rss_kib, wait_listening
from tests.support.servers import Nginx
from tests.e2e.test_terminate import local_ca

PROTOCOLS = ["--http1.1", "--http2"]
PAGES = {status: f"<!doctype html><title>{status}</title><h1>edge says {status}</h1>\n"
         for status in (401, 403, 404, 429, 500, 502, 503)}
HUGE = 50 * 1024 * 1024
MEDIUM = 300 * 1024  # under the 1 MiB edge reads of an intercepted body to keep its connection


def backend_config(port: int, files: Path, log: Path, http2: bool = False) -> str:
    """nginx answering errors with bodies of its own; a 500 (nginx closes after it) and a 503 (kept alive) with a
    50 MB body at /huge500 and /huge503, a 503 with a 300 KiB body at /medium."""
    return f"""
        log_format conn '$connection $connection_requests $request_uri $status';
        server {{
          listen 127.0.0.1:{port}{' http2' if http2 else ''};
          access_log {log} conn;
          add_header X-Backend yes always;
          location = /missing {{ return 404 "backend 404\\n"; }}
          location = /boom {{ return 500 "backend 500\\n"; }}
          location = /busy {{ return 503 "backend 503\\n"; }}
          location = /teapot {{ return 418 "backend 418\\n"; }}
          location = /ok {{ return 200 "backend ok\\n"; }}
          location = /huge500 {{ error_page 500 /big.bin; return 500; }}
          location = /huge503 {{ error_page 503 /big.bin; return 503; }}
          location = /big.bin {{ internal; root {files}; }}
          location = /medium {{ error_page 503 /medium.bin; return 503; }}
          location = /medium.bin {{ internal; root {files}; }}
        }}
        """


class Backends:
    """Two nginx: HTTP/1.1 on ``port``, h2c on ``h2_port``; their access logs name each request's connection."""

    def __init__(self, start, tmp: Path) -> None:
        files = tmp / "files"
        files.mkdir()
        with open(files / "big.bin", "wb") as f:
            f.truncate(HUGE)
        (files / "medium.bin").write_bytes(b"m" * MEDIUM)
        self.port, self.h2_port = free_port(), free_port()
        self.log, self.h2_log = tmp / "access.log", tmp / "access-h2.log"
        self.nginx = start(Nginx, tmp, backend_config(self.port, files, self.log))
        self.nginx_h2 = start(Nginx, tmp, backend_config(self.h2_port, files, self.h2_log, True), "nginx-h2")
        wait_listening(self.port, proc=self.nginx.proc)
        wait_listening(self.h2_port, proc=self.nginx_h2.proc)

    def requests(self, h2: bool = False) -> list[tuple[str, ...]]:
        """(connection, its request number, URI, status) of each request nginx logged."""
        path = self.h2_log if h2 else self.log
        return [tuple(line.split()) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def backends(start, tmp_path):
    return Backends(start, tmp_path)


def write_pages(directory: Path, pages: dict[int, str] = PAGES) -> None:
    directory.mkdir(exist_ok=True)
    for status, text in pages.items():
        (directory / f"{status}.html").write_text(text)


def edge_config(backends: Backends, users: Path) -> str:
    return site(f"http://127.0.0.1:{backends.port}", intercept_errors=True, hsts="1y",
                headers={"response": {"set": {"X-Edge": "page"}}},
                backends={"web2": {"servers": [f"http://127.0.0.1:{backends.h2_port}"], "protocol": "h2"},
                          "down": f"http://127.0.0.1:{free_port()}"},
                routes=[route("h2.example.test", "web2", intercept_errors=True),
                        route("plain.example.test"),
                        route("down.example.test", "down"),
                        route("closed.example.test", allow=["192.0.2.0/24"]),
                        route("auth.example.test", basic_auth={"file": str(users), "realm": "Home lab"}),
                        route("rate.example.test", rate_limit={"requests": 1, "per": "1m", "burst": 1}),
                        route("plain-http.example.test", http="deny"),
                        route("paths.example.test", paths=["/only"])])


@pytest.fixture
def paged(edge, backends, tmp_path):
    """An edge whose errors_dir (relative to its config file) holds PAGES, in front of ``backends``."""
    write_pages(tmp_path / "errors")
    users = tmp_path / "users.htpasswd"
    subprocess.run(["htpasswd", "-B", "-C", "4", "-b", "-c", str(users), "alice", "wonderland"], check=True,
                   capture_output=True)
    e = edge(edge_config(backends, users), edge_extra='errors_dir = "../errors"', log_format="json")
    e.pages_dir = tmp_path / "errors"
    return e


def curl(e, protocol: str, host: str, *paths: str, args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    port = e.https_port
    urls = [f"https://{host}:{port}{path}" for path in paths]
    return subprocess.run(["curl", "-sS", "--max-time", "30", protocol, "--cacert", local_ca(e),
                           "--resolve", f"{host}:{port}:127.0.0.1", *args, *urls],
                          capture_output=True, timeout=60)


def fetch(e, protocol: str, host: str, path: str = "/", *args: str) -> tuple[int, dict[str, str], bytes]:
    """One request: status, headers (names lower-cased), body."""
    result = curl(e, protocol, host, path, args=("-i", *args))
    assert result.returncode == 0, result.stderr
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def assert_page(status: int, headers: dict[str, str], body: bytes, expected: int) -> None:
    assert status == expected, (status, body)
    assert body == PAGES[expected].encode(), body
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert int(headers["content-length"]) == len(PAGES[expected])


# -- edge's own answers ---------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_edges_own_errors_are_served_from_the_pages(paged, protocol):
    e = paged
    assert_page(*fetch(e, protocol, "down.example.test", "/"), 502)  # backend down
    assert_page(*fetch(e, protocol, "paths.example.test", "/elsewhere"), 404)  # no path of the host matches
    assert_page(*fetch(e, protocol, "closed.example.test", "/"), 403)  # allow list
    status, headers, body = fetch(e, protocol, "auth.example.test", "/")
    assert_page(status, headers, body, 401)
    assert headers["www-authenticate"] == 'Basic realm="Home lab"'
    assert fetch(e, protocol, "auth.example.test", "/ok", "-u", "alice:wonderland")[2] == b"backend ok\n"
    assert fetch(e, protocol, "rate.example.test", "/ok")[0] == 200
    status, headers, body = fetch(e, protocol, "rate.example.test", "/ok")
    assert_page(status, headers, body, 429)
    assert int(headers["retry-after"]) >= 1


def test_port_80_answers_use_the_pages_too(paged):
    e = paged
    result = subprocess.run(["curl", "-sS", "-i", "--max-time", "20", f"http://plain-http.example.test:{e.http_port}/",
                             "--resolve", f"plain-http.example.test:{e.http_port}:127.0.0.1"],
                            capture_output=True, timeout=40)
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 ") and body == PAGES[404].encode(), result.stdout
    assert b"\r\nContent-Type: text/html; charset=utf-8\r\n" in head
    redirect = subprocess.run(["curl", "-sS", "-i", "--max-time", "20", f"http://app.example.test:{e.http_port}/",
                               "--resolve", f"app.example.test:{e.http_port}:127.0.0.1"],
                              capture_output=True, timeout=40)
    assert redirect.stdout.startswith(b"HTTP/1.1 308 ") and b"Redirecting to https://" in redirect.stdout  # no page


def test_head_gets_the_pages_headers_without_a_body(paged, backends):
    for protocol in PROTOCOLS:
        for host, path, status in (("down.example.test", "/", 502), ("app.example.test", "/missing", 404)):
            result = curl(paged, protocol, host, path, args=("-I",))
            assert result.returncode == 0, result.stderr
            head, _, body = result.stdout.partition(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            assert int(lines[0].split()[1]) == status and body == b"", result.stdout
            assert headers["content-type"] == "text/html; charset=utf-8"
            assert int(headers["content-length"]) == len(PAGES[status])


def test_reload_replaces_a_page(paged):
    e = paged
    assert fetch(e, "--http1.1", "down.example.test")[2] == PAGES[502].encode()
    (e.pages_dir / "502.html").write_text("<h1>new 502</h1>\n")
    os.kill(e.pid, signal.SIGHUP)
    e.wait_log("reloaded")
    for protocol in PROTOCOLS:
        status, headers, body = fetch(e, protocol, "down.example.test")
        assert (status, body, headers["content-length"]) == (502, b"<h1>new 502</h1>\n", "17")


# -- intercept_errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["app.example.test", "h2.example.test"], ids=["h1-backend", "h2-backend"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_intercepted_backend_errors_get_the_page(paged, protocol, host):
    e = paged
    for path, status in (("/missing", 404), ("/boom", 500), ("/busy", 503)):
        got, headers, body = fetch(e, protocol, host, path)
        assert_page(got, headers, body, status)
        assert "x-backend" not in headers  # the backend's answer is replaced whole
        if host == "app.example.test":  # the route's response rules and HSTS hold on the page too
            assert headers["x-edge"] == "page" and headers["strict-transport-security"].startswith("max-age=")
    # No page for 418, and no error at 200: the backend's answer passes unchanged.
    status, headers, body = fetch(e, protocol, host, "/teapot")
    assert (status, body, headers["x-backend"]) == (418, b"backend 418\n", "yes")
    status, headers, body = fetch(e, protocol, host, "/ok")
    assert (status, body) == (200, b"backend ok\n")
    events = [event for event in e.events() if event.get("path") == "/boom"]
    assert [(ev["status"], ev["outcome"]) for ev in events] == [(500, "intercepted")]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_without_intercept_errors_the_backends_error_body_passes(paged, protocol):
    for path, status in (("/missing", 404), ("/boom", 500), ("/busy", 503)):
        got, headers, body = fetch(paged, protocol, "plain.example.test", path)
        assert (got, body, headers["x-backend"]) == (status, f"backend {status}\n".encode(), "yes")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_keep_alive_after_an_intercepted_error(paged, backends, protocol):
    """Two requests on one client connection, the first intercepted: both answered; the backend's connection
    was kept too (its body had ended), so nginx saw both requests on one connection."""
    result = curl(paged, protocol, "app.example.test", "/missing", "/ok",
                  args=("-w", "|%{http_code} %{num_connects}|"))
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert out == f"{PAGES[404]}|404 1|backend ok\n|200 0|", out
    requests = backends.requests()
    assert requests == [(requests[0][0], "1", "/missing", "404"), (requests[0][0], "2", "/ok", "200")], requests


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_intercepted_body_read_to_its_end_keeps_the_backend_connection(paged, backends, protocol):
    """A 503 with a 300 KiB body, intercepted: edge reads the body to its end and puts the connection back in
    its pool, so a later request runs on it (asked for until it does, at most 20 times)."""
    e = paged
    result = curl(e, protocol, "app.example.test", "/medium")
    assert result.returncode == 0 and result.stdout == PAGES[503].encode(), result
    for _ in range(20):
        assert fetch(e, protocol, "app.example.test", "/ok")[0] == 200
        requests = backends.requests()
        medium = next(conn for conn, _, uri, _ in requests if uri == "/medium")
        if any(conn == medium and uri == "/ok" for conn, _, uri, _ in requests):
            break
    else:
        raise AssertionError(f"the connection of /medium was never reused: {requests}")


@pytest.mark.parametrize("status", [500, 503])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_huge_intercepted_body_is_not_relayed_nor_held(paged, backends, protocol, status):
    """A 500 or 503 with a 50 MB body: the client gets the page at once and its connection goes on; edge reads
    at most a bounded part of the body, drops that backend connection, and its memory stays flat."""
    e = paged
    before = rss_kib(e.pid)
    for _ in range(3):
        result = curl(e, protocol, "app.example.test", f"/huge{status}", "/ok",
                      args=("-w", "|%{http_code} %{num_connects}|"))
        assert result.returncode == 0, result.stderr
        assert result.stdout.decode() == f"{PAGES[status]}|{status} 1|backend ok\n|200 0|"
    assert rss_kib(e.pid) - before < 20 * 1024, (before, rss_kib(e.pid))
    deadline = time.monotonic() + 10  # nginx logs a request whose answer edge cut short when it sees the close
    while True:
        requests = backends.requests()
        huge = {conn: int(number) for conn, number, uri, _ in requests if uri == f"/huge{status}"}
        if len(huge) == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(huge) == 3, requests
    # A connection whose body was cut short serves nothing after it.
    assert not [r for r in requests if r[0] in huge and int(r[1]) > huge[r[0]]], requests
    e.assert_alive()


# -- configuration ------------------------------------------------------------------------------


def config_with(tmp_path: Path, pages: dict[str, bytes], extra: str = "") -> Path:
    directory = tmp_path / "errors"
    directory.mkdir()
    for name, data in pages.items():
        (directory / name).write_bytes(data)
    path = tmp_path / "edge.toml"
    path.write_text(f'[edge]\nerrors_dir = "errors"\n\n[backends.web]\nservers = ["http://127.0.0.1:8080"]\n'
                    f'[[routes]]\nhosts = ["a.example.test"]\ntls = "edge"\nbackend = "web"\n{extra}')
    return path


def test_pages_are_read_into_the_config(tmp_path):
    path = config_with(tmp_path, {"502.html": b"<p>502</p>", "418.html": b"tea", ".gitkeep": b""},
                       "intercept_errors = true\n")
    config = load(path)
    assert dict(config.error_pages) == {502: b"<p>502</p>", 418: b"tea"}
    assert config.routes[0].intercept_errors


@pytest.mark.parametrize("pages, problem", [
    ({"600.html": b"x"}, "600.html: not a page for an error status"),
    ({"200.html": b"x"}, "200.html: not a page for an error status"),
    ({"oops.txt": b"x"}, "oops.txt: not a page for an error status"),
    ({"502.html": b"x" * (70 * 1024)}, "502.html is larger than 64 KiB"),
])
def test_bad_pages_are_config_errors(tmp_path, pages, problem):
    path = config_with(tmp_path, pages)
    with pytest.raises(ConfigError) as raised:
        load(path)
    assert str(raised.value).startswith(f"{path}: edge.errors_dir: ") and problem in str(raised.value)
    assert "\n" not in str(raised.value)


def test_config_errors_of_the_keys(tmp_path):
    path = config_with(tmp_path, {})
    (tmp_path / "errors" / "503.html").write_text("x")
    os.chmod(tmp_path / "errors" / "503.html", 0)
    if os.geteuid() != 0:  # root reads it anyway
        with pytest.raises(ConfigError, match=r"edge\.errors_dir: cannot read .*503\.html"):
            load(path)
    os.chmod(tmp_path / "errors" / "503.html", 0o644)
    path.write_text(path.read_text().replace('"errors"', '"nowhere"'))
    with pytest.raises(ConfigError, match=r"edge\.errors_dir: cannot read .*nowhere"):
        load(path)
    path.write_text(path.read_text().replace('errors_dir = "nowhere"\n', "") + "intercept_errors = true\n")
    with pytest.raises(ConfigError, match=r"routes\[0\]\.intercept_errors: needs \[edge\] errors_dir"):
        load(path)
    path.write_text('[edge]\nerrors_dir = "errors"\n[backends.tls]\nservers = ["127.0.0.1:8443"]\n'
                    '[[routes]]\nhosts = ["a.example.test"]\ntls = "passthrough"\nbackend = "tls"\n'
                    'intercept_errors = true\n')
    with pytest.raises(ConfigError, match=r"routes\[0\]\.intercept_errors: a passthrough route cannot see HTTP"):
        load(path)


def test_a_bad_page_stops_start_up_on_one_line(tmp_path):
    path = config_with(tmp_path, {"502.html": b"x" * (70 * 1024)})
    result = run_edge_command(path)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"edge: {path}: edge.errors_dir: {tmp_path}/errors/502.html is larger than 64 KiB"], \
        result.stderr


def test_a_reload_with_a_bad_page_keeps_the_last_good_pages(paged):
    e = paged
    (e.pages_dir / "600.html").write_text("nope")
    os.kill(e.pid, signal.SIGHUP)
    e.wait_log("reload refused")
    assert "600.html: not a page for an error status" in e.log()
    assert fetch(e, "--http2", "down.example.test")[2] == PAGES[502].encode()
    e.assert_alive()
