# -*- test-case-name: tests.unit.config.test_parsing, tests.unit.config.test_routes -*-
"""The configuration snapshot: frozen dataclasses every other module reads, never the file.

Built only by :mod:`edge.config.parsing`, which checks every value first; the allowed values of the
enumerated keys are stated here once.
"""

from __future__ import annotations

import ipaddress
from functools import cached_property
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Mapping

from edge.config.access import AddressRule, Rate, Users
from edge.config.headers import HeaderRules
from edge.config.addresses import ListenAddress

class TlsMode(StrEnum):
    """A route's ``tls``: relay TLS untouched, terminate it (plain HTTP behind), or terminate and re-encrypt."""

    PASSTHROUGH = "passthrough"
    EDGE = "edge"
    REENCRYPT = "reencrypt"


class HttpMode(StrEnum):
    """A route's ``http``: what plain HTTP on port 80 gets."""

    REDIRECT = "redirect"
    ALLOW = "allow"
    DENY = "deny"
    FORWARD = "forward"


class Balance(StrEnum):
    ROUNDROBIN = "roundrobin"
    LEASTCONN = "leastconn"


class ProxyProtocol(StrEnum):
    V1 = "v1"
    V2 = "v2"


class Scheme(StrEnum):
    """How a backend's servers speak: byte streams, or HTTP over plain TCP or TLS."""

    TCP = "tcp"
    HTTP = "http"
    HTTPS = "https"


class BackendProtocol(StrEnum):
    """An HTTP backend's ``protocol``: HTTP/1.1, or HTTP/2 (h2c with prior knowledge, or ALPN h2)."""

    HTTP1 = "http/1.1"
    H2 = "h2"


STATE_DIR = "/var/lib/edge"  # [edge] state_dir when the file names none

# The values a key may take, as the config file spells them (StrEnum members compare equal to them).
TLS_MODES = tuple(TlsMode)
HTTP_MODES = tuple(HttpMode)
BALANCES = tuple(Balance)
PROXY_PROTOCOLS = tuple(ProxyProtocol)

DEFAULT_LISTEN = {
    "ssh": ("0.0.0.0:22", "[::]:22"),
    "http": ("0.0.0.0:80", "[::]:80"),
    "https": ("0.0.0.0:443", "[::]:443"),
}



class ConfigError(Exception):
    """A configuration problem: ``file: key: what is wrong`` on one line."""

    def __init__(self, path: str, key: str, problem: str) -> None:
        self.path, self.key, self.problem = path, key, problem
        where = f"{path}: {key}: " if key else f"{path}: "
        super().__init__(where + problem)


@dataclass(frozen=True)
class Timeouts:
    inspect: float = 5.0  # first bytes on 443, a PROXY header, an HTTP request head
    connect: float = 5.0
    idle: float = 3600.0
    response: float = 60.0  # an HTTP backend's response headers (else 504)
    drain: float = 30.0  # on stop: how long open connections may take to finish


@dataclass(frozen=True)
class Listen:
    ssh: tuple[ListenAddress, ...]
    http: tuple[ListenAddress, ...]
    https: tuple[ListenAddress, ...]
    accept_proxy: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    deny: AddressRule = AddressRule()  # [listen] deny: addresses refused on every door

    def trusts(self, ip: str) -> bool:
        """Whether a connection from ``ip`` may carry a PROXY header."""
        if not self.accept_proxy:
            return False
        try:
            address = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self.accept_proxy)


