# -*- test-case-name: tests.unit.discovery.test_labels, tests.e2e.test_discovery -*-
"""Routes from container labels (sans-IO): the Docker API's container list in, config tables out.

A container declares its route the way Traefik and caddy-docker-proxy users expect:

    edge.host=app.example.com,www.example.com   (required)
    edge.tls=edge | reencrypt | passthrough      (default edge)
    edge.port=8080                               (the container port; default: its only published one)
    edge.path=/api,/static                       (terminated routes)
    edge.backend.proxy_protocol=v1 | v2
    edge.backend.verify=false                    (reencrypt to a self-signed service)
    edge.check=tcp | tls | "http GET /health"

The server is ``127.0.0.1:<host port>`` when the container port is published on the host (what a
rootless or loopback-only setup has), else the container's address on its first network.
:func:`merge` adds each container's ``[backends.podman-NAME]`` and ``[[routes]]`` (named
``podman/NAME``) to the file's tables, never over them: a host the file routes wins.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from edge.config import ConfigError, normalise_host, parse, valid_route_host

PREFIX = "edge."
KNOWN = frozenset(("edge.host", "edge.tls", "edge.port", "edge.path", "edge.backend.proxy_protocol",
                   "edge.backend.verify", "edge.check"))


class LabelError(Exception):
    """A container's labels cannot make a route; the message says which label and why."""


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    labels: Mapping[str, str]
    ports: tuple[tuple[str, int, int], ...]  # (host IP, container port, host port), TCP only
    addresses: tuple[str, ...]  # its IPs on its networks

    @property
    def labelled(self) -> bool:
        return any(key.startswith(PREFIX) for key in self.labels)


def parse_container(item: Mapping[str, Any]) -> Container:
    """One entry of ``GET /containers/json``."""
    names = item.get("Names") or [item.get("Id", "?")[:12]]
    ports = tuple((p.get("IP") or "", int(p["PrivatePort"]), int(p["PublicPort"]))
                  for p in item.get("Ports") or () if p.get("PublicPort") and p.get("Type", "tcp") == "tcp")
    networks = ((item.get("NetworkSettings") or {}).get("Networks") or {}).values()
    addresses = tuple(n["IPAddress"] for n in networks if n.get("IPAddress"))
    return Container(str(item.get("Id", "")), str(names[0]).lstrip("/"), dict(item.get("Labels") or {}),
                     ports, addresses)


