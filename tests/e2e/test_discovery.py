"""Routes from podman container labels, against real podman: its API service on a test socket and
containers of the tests' own busybox image, published on 127.0.0.1 (loopback only)."""

from __future__ import annotations

import socket
import ssl
import subprocess
import urllib.request

import pytest

from tests.support.config import config, route
from tests.support.podman import OPENSSL_MOUNTS, Containers, PodmanAPI, build_image
from tests.support.procs import free_port, wait_listening
from tests.support.servers import Nginx
from tests.e2e.test_terminate import local_ca


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return build_image(tmp_path_factory.mktemp("image"))


@pytest.fixture
def containers(image):
    running = Containers(image)
    yield running
    running.remove_all()


@pytest.fixture
def api(start, tmp_path):
    return start(PodmanAPI, tmp_path, tmp_path / "podman.sock")


def discovery_edge(edge, api, backends: dict | None = None, routes: list | None = None, **kwargs):
    """A local CA, label discovery from ``api`` every 2 s, and the file's own ``backends`` and ``routes``."""
    return edge(config(discovery={"podman": f"unix://{api.socket}", "interval": "2s"}, backends=backends,
                       routes=routes or []), **kwargs)


def get(e, host: str, path: str = "/") -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", local_ca(e), "--resolve",
                           f"{host}:{e.https_port}:127.0.0.1", f"https://{host}:{e.https_port}{path}"],
                          capture_output=True, text=True, timeout=30)


def httpd(containers: Containers, labels: dict[str, str]) -> tuple[str, int]:
    port = free_port()
    name = containers.run(labels, [f"127.0.0.1:{port}:8080"], ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"])
    wait_listening(port)
    return name, port


def test_a_labelled_container_is_routed_while_it_runs(edge, api, containers):
    e = discovery_edge(edge, api, admin=True, log_format="json")
    name, _ = httpd(containers, {"edge.host": "app.disc.test, www.disc.test", "edge.port": "8080"})
    e.wait_log(f"route podman/{name} added")
    for host in ("app.disc.test", "www.disc.test"):
        assert get(e, host).stdout == "hello from a container\n"
    with urllib.request.urlopen(f"http://127.0.0.1:{e.admin_port}/", timeout=10) as page:
        assert f"podman/{name}" in page.read().decode()
    with urllib.request.urlopen(f"http://127.0.0.1:{e.admin_port}/metrics", timeout=10) as page:
        assert f'route="podman/{name}"' in page.read().decode()
    containers.stop(name)
    e.wait_log(f"route podman/{name} removed")
    refused = get(e, "app.disc.test")
    assert refused.returncode != 0 and "unrecognized name" in refused.stderr.lower(), refused.stderr
    requests = [ev for ev in e.events() if ev.get("kind") == "request" and ev.get("route") == f"podman/{name}"]
    assert len(requests) == 2 and all(ev["status"] == 200 for ev in requests)
    e.assert_alive()


def test_a_passthrough_label_reaches_a_container_serving_tls(edge, api, containers, ca, tmp_path):
    e = discovery_edge(edge, api)
    cert, key, _ = ca.issue("pass.disc.test")
    tls = tmp_path / "tls"
    tls.mkdir()
    (tls / "cert.pem").write_bytes(cert.read_bytes())
    (tls / "key.pem").write_bytes(key.read_bytes())
    port = free_port()
    name = containers.run({"edge.host": "pass.disc.test", "edge.tls": "passthrough"}, [f"127.0.0.1:{port}:8443"],
                          ["/usr/bin/openssl", "s_server", "-accept", "8443", "-cert", "/tls/cert.pem",
                           "-key", "/tls/key.pem", "-www"], extra=[*OPENSSL_MOUNTS, "-v", f"{tls}:/tls:ro"])
    wait_listening(port)
    e.wait_log(f"route podman/{name} added")
    context = ssl.create_default_context(cafile=str(ca.ca_pem))
    with socket.create_connection(("127.0.0.1", e.https_port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="pass.disc.test") as conn:  # the container's own cert
            assert {v for k, v in conn.getpeercert()["subjectAltName"]} == {"pass.disc.test"}
            conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert conn.recv(4096).startswith(b"HTTP/1.0 200 ok")  # s_server -www's status page


def test_the_file_wins_and_bad_labels_are_logged_once_and_ignored(edge, api, containers, start, tmp_path):
    web = free_port()
    nginx = start(Nginx, tmp_path, f'server {{ listen 127.0.0.1:{web}; return 200 "from the file\\n"; }}')
    wait_listening(web, proc=nginx.proc)
    e = discovery_edge(edge, api, {"file": f"http://127.0.0.1:{web}"}, [route("file.disc.test", "file")])
    clash, _ = httpd(containers, {"edge.host": "file.disc.test,own.disc.test", "edge.port": "8080"})
    bad, _ = httpd(containers, {"edge.host": "bad.disc.test", "edge.tls": "sometimes"})
    unknown, _ = httpd(containers, {"edge.host": "x.disc.test", "edge.prot": "8080"})
    good, _ = httpd(containers, {"edge.host": "good.disc.test"})  # one published port: edge.port not needed
    e.wait_log(f"route podman/{good} added")
    log = e.wait_log(f"route podman/{clash} added")
    assert get(e, "file.disc.test").stdout == "from the file\n"
    assert get(e, "own.disc.test").stdout == "hello from a container\n"
    assert get(e, "good.disc.test").stdout == "hello from a container\n"
    assert f"container {clash}: edge.host: file.disc.test is routed by the config file" in log
    assert f"container {bad}: labels ignored: edge.tls: 'sometimes' is not edge, reencrypt or passthrough" in log
    assert f"container {unknown}: labels ignored: unknown label edge.prot" in log
    # the periodic list (every 2 s here) does not log the same problems again
    before = e.log().count(f"container {bad}:")
    third, _ = httpd(containers, {"edge.host": "third.disc.test"})
    e.wait_log(f"route podman/{third} added")
    assert e.log().count(f"container {bad}:") == before == 1
    e.assert_alive()


def test_a_lost_api_socket_keeps_the_routes_and_is_retried(edge, api, containers, start, tmp_path):
    e = discovery_edge(edge, api)
    first, _ = httpd(containers, {"edge.host": "first.disc.test"})
    e.wait_log(f"route podman/{first} added")
    api.stop()  # podman's API goes away (the socket file with it)
    e.wait_log("retrying in")
    assert get(e, "first.disc.test").stdout == "hello from a container\n"  # last known routes kept
    second, _ = httpd(containers, {"edge.host": "second.disc.test"})
    start(PodmanAPI, tmp_path, api.socket, "podman-api-again")
    e.wait_log("connected again", timeout=90)
    e.wait_log(f"route podman/{second} added")
    assert get(e, "second.disc.test").stdout == "hello from a container\n"
    assert get(e, "first.disc.test").stdout == "hello from a container\n"
    e.assert_alive()
