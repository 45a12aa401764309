"""The label rules and the merge with the file's tables, without podman."""

from __future__ import annotations

import pytest

from edge.config import parse
from edge.discovery.labels import Container, LabelError, merge, parse_container, tables

FILE = {"listen": {"https": ["127.0.0.1:18443"], "http": [], "ssh": []}, "tls": {"issuer": "local"},
        "backends": {"web": {"servers": ["http://127.0.0.1:1"]}},
        "routes": [{"hosts": ["file.test"], "tls": "edge", "backend": "web"}]}


def box(name: str = "app", labels: dict | None = None, ports=((("127.0.0.1", 8080, 18080),)), addresses=()) -> Container:
    return Container("id-" + name, name, labels if labels is not None else {"edge.host": "app.test"},
                     tuple(ports), tuple(addresses))


def test_parse_container_reads_the_docker_api_shape():
    item = {"Id": "abc", "Names": ["/web"], "Labels": {"edge.host": "a.test"},
            "Ports": [{"IP": "", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
                      {"IP": "", "PrivatePort": 53, "PublicPort": 5353, "Type": "udp"}],
            "NetworkSettings": {"Networks": {"podman": {"IPAddress": "192.0.2.5"}}}}
    assert parse_container(item) == Container("abc", "web", {"edge.host": "a.test"}, (("", 80, 8080),),
                                              ("192.0.2.5",))


@pytest.mark.parametrize("labels, server", [
    ({"edge.host": "a.test"}, "http://127.0.0.1:18080"),
    ({"edge.host": "a.test", "edge.tls": "reencrypt", "edge.port": "8080"}, "https://127.0.0.1:18080"),
    ({"edge.host": "a.test", "edge.tls": "passthrough"}, "127.0.0.1:18080"),
])
def test_published_ports_become_loopback_servers(labels, server):
    name, backend, route = tables(box(labels=labels))
    assert name == "podman-app" and backend["servers"] == [server]
    assert route["name"] == "podman/app" and route["hosts"] == ["a.test"]


def test_an_unpublished_port_uses_the_container_address():
    _, backend, _ = tables(box(labels={"edge.host": "a.test", "edge.port": "80"}, ports=(), addresses=("192.0.2.9",)))
    assert backend["servers"] == ["http://192.0.2.9:80"]


@pytest.mark.parametrize("labels, problem", [
    ({}, "edge.host: missing"),
    ({"edge.host": "bad host"}, "edge.host: 'bad host'"),
    ({"edge.host": "*"}, "edge.host: '*'"),
    ({"edge.host": "a.test", "edge.tls": "maybe"}, "edge.tls: 'maybe'"),
    ({"edge.host": "a.test", "edge.port": "http"}, "edge.port: 'http'"),
    ({"edge.host": "a.test", "edge.port": "70000"}, "edge.port: 70000"),
    ({"edge.host": "a.test", "edge.hots": "x"}, "unknown label edge.hots"),
    ({"edge.host": "a.test", "edge.backend.verify": "no"}, "edge.backend.verify"),
])
def test_bad_labels_say_which_and_why(labels, problem):
    with pytest.raises(LabelError, match=problem.replace("*", r"\*")):
        tables(box(labels=labels))


def test_two_published_ports_need_edge_port():
    with pytest.raises(LabelError, match="edge.port: missing"):
        tables(box(ports=(("", 80, 8080), ("", 443, 8443))))


def test_merge_keeps_the_file_and_the_first_container_and_validates():
    containers = [box("a", {"edge.host": "file.test,a.test"}), box("b", {"edge.host": "a.test, b.test"}),
                  box("c", {"edge.host": "c.test", "edge.check": "ping"}), box("plain", {"other": "x"})]
    data, routed, problems = merge(FILE, containers, "edge.toml", lambda host: True)
    config = parse(data, "edge.toml")
    assert [r.name for r in config.routes] == ["file.test", "podman/a", "podman/b"]
    assert config.routes[1].hosts == ("a.test",) and config.routes[2].hosts == ("b.test",)
    assert routed == ["a", "b"]
    texts = [(p.container, p.text) for p in problems]
    assert ("a", "edge.host: file.test is routed by the config file, which wins; ignored for this container") in texts
    assert ("b", "edge.host: a.test is routed by container a; ignored for this container") in texts
    assert any(c == "c" and "labels ignored: backends.podman-c.check" in t for c, t in texts), texts
    assert FILE["routes"] == [{"hosts": ["file.test"], "tls": "edge", "backend": "web"}]  # not modified


def test_merge_skips_terminated_hosts_without_a_certificate_source():
    data, routed, problems = merge(FILE, [box("a")], "edge.toml", lambda host: False)
    assert routed == [] and "no certificate for app.test" in problems[0].text
