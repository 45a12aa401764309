# -*- test-case-name: tests.unit.acme.test_dns01, tests.unit.config.test_parsing -*-
"""Listen addresses and backend server addresses as the config file writes them.

``"0.0.0.0:443"``, ``"[::]:443"``, ``"localhost:8443"`` for listeners;
``"10.0.0.4:22"``, ``"http://10.0.0.6:9090"``, ``"https://vault:8200"`` for
servers.  Pure string parsing, no resolution.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_NAME = re.compile(r"^(?!-)[A-Za-z0-9.-]{1,253}$")


@dataclass(frozen=True)
class Address:
    """A TCP listen address; ``host`` is an IP literal or a host name."""

    host: str
    port: int

    @property
    def family6(self) -> bool:
        return ":" in self.host

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.family6 else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class SystemdAddress:
    """A socket handed over by systemd (``LISTEN_FDS``), by FileDescriptorName or index."""

    name: str

    def __str__(self) -> str:
        return f"systemd:{self.name}"


ListenAddress = Address | SystemdAddress  # where a door listens


def _split_host_port(value: str, default_port: int | None) -> tuple[str, int]:
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep:
            raise ValueError(f"{value!r}: missing ']' after an IPv6 address")
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise ValueError(f"{value!r}: {host!r} is not an IPv6 address") from None
        if rest.startswith(":"):
            port_text = rest[1:]
        elif rest == "" and default_port is not None:
            return host, default_port
        else:
            raise ValueError(f"{value!r}: expected [address]:port")
    else:
        if value.count(":") > 1:
            raise ValueError(f"{value!r}: write IPv6 addresses in brackets, e.g. \"[::1]:443\"")
        host, sep, port_text = value.partition(":")
        if not sep:
            if default_port is None:
                raise ValueError(f"{value!r}: expected host:port")
            port_text = str(default_port)
        if not _NAME.match(host):
            raise ValueError(f"{value!r}: {host!r} is not a host name or address")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{value!r}: {port_text!r} is not a port number (1-65535)")
    return host, int(port_text)


def parse_address(value: str) -> ListenAddress:
    """Parse a listen address ``host:port``, ``[v6]:port`` or ``systemd:NAME``."""
    value = value.strip()
    if value.startswith("systemd:"):
        name = value[len("systemd:"):]
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise ValueError(f"{value!r}: expected systemd:NAME (a FileDescriptorName= or an index)")
        return SystemdAddress(name)
    return Address(*_split_host_port(value, None))


def parse_addresses(value: str) -> list[ListenAddress]:
    """Parse a listen entry: one address, or HAProxy's ``"*:80"`` and ``":80"`` for every address of
    both families (``0.0.0.0:80`` and ``[::]:80``)."""
    text = value.strip()
    if text.startswith("*:") or (text.startswith(":") and text.count(":") == 1):
        port_text = text.partition(":")[2]
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{value!r}: {port_text!r} is not a port number (1-65535)")
        return [Address("0.0.0.0", int(port_text)), Address("::", int(port_text))]
    return [parse_address(text)]


def parse_server(value: str) -> tuple[str, int, str]:
    """Parse a backend server into ``(host, port, scheme)``; scheme is tcp/http/https."""
    value = value.strip()
    scheme = "tcp"
    for candidate, port in (("http", 80), ("https", 443)):
        if value.lower().startswith(candidate + "://"):
            scheme, rest = candidate, value[len(candidate) + 3 :].rstrip("/")
            if "/" in rest:
                raise ValueError(f"{value!r}: a server is scheme://host:port, without a path")
            return (*_split_host_port(rest, port), scheme)
    if "://" in value:
        raise ValueError(f"{value!r}: only http:// and https:// servers are supported")
    return (*_split_host_port(value, None), scheme)


def parse_host_port(text: str, default_port: int = 53) -> tuple[str, int]:
    """``"127.0.0.1:5353"``, ``"[::1]:53"``, ``"ns1.example"`` -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    if not host:
        raise ValueError(f"{text!r} is not host:port")
    if port and (not port.isdigit() or not 0 < int(port) < 65536):
        raise ValueError(f"{text!r}: {port!r} is not a port")
    return host, int(port) if port else default_port
