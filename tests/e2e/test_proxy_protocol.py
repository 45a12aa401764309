"""PROXY protocol: sent to real HAProxy/nginx backends, accepted from trusted balancers."""

from __future__ import annotations

import socket
import ssl
import subprocess

import pytest

from tests.unit.sniff.test_tls import openssl_hello
from edge.sniff.proxy import build_v2
from tests.support.config import passthrough
from tests.support.procs import free_port, wait_listening
from tests.support.servers import HAProxy, Nginx


@pytest.fixture
def reporting_haproxy(start, ca, tmp_path):
    """HAProxy terminating TLS behind accept-proxy, answering with what the header said."""
    _, _, pem = ca.issue("app.example.test")
    port = free_port()
    server = start(HAProxy, tmp_path, f"""
        frontend fe
          mode http
          bind 127.0.0.1:{port} accept-proxy ssl crt {pem}
          http-request return status 200 content-type text/plain lf-string "src=%[src] sport=%[src_port] dst=%[dst] dport=%[dst_port] authority=%[fc_pp_authority]\\n"
        """)
    wait_listening(port, proc=server.proc)
    server.port = port
    return server


@pytest.fixture
def reporting_nginx(start, ca, tmp_path):
    cert, key, _ = ca.issue("app.example.test")
    port = free_port()
    server = start(Nginx, tmp_path, f"""
        server {{
          listen 127.0.0.1:{port} ssl proxy_protocol;
          ssl_certificate {cert};
          ssl_certificate_key {key};
          return 200 "src=$proxy_protocol_addr sport=$proxy_protocol_port dst=$proxy_protocol_server_addr dport=$proxy_protocol_server_port\\n";
        }}
        """)
    wait_listening(port, proc=server.proc)
    server.port = port
    return server


def routed_body(port: int, version: str) -> str:
    return passthrough({"servers": [f"127.0.0.1:{port}"], "proxy_protocol": version}, host="app.example.test",
                       backend="app")


def curl_report(edge_port: int, ca, *extra: str) -> tuple[str, str]:
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "20", "--resolve", f"app.example.test:{edge_port}:127.0.0.1",
         "--cacert", str(ca.ca_pem), *extra, f"https://app.example.test:{edge_port}/"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout, result.stderr


def fields(report: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in report.split())


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_haproxy_backend_reads_our_header(edge, reporting_haproxy, ca, version):
    e = edge(routed_body(reporting_haproxy.port, version))
    report = fields(curl_report(e.https_port, ca, "--interface", "127.0.0.7")[0])
    assert report["src"] == "127.0.0.7"
    assert report["dst"] == "127.0.0.1" and report["dport"] == str(e.https_port)
    assert int(report["sport"]) > 0
    assert report.get("authority", "") == ("app.example.test" if version == "v2" else "")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_nginx_backend_reads_our_header(edge, reporting_nginx, ca, version):
    e = edge(routed_body(reporting_nginx.port, version))
    report = fields(curl_report(e.https_port, ca, "--interface", "127.0.0.8")[0])
    assert report == {"src": "127.0.0.8", "sport": report["sport"], "dst": "127.0.0.1", "dport": str(e.https_port)}


def test_real_client_address_from_a_trusted_balancer_is_passed_on(edge, start, reporting_haproxy, ca, tmp_path):
    """curl (127.0.0.9) -> HAProxy balancer (send-proxy-v2 from 127.0.0.2) -> edge -> backend."""
    e = edge(routed_body(reporting_haproxy.port, "v2"), accept_proxy=["127.0.0.2/32"])
    port = free_port()
    balancer = start(HAProxy, tmp_path, f"""
        frontend lb
          mode tcp
          bind 127.0.0.1:{port}
          default_backend edge
        backend edge
          mode tcp
          source 127.0.0.2
          server edge 127.0.0.1:{e.https_port} send-proxy-v2
        """, name="balancer")
    wait_listening(port, proc=balancer.proc)
    report = fields(curl_report(port, ca, "--interface", "127.0.0.9")[0])
    assert report["src"] == "127.0.0.9"
    assert report["dport"] == str(port)  # the address the client reached: the balancer's
    e.wait_log("127.0.0.9:")  # the access log names the real client too


def test_curl_haproxy_protocol_from_trusted_source_on_port_80(edge):
    e = edge("", accept_proxy=["127.0.0.3/32"])
    trusted = subprocess.run(["curl", "-si", "--max-time", "10", "--haproxy-protocol", "--interface", "127.0.0.3",
                              f"http://127.0.0.1:{e.http_port}/path"], capture_output=True, text=True)
    assert trusted.stdout.startswith("HTTP/1.1 308"), trusted.stdout + trusted.stderr
    direct = subprocess.run(["curl", "-si", "--max-time", "10", "--interface", "127.0.0.3",
                             f"http://127.0.0.1:{e.http_port}/path"], capture_output=True, text=True)
    assert direct.stdout.startswith("HTTP/1.1 308"), "a trusted source may also come without a header"


def test_header_from_an_untrusted_source_is_not_believed(edge):
    e = edge("", accept_proxy=["127.0.0.3/32"])
    untrusted = subprocess.run(["curl", "-si", "--max-time", "10", "--haproxy-protocol", "--interface", "127.0.0.4",
                                f"http://127.0.0.1:{e.http_port}/path"], capture_output=True, text=True)
    assert untrusted.stdout.startswith("HTTP/1.1 400"), untrusted.stdout


def test_spoofed_v2_header_on_443_drives_the_header_sent_onward(edge, reporting_haproxy, ca):
    """A balancer's v2 header naming 203.0.113.5 (and IPv6) reaches the backend as the client."""
    e = edge(routed_body(reporting_haproxy.port, "v1"), accept_proxy=["127.0.0.0/8"])
    context = ssl.create_default_context(cafile=str(ca.ca_pem))
    for client in (("203.0.113.5", 40000), ("2001:db8::5", 40001)):
        with socket.create_connection(("127.0.0.1", e.https_port), timeout=10) as raw:
            raw.sendall(build_v2(client, ("127.0.0.1", 443)))
            with context.wrap_socket(raw, server_hostname="app.example.test") as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: app.example.test\r\nConnection: close\r\n\r\n")
                answer = b""
                while chunk := tls.recv(4096):
                    answer += chunk
        report = fields(answer.decode().split("\r\n\r\n", 1)[1])
        assert (report["src"], report["sport"]) == (client[0], str(client[1]))


def test_malformed_header_from_trusted_source_is_closed(edge):
    e = edge("", accept_proxy=["127.0.0.0/8"])
    with socket.create_connection(("127.0.0.1", e.https_port), timeout=10) as sock:
        sock.sendall(b"PROXY TCP4 1.2.3.4 nonsense\r\n" + openssl_hello())
        assert sock.recv(100) == b""
    e.wait_log("PROXY v1 header")
    e.assert_alive()


def test_ipv6_client_gets_a_tcp6_header(edge, reporting_haproxy, ca):
    e = edge(routed_body(reporting_haproxy.port, "v2"), ipv6=True)
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "20", "--resolve", f"app.example.test:{e.https_port6}:::1",
         "--cacert", str(ca.ca_pem), f"https://app.example.test:{e.https_port6}/"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    report = fields(result.stdout)
    assert report["src"] == "::1" and report["dst"] == "::1" and report["dport"] == str(e.https_port6)