@dataclass(frozen=True)
class Server:
    """One server of a backend: where to connect and how it speaks."""

    host: str
    port: int
    scheme: Scheme

    def __str__(self) -> str:
        return self.text

    @cached_property  # read for every connection's and request's log line and metrics
    def text(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        prefix = "" if self.scheme == "tcp" else f"{self.scheme}://"
        return f"{prefix}{host}:{self.port}"


@dataclass(frozen=True)
class HealthCheck:
    """A backend's ``check``, parsed once: ``"tcp"`` connects, ``"tls"`` completes a handshake,
    ``"http GET /path"`` (or ``HEAD``) wants a 2xx or 3xx."""

    kind: str  # "tcp", "tls" or "http"
    method: str = ""  # "GET" or "HEAD" for kind "http"
    path: str = ""

    def __str__(self) -> str:
        return f"http {self.method} {self.path}" if self.kind == "http" else self.kind


@dataclass(frozen=True)
class BackendConfig:
    name: str
    servers: tuple[Server, ...]
    balance: Balance = Balance.ROUNDROBIN
    max_conn: int | None = None
    proxy_protocol: ProxyProtocol | None = None
    max_fails: int = 1
    fail_timeout: float = 10.0
    verify: bool = True  # https:// servers: check the certificate
    ca: str | None = None  # PEM bundle to verify https:// servers against (default: system CAs)
    server_name: str | None = None  # name to send (SNI) and verify (default: the server's host)
    check: HealthCheck | None = None  # active health check
    check_interval: float = 2.0
    rise: int = 2
    fall: int = 3
    protocol: BackendProtocol = BackendProtocol.HTTP1  # http(s):// servers

    @property
    def kind(self) -> str:
        """``"tcp"`` for byte streams, ``"http"`` for HTTP(S) servers."""
        return "tcp" if self.servers[0].scheme == "tcp" else "http"


@dataclass(frozen=True)
class BasicAuth:
    """``basic_auth``: the users file (read at load, so a reload re-reads it) and the realm."""

    path: str
    realm: str
    users: Users = field(compare=False, repr=False)
    entries: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # what the file said (compared)


@dataclass(frozen=True)
class ForwardAuth:
    """``forward_auth``: ask ``url`` (a GET with the client's headers) before each request."""

    url: str
    host: str
    port: int
    target: str  # path and query of url
    copy_headers: tuple[str, ...] = ()
    timeout: float = 10.0


ACCESS_KEYS = ("allow", "deny", "basic_auth", "pass_authorization", "user_header", "forward_auth", "rate_limit",
               "conn_limit")
TRANSFORM_KEYS = ("hsts", "headers", "strip_prefix", "compress", "intercept_errors")
MAX_ERROR_PAGE = 65536  # bytes of one [edge] errors_dir page
# Fields a header rule may not set or remove: framing and the ones edge manages itself
# Headers edge sets or strips itself: a user_header or copy_headers entry may not be one of them.
ROUTE_NAME = re.compile(r"[A-Za-z0-9*][A-Za-z0-9_.:/*-]{0,99}")


@dataclass(frozen=True)
class Route:
    hosts: tuple[str, ...]
    tls: TlsMode
    backend: str
    acme_backend: str | None = None
    http: HttpMode = HttpMode.REDIRECT
    index: int = 0
    paths: tuple[str, ...] = ("/",)
    max_body: int | None = None
    label: str = ""  # its name: `name = "..."`, else the first host (and path)
    http_backend: str | None = None  # http = "forward": port 80's connections for these hosts go there
    doors: tuple[str, ...] = ("https",)  # where it is served: port 443, and/or [[doors]] with sni = true
    acme_challenge: str | None = None  # this route's ACME challenge ([acme] challenge when None)
    addresses: AddressRule = AddressRule()  # allow / deny
    basic_auth: BasicAuth | None = None
    pass_authorization: bool = False  # basic auth: the backend gets the Authorization header too
    user_header: str | None = None  # basic auth: the user name passed on in this header
    forward_auth: ForwardAuth | None = None
    rate_limit: Rate | None = None  # requests per client address (terminated routes)
    conn_limit: Rate | None = None  # new connections per client address (passthrough routes)
    hsts: bytes | None = None  # Strict-Transport-Security value added to HTTPS answers
    request_headers: HeaderRules = HeaderRules()  # headers = { request = { set, remove } }
    response_headers: HeaderRules = HeaderRules()  # headers = { response = { set, remove } }
    strip_prefix: str | None = None  # removed from the path before the backend sees it
    compress: bool = False  # gzip / zstd for clients that accept them
    intercept_errors: bool = False  # a backend's 4xx/5xx with a page in errors_dir gets the page instead

    @cached_property  # asked for every request, as are the two below
    def guarded(self) -> bool:
        """Whether a request must pass access rules before it goes on."""
        return bool(self.addresses) or self.basic_auth is not None or self.forward_auth is not None \
            or self.rate_limit is not None

    @cached_property
    def terminated(self) -> bool:
        return self.tls != "passthrough"

    @cached_property
    def name(self) -> str:
        """What logs, metrics and the status page call this route (stable when routes are reordered)."""
        return self.label or f"routes[{self.index}]"


ACME_DIRECTORIES = {
    "letsencrypt": "https://acme-v02.api.letsencrypt.org/directory",
    "letsencrypt-staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
}


ACME_CHALLENGES = ("http-01", "tls-alpn-01", "dns-01")
DNS_PROVIDERS = ("rfc2136", "acme-dns", "exec")
TSIG_ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1", "hmac-md5")


@dataclass(frozen=True)
class AcmeDnsConfig:
    """``[acme.dns]``: the DNS provider that writes DNS-01 TXT records, and how propagation is checked."""

    provider: str
    resolvers: tuple[tuple[str, int], ...] = ()  # authoritative servers to check (default: per provider)
    propagation_timeout: float = 120.0
    propagation_interval: float = 2.0
    server: tuple[str, int] | None = None  # rfc2136
    zone: str | None = None
    tsig_key_name: str | None = None
    tsig_algorithm: str = "hmac-sha256"
    tsig_secret: str = field(default="", repr=False)
    api: str | None = None  # acme-dns
    credentials_file: str | None = None
    credentials: Mapping[str, Mapping[str, str]] = field(default_factory=dict, repr=False)
    program: str | None = None  # exec


@dataclass(frozen=True)
class AcmeConfig:
    email: str | None
    directory: str
    ca_bundle: str | None = None
    eab_kid: str | None = None
    eab_hmac_key: str | None = None
    challenge: str = "http-01"
    profile: str | None = None
    retry: float = 60.0  # first back-off after a failure; doubles up to a day
    check_interval: float = 3600.0
    dns: AcmeDnsConfig | None = None  # [acme.dns]: needed by dns-01 and by wildcard names


@dataclass(frozen=True)
class StorageConfig:
    """``[storage]``: where ACME state is shared between edges (Redis), instead of ``state_dir``'s files."""

    redis: str | None = None  # redis://host:6379/0, rediss://..., unix:///path
    password: str | None = field(default=None, repr=False)  # read from password_file


@dataclass(frozen=True)
class Discovery:
    """``[discovery]``: routes from container labels on podman's Docker-compatible API."""

    podman: str  # the API's unix socket path
    interval: float = 30.0  # a full list this often, in case events were missed


@dataclass(frozen=True)
class Door:
    """An extra front door (``[[doors]]``): IMAPS on 993, SMTPS on 465, another SSH...

    Without ``sni`` every connection goes to ``backend``.  With ``sni`` a TLS connection is routed by
    its server name among the passthrough routes that list this door (``doors = ["imaps"]``), as port
    443 does; ``backend``, if set, takes what no route matches.
    """

    name: str
    listen: tuple[ListenAddress, ...]
    backend: str | None
    sni: bool = False
    addresses: AddressRule = AddressRule()  # allow / deny, for every connection to this door
    conn_limit: Rate | None = None


DOOR_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
BUILTIN_DOORS = ("ssh", "http", "https", "admin")


@dataclass(frozen=True)
class Config:
    path: str
    state_dir: str  # [edge] state_dir, default STATE_DIR
    certs_dir: str | None
    issuer: str | None
    admin: ListenAddress | None
    acme: AcmeConfig | None
    watch: bool
    workers: int
    listen: Listen
    timeouts: Timeouts
    ssh_backend: str | None
    backends: Mapping[str, BackendConfig]
    routes: tuple[Route, ...]
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    admin_debug: bool = False  # [admin] debug: /debug/objects on the admin listener
    doors: tuple[Door, ...] = ()  # [[doors]]: extra TCP front doors
    admin_addresses: AddressRule = AddressRule()  # [admin] allow / deny
    admin_auth: BasicAuth | None = None  # [admin] basic_auth
    discovery: Discovery | None = None  # [discovery]: routes from podman container labels
    ssh_addresses: AddressRule = AddressRule()  # [ssh] allow / deny
    ssh_conn_limit: Rate | None = None  # [ssh] conn_limit
    storage: StorageConfig | None = None  # [storage]: None keeps ACME state in state_dir
    # [edge] errors_dir: status -> the page edge answers with for it (its own errors, intercepted ones)
    error_pages: Mapping[int, bytes] = field(default_factory=dict)


