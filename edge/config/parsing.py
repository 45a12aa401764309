# -*- test-case-name: tests.unit.config.test_parsing, tests.unit.config.test_access, tests.unit.config.test_routes -*-
"""The edge's configuration: a TOML file turned into an immutable, validated snapshot.

Loading either returns a complete :class:`~edge.config.model.Config` or raises :class:`ConfigError`,
whose message is one line naming the file, the key and the problem, so a bad file stops start-up (or a
reload) with an answer a person can act on.  One method per table.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Mapping

from edge.config.access import AddressRule, Rate, Users, UsersFileError, parse_networks, parse_users
from edge.config.headers import HeaderRules, hsts_value
from edge.config.addresses import ListenAddress, parse_address, parse_addresses, parse_host_port, parse_server
from edge.config.model import (
    ACCESS_KEYS, ACME_CHALLENGES, ACME_DIRECTORIES, AcmeConfig, AcmeDnsConfig, BALANCES,
    BUILTIN_DOORS, BackendConfig, BasicAuth, Config, ConfigError, DEFAULT_LISTEN,
    DNS_PROVIDERS, DOOR_NAME, Discovery, Door, ForwardAuth, HTTP_MODES,
    Listen, MAX_ERROR_PAGE, PROXY_PROTOCOLS, ROUTE_NAME, Route, Server,
    STATE_DIR, StorageConfig, TLS_MODES, TRANSFORM_KEYS, TSIG_ALGORITHMS, Timeouts, BackendProtocol, HealthCheck,
    Scheme,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w|y)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000, None: 1}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_COMPOUND = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w|y))+")
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_ERROR_PAGE = re.compile(r"([45]\d\d)\.html")
_FRAMING_HEADERS = frozenset(("content-length", "transfer-encoding", "connection", "upgrade", "te", "keep-alive",
                              "host", "trailer"))
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}")
_RESERVED_HEADERS = frozenset(("host", "content-length", "transfer-encoding", "connection", "upgrade", "te",
                               "authorization", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
                               "forwarded", "keep-alive", "expect", "cookie"))
_HTTP_URL = re.compile(r"http://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(?P<port>\d{1,5}))?(?P<target>/[^\s#]*)?")
_DNS_COMMON = ("provider", "resolvers", "propagation_timeout", "propagation_interval")
_DNS_KEYS = {
    "rfc2136": ("server", "zone", "tsig_key_name", "tsig_algorithm", "tsig_secret_file"),
    "acme-dns": ("api", "credentials_file"),
    "exec": ("program",),
}


def load(path: str | Path) -> Config:
    """Read and validate ``path``; raise :class:`ConfigError` on any mistake."""
    path = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(path, "", "file not found") from None
    except OSError as e:
        raise ConfigError(path, "", f"cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "", f"invalid TOML: {e}") from None
    return parse(data, path)


def parse(data: Mapping[str, Any], path: str = "<config>") -> Config:
    """Validate an already decoded TOML document."""
    return _Parser(path).config(data)


def parse_duration(value: Any) -> float:
    """``"5s"``, ``"100ms"``, ``"2m"``, ``"1h"``, ``"1d"`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like \"5s\"")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    elif isinstance(value, str) and _COMPOUND.fullmatch(value.strip()):  # "1h30m", "2m30s", "1d12h"
        seconds = sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(value))
    else:
        raise ValueError(f"{value!r} is not a duration (use e.g. \"500ms\", \"5s\", \"2m\", \"1h30m\")")
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


def parse_size(value: Any) -> int:
    """``"64K"``, ``"10M"``, ``"1G"`` (powers of 1024) or a number of bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size like \"10M\"")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        size = int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "")[:1].lower()]
    else:
        raise ValueError(f"{value!r} is not a size (use e.g. \"512K\", \"10M\", \"1G\")")
    if size <= 0:
        raise ValueError("a size must be positive")
    return size


def normalise_host(host: str) -> str:
    """Lower-case a host name and drop a trailing dot, as SNI and Host compare."""
    return host.strip().lower().rstrip(".")


def valid_route_host(host: str) -> bool:
    """Exact DNS names, ``*.suffix`` wildcards and the catch-all ``*``."""
    if host == "*":
        return True
    name = host[2:] if host.startswith("*.") else host
    labels = name.split(".")
    return bool(name) and all(_HOST_LABEL.match(label) for label in labels)


class _Parser:
    """Walks the document, keeping the file name for every error."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.path, key, problem)

    def table(self, data: Any, key: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
        if not isinstance(data, dict):
            raise self.fail(key, "must be a table")
        for k in data:
            if k not in allowed:
                where = f"{key}.{k}" if key else k
                raise self.fail(where, f"unknown key (expected one of: {', '.join(allowed)})")
        return data

    def string_list(self, value: Any, key: str) -> list[str]:
        if isinstance(value, str):
            raise self.fail(key, "must be a list of strings, e.g. [\"" + value + "\"]")
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, "must be a list of strings")
        return value

    def choice(self, value: Any, key: str, choices: tuple[str, ...]) -> Any:
        """``value`` if it is one of ``choices`` (the member itself when they are an enum's)."""
        for choice in choices:
            if value == choice and isinstance(value, str):
                return choice
        raise self.fail(key, f"{value!r} is not one of {', '.join(repr(str(c)) for c in choices)}")

    def positive_int(self, value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.fail(key, "must be a positive integer")
        return value

    def size(self, value: Any, key: str) -> int:
        try:
            return parse_size(value)
        except ValueError as e:
            raise self.fail(key, str(e)) from None

    def path_in(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(key, "must be a path")
        base = self.path.rsplit("/", 1)[0] if "/" in self.path else "."
        return value if value.startswith("/") else f"{base}/{value}"

    def address_rule(self, data: Mapping[str, Any], key: str) -> AddressRule:
        """``allow`` and ``deny`` of a table: lists of addresses and CIDR networks."""
        lists = {}
        for name in ("allow", "deny"):
            try:
                lists[name] = parse_networks(self.string_list(data.get(name, []), f"{key}.{name}"))
            except ValueError as e:
                raise self.fail(f"{key}.{name}", str(e)) from None
        if "allow" in data and not lists["allow"]:
            raise self.fail(f"{key}.allow", "is empty, which would refuse everyone (leave it out to allow all)")
        return AddressRule(**lists)

    def rate(self, value: Any, key: str, count: str) -> Rate:
        """``{ <count> = N, per = "1s", burst = M }``: N events per period, M at once (default N)."""
        example = f"{{ {count} = 10, per = \"1m\" }}"
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table like {example}")
        value = self.table(value, key, (count, "per", "burst"))
        for required in (count, "per"):
            if required not in value:
                raise self.fail(f"{key}.{required}", f"missing (e.g. {example})")
        number = self.positive_int(value[count], f"{key}.{count}")
        burst = self.positive_int(value.get("burst", number), f"{key}.burst")
        return Rate(number, self.duration(value["per"], f"{key}.per"), burst)

    def duration(self, value: Any, key: str) -> float:
        try:
            return parse_duration(value)
        except ValueError as e:
            raise self.fail(key, str(e)) from None

    def config(self, data: Mapping[str, Any]) -> Config:
        self.table(data, "", ("edge", "listen", "timeouts", "ssh", "tls", "admin", "acme", "backends", "routes",
                               "doors", "discovery", "storage"))
        acme = self.acme(data["acme"]) if "acme" in data else None
        admin_table = self.table(data.get("admin", {}), "admin", ("listen", "debug", "allow", "deny", "basic_auth"))
        admin_addresses = self.address_rule(admin_table, "admin")
        admin_auth = self.basic_auth(admin_table["basic_auth"], "admin.basic_auth", "edge admin") \
            if "basic_auth" in admin_table else None
        admin_debug = admin_table.get("debug", False)
        if not isinstance(admin_debug, bool):
            raise self.fail("admin.debug", "must be true or false")
        admin = None
        if "listen" in admin_table:
            try:
                admin = parse_address(admin_table["listen"]) if isinstance(admin_table["listen"], str) else None
            except ValueError as e:
                raise self.fail("admin.listen", str(e)) from None
            if admin is None:
                raise self.fail("admin.listen", "must be an address like \"127.0.0.1:9090\"")
        edge = self.table(data.get("edge", {}), "edge", ("state_dir", "certs_dir", "watch", "workers", "errors_dir"))
        error_pages = self.error_pages(edge["errors_dir"], "edge.errors_dir") if "errors_dir" in edge else {}
        workers = self.positive_int(edge.get("workers", 1), "edge.workers")
        watch = edge.get("watch", False)
        if not isinstance(watch, bool):
            raise self.fail("edge.watch", "must be true or false")
        state_dir = self.path_in(edge.get("state_dir", STATE_DIR), "edge.state_dir")
        certs_dir = self.path_in(edge["certs_dir"], "edge.certs_dir") if "certs_dir" in edge else None
        tls = self.table(data.get("tls", {}), "tls", ("issuer",))
        issuer = self.choice(tls["issuer"], "tls.issuer", ("local",)) if "issuer" in tls else None
        listen = self.listen(data.get("listen", {}))
        timeouts = self.timeouts(data.get("timeouts", {}))
        backends = self.backends(data.get("backends", {}))
        ssh = self.table(data.get("ssh", {}), "ssh", ("backend", "allow", "deny", "conn_limit"))
        ssh_addresses = self.address_rule(ssh, "ssh")
        ssh_conn_limit = self.rate(ssh["conn_limit"], "ssh.conn_limit", "new") if "conn_limit" in ssh else None
        ssh_backend = ssh.get("backend")
        if ssh_backend is not None:
            self.backend_ref(ssh_backend, "ssh.backend", backends, "tcp")
        elif listen.ssh and "listen" in data and "ssh" in data["listen"]:
            raise self.fail("ssh.backend", "listen.ssh is set, so [ssh] needs a backend")
        elif listen.ssh:
            listen = Listen((), listen.http, listen.https, listen.accept_proxy, listen.deny)
        doors = self.doors(data.get("doors", []), backends, listen, admin)
        routes = self.routes(data.get("routes", []), backends, {door.name: door for door in doors})
        for route in routes:
            if route.intercept_errors and "errors_dir" not in edge:
                raise self.fail(f"routes[{route.index}].intercept_errors",
                                "needs [edge] errors_dir: the pages that replace the backend's errors")
            if route.acme_challenge is None:
                continue
            key = f"routes[{route.index}].acme_challenge"
            if acme is None:
                raise self.fail(key, "needs an [acme] table")
            if route.acme_challenge == "dns-01" and acme.dns is None:
                raise self.fail(key, "\"dns-01\" needs a DNS provider in [acme.dns]")
            if route.acme_challenge != "dns-01" and any(h.startswith("*.") for h in route.hosts):
                raise self.fail(key, "a wildcard certificate can only be validated with \"dns-01\"")
        return Config(
            path=self.path,
            state_dir=state_dir,
            certs_dir=certs_dir,
            issuer=issuer,
            admin=admin,
            admin_debug=admin_debug,
            acme=acme,
            watch=watch,
            workers=workers,
            listen=listen,
            timeouts=timeouts,
            ssh_backend=ssh_backend,
            backends=backends,
            routes=routes,
            raw=data,
            doors=doors,
            admin_addresses=admin_addresses,
            admin_auth=admin_auth,
            discovery=self.discovery(data["discovery"]) if "discovery" in data else None,
            ssh_addresses=ssh_addresses,
            ssh_conn_limit=ssh_conn_limit,
            storage=self.storage(data["storage"]) if "storage" in data else None,
            error_pages=error_pages,
        )

    def error_pages(self, value: Any, key: str) -> dict[int, bytes]:
        """``errors_dir``: its ``NNN.html`` files (NNN a 4xx or 5xx status, at most 64 KiB each), read now,
        so a reload reads them again.  Hidden files (``.gitkeep``) are left alone."""
        path = self.path_in(value, key)
        try:
            names = sorted(entry.name for entry in os.scandir(path) if not entry.name.startswith("."))
        except OSError as e:
            raise self.fail(key, f"cannot read {path}: {e.strerror}") from None
        pages = {}
        for name in names:
            if not _ERROR_PAGE.fullmatch(name):
                raise self.fail(key, f"{path}/{name}: not a page for an error status (name it like 502.html, "
                                     "a 4xx or 5xx status)")
            try:
                with open(f"{path}/{name}", "rb") as f:
                    page = f.read(MAX_ERROR_PAGE + 1)
            except OSError as e:
                raise self.fail(key, f"cannot read {path}/{name}: {e.strerror}") from None
            if len(page) > MAX_ERROR_PAGE:
                raise self.fail(key, f"{path}/{name} is larger than 64 KiB")
            pages[int(name[:3])] = page
        return pages

    def storage(self, data: Any) -> StorageConfig:
        """``[storage]``: ``redis`` (a URL) and its optional ``password_file`` (read now, like other secrets)."""
        data = self.table(data, "storage", ("redis", "password_file"))
        url = data.get("redis")
        if url is not None and (not isinstance(url, str)
                                or not re.match(r"(rediss?://[^/\s]+(/\d+)?|unix:///\S+)$", url)):
            raise self.fail("storage.redis", "must be a URL like \"redis://127.0.0.1:6379/0\" (or rediss://, "
                                             "unix:///path)")
        password = None
        if "password_file" in data:
            if url is None:
                raise self.fail("storage.password_file", "needs storage.redis")
            path = self.path_in(data["password_file"], "storage.password_file")
            password = self.read_file(path, "storage.password_file").strip()
            if not password:
                raise self.fail("storage.password_file", f"{path} is empty")
        return StorageConfig(url, password)

    def discovery(self, data: Any) -> Discovery:
        data = self.table(data, "discovery", ("podman", "interval"))
        socket = data.get("podman")
        if not isinstance(socket, str) or not socket.startswith("unix:///"):
            raise self.fail("discovery.podman", "must be the API socket as \"unix:///run/podman/podman.sock\" "
                                                "(rootless: unix://$XDG_RUNTIME_DIR/podman/podman.sock)")
        interval = self.duration(data.get("interval", Discovery.interval), "discovery.interval")
        return Discovery(socket[len("unix://"):], interval)

    def acme(self, data: Any) -> AcmeConfig:
        data = self.table(data, "acme", ("email", "directory", "ca_bundle", "eab_kid", "eab_hmac_key", "challenge",
                                         "profile", "retry", "check_interval", "dns"))
        for key in ("email", "directory", "eab_kid", "eab_hmac_key", "profile", "ca_bundle"):
            if key in data and (not isinstance(data[key], str) or not data[key]):
                raise self.fail(f"acme.{key}", "must be a non-empty string")
        if "email" in data and "@" not in data["email"]:
            raise self.fail("acme.email", f"{data['email']!r} is not an email address")
        directory = data.get("directory", "letsencrypt")
        directory = ACME_DIRECTORIES.get(directory, directory)
        if not directory.startswith("https://"):
            raise self.fail("acme.directory", "must be \"letsencrypt\", \"letsencrypt-staging\" or an https:// URL")
        if ("eab_kid" in data) != ("eab_hmac_key" in data):
            raise self.fail("acme.eab_kid" if "eab_kid" not in data else "acme.eab_hmac_key",
                            "external account binding needs both eab_kid and eab_hmac_key")
        challenge = self.choice(data.get("challenge", AcmeConfig.challenge), "acme.challenge", ACME_CHALLENGES)
        dns = self.acme_dns(data["dns"]) if "dns" in data else None
        if challenge == "dns-01" and dns is None:
            raise self.fail("acme.challenge", "\"dns-01\" needs a DNS provider in [acme.dns]")
        return AcmeConfig(
            email=data.get("email"),
            directory=directory,
            ca_bundle=self.path_in(data["ca_bundle"], "acme.ca_bundle") if "ca_bundle" in data else None,
            eab_kid=data.get("eab_kid"),
            eab_hmac_key=data.get("eab_hmac_key"),
            challenge=challenge,
            dns=dns,
            profile=data.get("profile"),
            retry=self.duration(data.get("retry", AcmeConfig.retry), "acme.retry"),
            check_interval=self.duration(data.get("check_interval", AcmeConfig.check_interval), "acme.check_interval"),
        )

    def acme_dns(self, data: Any) -> AcmeDnsConfig:
        """``[acme.dns]``: one provider and its keys; secrets and credentials are read now, so a missing or
        malformed file stops start-up instead of the first order."""
        if not isinstance(data, dict):
            raise self.fail("acme.dns", "must be a table")
        if "provider" not in data:
            raise self.fail("acme.dns.provider", f"missing (one of {', '.join(map(repr, DNS_PROVIDERS))})")
        provider = self.choice(data["provider"], "acme.dns.provider", DNS_PROVIDERS)
        data = self.table(data, "acme.dns", _DNS_COMMON + _DNS_KEYS[provider])
        options: dict[str, Any] = {"provider": provider}
        resolvers = []
        for value in self.string_list(data.get("resolvers", []), "acme.dns.resolvers"):
            resolvers.append(self.dns_server(value, "acme.dns.resolvers"))
        options["resolvers"] = tuple(resolvers)
        for key in ("propagation_timeout", "propagation_interval"):
            if key in data:
                options[key] = self.duration(data[key], f"acme.dns.{key}")
        if provider == "rfc2136":
            for required in ("server", "tsig_key_name", "tsig_secret_file"):
                if required not in data:
                    raise self.fail(f"acme.dns.{required}", "missing (the rfc2136 provider needs it)")
            options["server"] = self.dns_server(data["server"], "acme.dns.server")
            if "zone" in data:
                if not isinstance(data["zone"], str) or not valid_route_host(normalise_host(data["zone"])):
                    raise self.fail("acme.dns.zone", "must be a DNS name like \"example.com\"")
                options["zone"] = normalise_host(data["zone"])
            if not isinstance(data["tsig_key_name"], str) or not data["tsig_key_name"]:
                raise self.fail("acme.dns.tsig_key_name", "must be the name of a TSIG key")
            options["tsig_key_name"] = data["tsig_key_name"]
            options["tsig_algorithm"] = self.choice(data.get("tsig_algorithm", AcmeDnsConfig.tsig_algorithm),
                                                    "acme.dns.tsig_algorithm", TSIG_ALGORITHMS)
            secret_file = self.path_in(data["tsig_secret_file"], "acme.dns.tsig_secret_file")
            secret = self.read_file(secret_file, "acme.dns.tsig_secret_file").strip()
            try:
                if not secret or not base64.b64decode(secret, validate=True):
                    raise ValueError
            except ValueError:
                raise self.fail("acme.dns.tsig_secret_file",
                                f"{secret_file} does not hold a base64 TSIG secret") from None
            options["tsig_secret"] = secret
        elif provider == "acme-dns":
            for required in ("api", "credentials_file"):
                if required not in data:
                    raise self.fail(f"acme.dns.{required}", "missing (the acme-dns provider needs it)")
            if not isinstance(data["api"], str) or not data["api"].startswith(("http://", "https://")):
                raise self.fail("acme.dns.api", "must be the acme-dns server's http:// or https:// URL")
            options["api"] = data["api"]
            path = options["credentials_file"] = self.path_in(data["credentials_file"], "acme.dns.credentials_file")
            try:
                credentials = json.loads(self.read_file(path, "acme.dns.credentials_file"))
            except ValueError as e:
                raise self.fail("acme.dns.credentials_file", f"{path} is not JSON: {e}") from None
            fields = ("username", "password", "fulldomain", "subdomain")
            if not isinstance(credentials, dict) or not all(
                    isinstance(v, dict) and all(isinstance(v.get(f), str) for f in fields)
                    for v in credentials.values()):
                raise self.fail("acme.dns.credentials_file", f"{path} must map each domain to an object with "
                                + ", ".join(fields))
            options["credentials"] = {normalise_host(k): v for k, v in credentials.items()}
        else:
            if "program" not in data:
                raise self.fail("acme.dns.program", "missing (the exec provider needs the hook to run)")
            program = self.path_in(data["program"], "acme.dns.program")
            if not os.access(program, os.X_OK) or os.path.isdir(program):
                raise self.fail("acme.dns.program", f"{program} is not an executable file")
            options["program"] = program
        return AcmeDnsConfig(**options)

    def dns_server(self, value: Any, key: str) -> tuple[str, int]:
        if not isinstance(value, str):
            raise self.fail(key, "must be an address like \"192.0.2.53:53\"")
        try:
            return parse_host_port(value)
        except ValueError as e:
            raise self.fail(key, str(e)) from None

    def read_file(self, path: str, key: str) -> str:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read()
        except OSError as e:
            raise self.fail(key, f"cannot read {path}: {e.strerror}") from None

    def listen(self, data: Any) -> Listen:
        data = self.table(data, "listen", ("ssh", "http", "https", "accept_proxy", "deny"))
        doors = {}
        seen: dict[Any, str] = {}
        for door, default in DEFAULT_LISTEN.items():
            key = f"listen.{door}"
            values = self.string_list(data.get(door, list(default)), key)
            addresses = []
            for value in values:
                try:
                    addresses.extend(parse_addresses(value))
                except ValueError as e:
                    raise self.fail(key, str(e)) from None
            for address in addresses:  # one address, one door: the second bind would fail at start-up
                other = seen.get(address)
                if other is not None:
                    where = "twice in it" if other == door else f"also in listen.{other}"
                    raise self.fail(key, f"{address} is {where}")
                seen[address] = door
            doors[door] = tuple(addresses)
        networks = []
        for value in self.string_list(data.get("accept_proxy", []), "listen.accept_proxy"):
            try:
                networks.append(ipaddress.ip_network(value, strict=False))
            except ValueError:
                raise self.fail("listen.accept_proxy", f"{value!r} is not an address or CIDR network") from None
        deny = self.address_rule({"deny": data["deny"]} if "deny" in data else {}, "listen")
        return Listen(accept_proxy=tuple(networks), deny=deny, **doors)

    def timeouts(self, data: Any) -> Timeouts:
        data = self.table(data, "timeouts", ("inspect", "connect", "idle", "response", "drain"))
        return Timeouts(**{k: self.duration(v, f"timeouts.{k}") for k, v in data.items()})

    def backends(self, data: Any) -> dict[str, BackendConfig]:
        data = self.table(data, "backends", tuple(data) if isinstance(data, dict) else ())
        return {name: self.backend(name, value) for name, value in data.items()}

    def backend(self, name: str, data: Any) -> BackendConfig:
        key = f"backends.{name}"
        data = self.table(
            data, key, ("servers", "balance", "max_conn", "proxy_protocol", "max_fails", "fail_timeout",
                        "verify", "ca", "server_name", "check", "check_interval", "rise", "fall", "protocol")
        )
        if "servers" not in data:
            raise self.fail(f"{key}.servers", "missing: a backend needs at least one server")
        values = self.string_list(data["servers"], f"{key}.servers")
        if not values:
            raise self.fail(f"{key}.servers", "must name at least one server")
        servers = []
        for value in values:
            try:
                host, port, scheme = parse_server(value)
                servers.append(Server(host, port, Scheme(scheme)))
            except ValueError as e:
                raise self.fail(f"{key}.servers", str(e)) from None
        kinds = {s.scheme == "tcp" for s in servers}
        if len(kinds) > 1:
            raise self.fail(f"{key}.servers", "mixes host:port (TCP) and http(s):// servers")
        options: dict[str, Any] = {}
        if "balance" in data:
            options["balance"] = self.choice(data["balance"], f"{key}.balance", BALANCES)
        if "max_conn" in data:
            options["max_conn"] = self.positive_int(data["max_conn"], f"{key}.max_conn")
        if "max_fails" in data:
            options["max_fails"] = self.positive_int(data["max_fails"], f"{key}.max_fails")
        if "fail_timeout" in data:
            options["fail_timeout"] = self.duration(data["fail_timeout"], f"{key}.fail_timeout")
        if "proxy_protocol" in data:
            options["proxy_protocol"] = self.choice(
                data["proxy_protocol"], f"{key}.proxy_protocol", PROXY_PROTOCOLS
            )
        https_only = [k for k in ("verify", "ca", "server_name") if k in data]
        if https_only and servers[0].scheme != "https":
            raise self.fail(f"{key}.{https_only[0]}", "only applies to https:// servers")
        if "verify" in data:
            if not isinstance(data["verify"], bool):
                raise self.fail(f"{key}.verify", "must be true or false")
            options["verify"] = data["verify"]
        if "ca" in data:
            options["ca"] = self.path_in(data["ca"], f"{key}.ca")
        if "server_name" in data:
            if not isinstance(data["server_name"], str) or not valid_route_host(normalise_host(data["server_name"])):
                raise self.fail(f"{key}.server_name", "must be a host name")
            options["server_name"] = normalise_host(data["server_name"])
        if "check" in data:
            check = data["check"]
            parts = check.split() if isinstance(check, str) else []
            valid = parts in (["tcp"], ["tls"]) or (
                len(parts) == 3 and parts[0] == "http" and parts[1] in ("GET", "HEAD") and parts[2].startswith("/"))
            if not valid:
                raise self.fail(f"{key}.check", f"{check!r} is not \"tcp\", \"tls\" or \"http GET /path\"")
            options["check"] = HealthCheck(*parts)
        for option in ("check_interval", "rise", "fall"):
            if option in data and "check" not in data:
                raise self.fail(f"{key}.{option}", "only applies together with check")
        if "check_interval" in data:
            options["check_interval"] = self.duration(data["check_interval"], f"{key}.check_interval")
        for option in ("rise", "fall"):
            if option in data:
                options[option] = self.positive_int(data[option], f"{key}.{option}")
        if "protocol" in data:
            if servers[0].scheme == "tcp":
                raise self.fail(f"{key}.protocol", "only applies to http:// and https:// servers")
            options["protocol"] = self.choice(data["protocol"], f"{key}.protocol", tuple(BackendProtocol))
            if options["protocol"] == "h2" and options.get("check") and options["check"].kind == "http":
                raise self.fail(f"{key}.check",
                                "an HTTP check speaks HTTP/1.1: use \"tcp\" or \"tls\" for an h2 backend")
        if "proxy_protocol" in options and servers[0].scheme != "tcp":
            raise self.fail(f"{key}.proxy_protocol", "is for host:port (TCP) servers")
        return BackendConfig(name=name, servers=tuple(servers), **options)

    def route_transform(self, item: Mapping[str, Any], key: str, tls: str, paths: tuple[str, ...]) -> dict[str, Any]:
        """``hsts``, ``headers``, ``strip_prefix`` and ``compress``: terminated routes only."""
        options: dict[str, Any] = {}
        present = [name for name in TRANSFORM_KEYS if name in item]
        if present and tls == "passthrough":
            raise self.fail(f"{key}.{present[0]}", "a passthrough route cannot see HTTP requests")
        if "hsts" in item:
            value = item["hsts"]
            subdomains = preload = False
            if isinstance(value, dict):
                value = self.table(value, f"{key}.hsts", ("max_age", "subdomains", "preload"))
                subdomains, preload = value.get("subdomains", False), value.get("preload", False)
                if not isinstance(subdomains, bool) or not isinstance(preload, bool):
                    raise self.fail(f"{key}.hsts", "subdomains and preload must be true or false")
                if "max_age" not in value:
                    raise self.fail(f"{key}.hsts.max_age", "missing (e.g. \"1y\")")
                value = value["max_age"]
            seconds = int(self.duration(value, f"{key}.hsts"))
            options["hsts"] = hsts_value(seconds, subdomains, preload)
        if "headers" in item:
            headers = self.table(item["headers"], f"{key}.headers", ("request", "response"))
            for side in ("request", "response"):
                if side in headers:
                    options[f"{side}_headers"] = self.header_rules(headers[side], f"{key}.headers.{side}")
        if "strip_prefix" in item:
            prefix = item["strip_prefix"]
            if not isinstance(prefix, str) or not prefix.startswith("/") or len(prefix) < 2:
                raise self.fail(f"{key}.strip_prefix", "must be a path prefix like \"/app\"")
            if not all(path.startswith(prefix.rstrip("/")) for path in paths) or paths == ("/",):
                raise self.fail(f"{key}.strip_prefix", f"{prefix!r} must begin every one of the route's paths "
                                                       f"(set paths = [\"{prefix}\"])")
            options["strip_prefix"] = prefix
        for flag in ("compress", "intercept_errors"):
            if flag in item:
                if not isinstance(item[flag], bool):
                    raise self.fail(f"{key}.{flag}", "must be true or false")
                options[flag] = item[flag]
        return options

    def header_rules(self, value: Any, key: str) -> HeaderRules:
        """``{ set = { Name = "value" }, remove = ["Name"] }``."""
        value = self.table(value, key, ("set", "remove"))
        fields = []
        for name, field_value in (value.get("set") or {}).items() if isinstance(value.get("set", {}), dict) \
                else self._bad(f"{key}.set", "must be a table of header names and values"):
            if not _TOKEN.fullmatch(name) or name.lower() in _FRAMING_HEADERS:
                raise self.fail(f"{key}.set", f"{name!r} is not a header edge lets a rule set")
            if not isinstance(field_value, str) or not field_value.isprintable() or not field_value.isascii():
                raise self.fail(f"{key}.set.{name}", "must be printable ASCII text")
            fields.append((name.lower().encode("ascii"), field_value.strip().encode("ascii")))
        removed = set()
        for name in self.string_list(value.get("remove", []), f"{key}.remove"):
            if not _TOKEN.fullmatch(name) or name.lower() in _FRAMING_HEADERS:
                raise self.fail(f"{key}.remove", f"{name!r} is not a header edge lets a rule remove")
            removed.add(name.lower().encode("ascii"))
        return HeaderRules(tuple(fields), frozenset(removed))

    def _bad(self, key: str, problem: str) -> Any:
        raise self.fail(key, problem)

    def route_access(self, item: Mapping[str, Any], key: str, tls: str, label: str) -> dict[str, Any]:
        """A route's access rules: allow/deny for any route, the HTTP ones for terminated routes only."""
        options: dict[str, Any] = {"addresses": self.address_rule(item, key)}
        if tls == "passthrough":
            for http_only in ("basic_auth", "pass_authorization", "user_header", "forward_auth", "rate_limit"):
                if http_only in item:
                    hint = " (use conn_limit)" if http_only == "rate_limit" else ""
                    raise self.fail(f"{key}.{http_only}", f"a passthrough route cannot see HTTP requests{hint}")
            if "conn_limit" in item:
                options["conn_limit"] = self.rate(item["conn_limit"], f"{key}.conn_limit", "new")
            return options
        if "conn_limit" in item:
            raise self.fail(f"{key}.conn_limit", "is for passthrough routes; a terminated route has rate_limit")
        if "rate_limit" in item:
            options["rate_limit"] = self.rate(item["rate_limit"], f"{key}.rate_limit", "requests")
        if "basic_auth" in item:
            options["basic_auth"] = self.basic_auth(item["basic_auth"], f"{key}.basic_auth", label)
        for option in ("pass_authorization", "user_header"):
            if option in item and "basic_auth" not in item:
                raise self.fail(f"{key}.{option}", "only applies together with basic_auth")
        if "pass_authorization" in item:
            if not isinstance(item["pass_authorization"], bool):
                raise self.fail(f"{key}.pass_authorization", "must be true or false")
            options["pass_authorization"] = item["pass_authorization"]
        if "user_header" in item:
            options["user_header"] = self.header_name(item["user_header"], f"{key}.user_header")
        if "forward_auth" in item:
            if "basic_auth" in item:
                raise self.fail(f"{key}.forward_auth", "a route has basic_auth or forward_auth, not both")
            options["forward_auth"] = self.forward_auth(item["forward_auth"], f"{key}.forward_auth")
        return options

    def header_name(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not _TOKEN.fullmatch(value):
            raise self.fail(key, "must be a header name like \"Remote-User\"")
        if value.lower() in _RESERVED_HEADERS:
            raise self.fail(key, f"{value!r} is a header edge sets or removes itself")
        return value

    def basic_auth(self, value: Any, key: str, label: str) -> BasicAuth:
        """``"users.htpasswd"`` or ``{ file = "users.htpasswd", realm = "..." }``; the file is read now."""
        if isinstance(value, dict):
            value = self.table(value, key, ("file", "realm"))
            if "file" not in value:
                raise self.fail(f"{key}.file", "missing: the users file (htpasswd -B writes it)")
            realm = value.get("realm", label)
            if (not isinstance(realm, str) or not realm or not realm.isascii()
                    or any(c in realm for c in '"\\\r\n') or not realm.isprintable()):
                raise self.fail(f"{key}.realm", "must be a short ASCII text without quotes or backslashes")
            value = value["file"]
            key = f"{key}.file"
        else:
            realm = label
        path = self.path_in(value, key)
        try:
            users = parse_users(self.read_file(path, key))
        except UsersFileError as e:
            raise self.fail(key, f"{path}: {e}") from None
        return BasicAuth(path, realm, Users(users), tuple(sorted(users.items())))

    def forward_auth(self, value: Any, key: str) -> ForwardAuth:
        if not isinstance(value, dict):
            raise self.fail(key, "must be a table like { url = \"http://127.0.0.1:9091/api/authz/forward-auth\" }")
        value = self.table(value, key, ("url", "copy_headers", "timeout"))
        url = value.get("url")
        if url is None:
            raise self.fail(f"{key}.url", "missing: the auth server's http:// URL")
        match = _HTTP_URL.fullmatch(url) if isinstance(url, str) else None
        if match is None:
            raise self.fail(f"{key}.url", "must be an http:// URL like \"http://127.0.0.1:9091/api/authz/forward-auth\"")
        host = match.group("host").strip("[]")
        port = int(match.group("port") or 80)
        if not 0 < port < 65536:
            raise self.fail(f"{key}.url", "port out of range")
        copy = tuple(self.header_name(name, f"{key}.copy_headers")
                     for name in self.string_list(value.get("copy_headers", []), f"{key}.copy_headers"))
        timeout = self.duration(value["timeout"], f"{key}.timeout") if "timeout" in value else 10.0
        return ForwardAuth(url, host, port, match.group("target") or "/", copy, timeout)

    def backend_ref(self, name: Any, key: str, backends: Mapping[str, BackendConfig], kind: str) -> None:
        if not isinstance(name, str):
            raise self.fail(key, "must be the name of a backend")
        if name not in backends:
            known = ", ".join(sorted(backends)) or "none defined"
            raise self.fail(key, f"no backend named {name!r} (backends: {known})")
        backend = backends[name]
        if backend.kind != kind:
            if kind == "tcp":
                raise self.fail(
                    key, f"backend {name!r} has http(s):// servers, but this needs host:port (TCP) servers"
                )
            raise self.fail(key, f"backend {name!r} has host:port servers, but this needs http:// or https:// servers")

    def doors(self, data: Any, backends: Mapping[str, BackendConfig], listen: Listen,
              admin: ListenAddress | None) -> tuple[Door, ...]:
        if not isinstance(data, list):
            raise self.fail("doors", "must be an array of tables: [[doors]]")
        seen: dict[Any, str] = {a: f"listen.{d}" for d in ("ssh", "http", "https") for a in getattr(listen, d)}
        if admin is not None:
            seen[admin] = "admin.listen"
        doors: list[Door] = []
        for index, item in enumerate(data):
            key = f"doors[{index}]"
            item = self.table(item, key, ("name", "listen", "backend", "sni", "allow", "deny", "conn_limit"))
            for required in ("name", "listen"):
                if required not in item:
                    raise self.fail(f"{key}.{required}", "missing")
            name = item["name"]
            if not isinstance(name, str) or not DOOR_NAME.fullmatch(name):
                raise self.fail(f"{key}.name", "must be a short lower-case name like \"imaps\"")
            if name in BUILTIN_DOORS:
                raise self.fail(f"{key}.name", f"{name!r} is a built-in door; use [listen] for it")
            if any(door.name == name for door in doors):
                raise self.fail(f"{key}.name", f"{name!r} is already the name of another door")
            values = [item["listen"]] if isinstance(item["listen"], str) else item["listen"]
            addresses = []
            for value in self.string_list(values, f"{key}.listen"):
                try:
                    addresses.extend(parse_addresses(value))
                except ValueError as e:
                    raise self.fail(f"{key}.listen", str(e)) from None
            if not addresses:
                raise self.fail(f"{key}.listen", "must name at least one address")
            for address in addresses:
                if address in seen:
                    raise self.fail(f"{key}.listen", f"{address} is also in {seen[address]}")
                seen[address] = f"doors[{index}].listen"
            sni = item.get("sni", False)
            if not isinstance(sni, bool):
                raise self.fail(f"{key}.sni", "must be true or false")
            backend = item.get("backend")
            if backend is not None:
                self.backend_ref(backend, f"{key}.backend", backends, "tcp")
            elif not sni:
                raise self.fail(f"{key}.backend", "missing: every connection to this door goes there "
                                                  "(or set sni = true to route by server name)")
            conn_limit = self.rate(item["conn_limit"], f"{key}.conn_limit", "new") if "conn_limit" in item else None
            doors.append(Door(name, tuple(addresses), backend, sni, self.address_rule(item, key), conn_limit))
        return tuple(doors)

    def routes(self, data: Any, backends: Mapping[str, BackendConfig],
               doors: Mapping[str, Door] | None = None) -> tuple[Route, ...]:
        doors = doors or {}
        if not isinstance(data, list):
            raise self.fail("routes", "must be an array of tables: [[routes]]")
        routes = []
        names: dict[str, int] = {}
        seen: dict[tuple[str, str, str], int] = {}  # (door, host, path) -> route index
        passthrough_hosts: dict[tuple[str, str], int] = {}
        for index, item in enumerate(data):
            key = f"routes[{index}]"
            item = self.table(item, key, ("name", "hosts", "tls", "backend", "acme_backend", "http", "paths",
                                          "max_body", "http_backend", "doors", "acme_challenge") + ACCESS_KEYS
                              + TRANSFORM_KEYS)
            for required in ("hosts", "tls", "backend"):
                if required not in item:
                    raise self.fail(f"{key}.{required}", "missing")
            tls = self.choice(item["tls"], f"{key}.tls", TLS_MODES)
            paths = tuple(self.string_list(item.get("paths", list(Route.paths)), f"{key}.paths"))
            if not paths or any(not p.startswith("/") for p in paths):
                raise self.fail(f"{key}.paths", "must be a list of path prefixes starting with \"/\"")
            if tls == "passthrough" and "paths" in item:
                raise self.fail(f"{key}.paths",
                                "a passthrough route cannot see paths; use tls = \"edge\" or \"reencrypt\"")
            if tls == "passthrough" and "max_body" in item:
                raise self.fail(f"{key}.max_body", "a passthrough route cannot see request bodies")
            route_doors = tuple(self.string_list(item.get("doors", list(Route.doors)), f"{key}.doors"))
            if not route_doors:
                raise self.fail(f"{key}.doors", "must name at least one door (\"https\" is port 443)")
            for door in route_doors:
                if door != "https" and (door not in doors or not doors[door].sni):
                    sni_doors = ", ".join(repr(d) for d in doors if doors[d].sni) or "none has sni = true"
                    raise self.fail(f"{key}.doors", f"{door!r} is not \"https\" or a [[doors]] name with sni = true "
                                                    f"({sni_doors})")
                if door != "https" and tls != "passthrough":
                    raise self.fail(f"{key}.doors", f"{door!r}: only passthrough routes are served on other doors")
            hosts = []
            for host in self.string_list(item["hosts"], f"{key}.hosts"):
                name = normalise_host(host)
                if not valid_route_host(name):
                    raise self.fail(f"{key}.hosts", f"{host!r} is not a host name, a \"*.suffix\" wildcard or \"*\"")
                for door in route_doors:  # each door routes its own names
                    for path in paths:
                        if (door, name, path) in seen:
                            where = f"{host!r}" if path == "/" else f"{host!r} path {path!r}"
                            raise self.fail(f"{key}.hosts",
                                            f"{where} is already routed by routes[{seen[door, name, path]}]")
                    other = passthrough_hosts.get((door, name))
                    if other is None and tls == "passthrough":
                        other = next((i for (d, h, _), i in seen.items() if d == door and h == name), None)
                    if other is not None:
                        raise self.fail(
                            f"{key}.hosts",
                            f"{host!r} is already routed by routes[{other}] (a passthrough host takes one route)"
                        )
                    seen.update({(door, name, path): index for path in paths})
                    if tls == "passthrough":
                        passthrough_hosts[door, name] = index
                hosts.append(name)
            if not hosts:
                raise self.fail(f"{key}.hosts", "must name at least one host")
            if tls == "passthrough":
                self.backend_ref(item["backend"], f"{key}.backend", backends, "tcp")
            else:
                self.backend_ref(item["backend"], f"{key}.backend", backends, "http")
                scheme = backends[item["backend"]].servers[0].scheme
                if tls == "reencrypt" and scheme != "https":
                    raise self.fail(f"{key}.backend",
                                    f"tls = \"reencrypt\" needs https:// servers in {item['backend']!r}")
                if tls == "edge" and scheme != "http":
                    raise self.fail(f"{key}.backend", f"tls = \"edge\" needs http:// servers in {item['backend']!r}; "
                                                      "use tls = \"reencrypt\" for https://")
            acme_backend = item.get("acme_backend")
            if acme_backend is not None:
                self.backend_ref(acme_backend, f"{key}.acme_backend", backends, "tcp")
            http = self.choice(item.get("http", Route.http), f"{key}.http", HTTP_MODES)
            if http == "allow" and tls == "passthrough":
                raise self.fail(f"{key}.http",
                                "\"allow\" serves the route over plain HTTP, which needs an HTTP backend")
            http_backend = item.get("http_backend")
            if http == "forward":
                if http_backend is None:
                    raise self.fail(f"{key}.http_backend", "missing: http = \"forward\" sends port 80's connections "
                                                           "for these hosts to this TCP backend")
                self.backend_ref(http_backend, f"{key}.http_backend", backends, "tcp")
                if acme_backend is not None:
                    raise self.fail(f"{key}.acme_backend", "not needed with http = \"forward\": http_backend "
                                                           "gets every port 80 request, ACME challenges too")
                guarded = [name for name in ("basic_auth", "forward_auth", "rate_limit") if name in item]
                if guarded:
                    raise self.fail(f"{key}.{guarded[0]}", "cannot hold on port 80 with http = \"forward\" (the "
                                                           "connection goes whole to http_backend); use http = "
                                                           "\"redirect\" so every request meets it over HTTPS")
            elif http_backend is not None:
                raise self.fail(f"{key}.http_backend", "only used with http = \"forward\"")
            max_body = self.size(item["max_body"], f"{key}.max_body") if "max_body" in item else None
            if "name" in item:
                label = item["name"]
                if not isinstance(label, str) or not ROUTE_NAME.fullmatch(label):
                    raise self.fail(f"{key}.name", "must be a name of letters, digits and . _ - / : (up to 100)")
                if label in names:
                    raise self.fail(f"{key}.name", f"{label!r} is already the name of routes[{names[label]}]")
            else:  # the first host, and its path if not "/"; the position if that is taken
                label = hosts[0] + (paths[0] if paths != ("/",) else "")
                if label in names:
                    label = key
            names[label] = index
            acme_challenge = None
            if "acme_challenge" in item:
                acme_challenge = self.choice(item["acme_challenge"], f"{key}.acme_challenge", ACME_CHALLENGES)
                if tls == "passthrough":
                    raise self.fail(f"{key}.acme_challenge", "a passthrough route has no certificate of the edge's")
            routes.append(Route(tuple(hosts), tls, item["backend"], acme_backend, http, index, paths, max_body, label,
                                http_backend, route_doors, acme_challenge, **self.route_access(item, key, tls, label),
                                **self.route_transform(item, key, tls, paths)))
        for name, named_door in doors.items():
            if named_door.sni and named_door.backend is None and not any(name in route.doors for route in routes):
                raise self.fail("doors", f"door {name!r} has sni = true but no route lists it in doors "
                                         "and it has no backend")
        return tuple(routes)
