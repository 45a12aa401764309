"""TLS passthrough by SNI: the client sees the backend's own certificate."""

from __future__ import annotations

import socket
import ssl
import subprocess

import pytest

from tests.unit.sniff.test_tls import openssl_hello, refragment


def passthrough_body(routes: dict[str, int]) -> str:
    body = ""
    for i, (host, port) in enumerate(routes.items()):
        body += f"""
[backends.b{i}]
servers = ["127.0.0.1:{port}"]
[[routes]]
hosts = ["{host}"]
tls = "passthrough"
backend = "b{i}"
"""
    return body


def s_client(port: int, servername: str | None, ca) -> subprocess.CompletedProcess:
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(ca.ca_pem), "-verify_return_error"]
    if servername:
        argv += ["-servername", servername, "-verify_hostname", servername]
    else:
        argv += ["-noservername"]
    return subprocess.run(argv, input=b"Q\n", capture_output=True, timeout=30)


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True, text=True, timeout=40)


@pytest.fixture
def two_origins(tls_origin):
    return tls_origin("app.example.test"), tls_origin("other.example.test", "*.wild.example.test")


@pytest.fixture
def pass_edge(edge, two_origins):
    app, other = two_origins
    return edge(passthrough_body({"app.example.test": app.port, "*.wild.example.test": other.port}))


def test_openssl_client_sees_the_backend_certificate(pass_edge, ca):
    result = s_client(pass_edge.https_port, "app.example.test", ca)
    out = result.stdout.decode()
    assert "Verify return code: 0 (ok)" in out, out + result.stderr.decode()
    assert "app.example.test" in out


def test_wildcard_route_and_curl_end_to_end(pass_edge, ca):
    port = pass_edge.https_port
    result = curl("--resolve", f"x.wild.example.test:{port}:127.0.0.1", "--cacert", str(ca.ca_pem),
                  f"https://x.wild.example.test:{port}/")
    assert result.returncode == 0, result.stderr
    assert "s_server" in result.stdout  # openssl s_server -www answered, over TLS it terminated


def test_large_hello_in_many_records_and_segments(pass_edge, ca):
    """A hello split over TLS records and TCP segments still routes: the backend finishes the handshake."""
    hello_client = ssl.create_default_context(cafile=str(ca.ca_pem))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = hello_client.wrap_bio(incoming, outgoing, server_hostname="app.example.test")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    fragmented = refragment(hello, 300)  # same handshake bytes, more records
    # The records changed, so the transcript changed: only check that the backend answers with a ServerHello.
    with socket.create_connection(("127.0.0.1", pass_edge.https_port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(fragmented), 97):
            sock.sendall(fragmented[i : i + 97])
        answer = sock.recv(5)
    assert answer[:1] == b"\x16", answer  # a handshake record: the origin's ServerHello


@pytest.mark.parametrize("servername", ["unknown.example.test", None])
def test_unrouted_or_missing_sni_is_closed(pass_edge, ca, servername):
    result = s_client(pass_edge.https_port, servername, ca)
    assert "no peer certificate available" in result.stdout.decode()
    pass_edge.wait_log("refused: no SNI" if servername is None else "refused: no route for SNI")
    pass_edge.assert_alive()
    assert s_client(pass_edge.https_port, "app.example.test", ca).returncode == 0


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00",  # not a ClientHello
        b"\x16\x03\x01\x50\x00" + b"x" * 100,  # oversized record
        b"\x16\x03\x01\x3f\xff" + b"\x01" + b"\x00\x3f\xfb" + b"y" * 16500,  # fills the 16 KiB prefix
        b"\x00\x01\x02 binary",  # not TLS, SSH or HTTP
    ],
)
def test_bad_first_bytes_are_closed_and_others_keep_working(pass_edge, ca, garbage):
    with socket.create_connection(("127.0.0.1", pass_edge.https_port), timeout=10) as sock:
        try:
            sock.sendall(garbage)
            assert sock.recv(100) == b""  # closed by the edge, nothing sent back
        except ConnectionResetError:
            pass
    assert s_client(pass_edge.https_port, "app.example.test", ca).returncode == 0
    pass_edge.assert_alive()


def test_partial_hello_is_cut_at_the_inspect_timeout(edge, tls_origin, ca):
    origin = tls_origin("app.example.test")
    e = edge(passthrough_body({"app.example.test": origin.port}), timeouts='inspect = "1s"\nconnect = "2s"\nidle = "60s"')
    hello = openssl_hello("app.example.test")
    with socket.create_connection(("127.0.0.1", e.https_port), timeout=10) as sock:
        sock.sendall(hello[:100])
        assert sock.recv(10) == b""
    e.wait_log("timeout: inspect")


def test_silent_client_without_ssh_backend_is_closed(edge, tls_origin):
    origin = tls_origin("app.example.test")
    e = edge(passthrough_body({"app.example.test": origin.port}), ssh=False,
             timeouts='inspect = "1s"\nconnect = "2s"\nidle = "60s"')
    with socket.create_connection(("127.0.0.1", e.https_port), timeout=10) as sock:
        assert sock.recv(10) == b""
    e.wait_log("timeout: silent client")