def _list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def tables(container: Container) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(backend name, backend table, route table) for ``container``; LabelError if its labels are wrong."""
    labels = container.labels
    unknown = sorted(key for key in labels if key.startswith(PREFIX) and key not in KNOWN)
    if unknown:
        raise LabelError(f"unknown label {unknown[0]} (known: {', '.join(sorted(KNOWN))})")
    hosts = _list(labels.get("edge.host", ""))
    if not hosts:
        raise LabelError("edge.host: missing (the names to route, comma-separated)")
    for host in hosts:
        if not valid_route_host(normalise_host(host)) or host == "*":
            raise LabelError(f"edge.host: {host!r} is not a host name or \"*.suffix\" wildcard")
    tls = labels.get("edge.tls", "edge")
    if tls not in ("edge", "reencrypt", "passthrough"):
        raise LabelError(f"edge.tls: {tls!r} is not edge, reencrypt or passthrough")
    published = {private: (ip, public) for ip, private, public in container.ports}
    if "edge.port" in labels:
        try:
            port = int(labels["edge.port"])
        except ValueError:
            raise LabelError(f"edge.port: {labels['edge.port']!r} is not a port number") from None
        if not 0 < port < 65536:
            raise LabelError(f"edge.port: {port} is not a port number")
    elif len(published) == 1:
        port = next(iter(published))
    else:
        raise LabelError("edge.port: missing (the container port to route to; needed unless exactly one "
                         "port is published)")
    if port in published:
        ip, public = published[port]
        host_ip = "127.0.0.1" if ip in ("", "0.0.0.0", "::") else ip
        address = f"[{host_ip}]:{public}" if ":" in host_ip else f"{host_ip}:{public}"
    elif container.addresses:
        address = f"{container.addresses[0]}:{port}"
    else:
        raise LabelError(f"edge.port: {port} is not published and the container has no network address")
    scheme = {"edge": "http://", "reencrypt": "https://", "passthrough": ""}[tls]
    backend: dict[str, Any] = {"servers": [scheme + address]}
    if "edge.backend.proxy_protocol" in labels:
        backend["proxy_protocol"] = labels["edge.backend.proxy_protocol"]
    if "edge.backend.verify" in labels:
        if labels["edge.backend.verify"] not in ("true", "false"):
            raise LabelError("edge.backend.verify: must be true or false")
        backend["verify"] = labels["edge.backend.verify"] == "true"
    if "edge.check" in labels:
        backend["check"] = labels["edge.check"]
    name = "podman-" + "".join(c if c.isalnum() or c in "-_." else "-" for c in container.name)
    route: dict[str, Any] = {"name": f"podman/{container.name}", "hosts": hosts, "tls": tls, "backend": name}
    if "edge.path" in labels:
        route["paths"] = _list(labels["edge.path"])
    return name, backend, route


@dataclass(frozen=True)
class Problem:
    container: str
    text: str


def _routed(routes: list[Mapping[str, Any]]) -> set[str]:
    hosts: set[str] = set()
    for route in routes:
        if "https" in route.get("doors", ["https"]):
            hosts.update(normalise_host(h) for h in route.get("hosts", ()) if isinstance(h, str))
    return hosts


def merge(data: Mapping[str, Any], containers: list[Container], path: str,
          can_terminate: Callable[[str], bool]) -> tuple[dict[str, Any], list[str], list[Problem]]:
    """The file's tables plus a route for each labelled container that fits.

    Returns (merged tables, the containers routed, the problems: bad labels, hosts the file or an
    earlier container already routes, routes the config would refuse).  ``can_terminate(host)`` says
    whether a certificate source covers a terminated host.
    """
    merged = copy.deepcopy(dict(data))
    routed: list[str] = []
    problems: list[Problem] = []
    file_hosts = _routed(list(data.get("routes", [])))
    claimed: dict[str, str] = {}  # host -> the container whose route has it
    for container in sorted(containers, key=lambda c: c.name):
        if not container.labelled:
            continue
        try:
            name, backend, route = tables(container)
        except LabelError as e:
            problems.append(Problem(container.name, f"labels ignored: {e}"))
            continue
        kept = []
        for host in route["hosts"]:
            key = normalise_host(host)
            if key in file_hosts:
                problems.append(Problem(container.name, f"edge.host: {host} is routed by the config file, "
                                                        "which wins; ignored for this container"))
            elif key in claimed:
                problems.append(Problem(container.name, f"edge.host: {host} is routed by container "
                                                        f"{claimed[key]}; ignored for this container"))
            else:
                kept.append(host)
        if not kept:
            continue
        route["hosts"] = kept
        if route["tls"] != "passthrough":
            uncovered = [h for h in route["hosts"] if not can_terminate(normalise_host(h))]
            if uncovered:
                problems.append(Problem(container.name, f"edge.host: no certificate for {uncovered[0]} (add one to "
                                                        "certs_dir, or set [tls] issuer or [acme])"))
                continue
        candidate = copy.deepcopy(merged)
        candidate.setdefault("backends", {})[name] = backend
        candidate.setdefault("routes", []).append(route)
        try:
            parse(candidate, path)
        except ConfigError as e:
            problems.append(Problem(container.name, f"labels ignored: {e.key}: {e.problem}"))
            continue
        merged = candidate
        routed.append(container.name)
        claimed.update((normalise_host(h), container.name) for h in kept)
    return merged, routed, problems
