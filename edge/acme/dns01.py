# -*- test-case-name: tests.unit.acme.test_dns01, tests.e2e.test_dns01 -*-
"""DNS-01 decisions without I/O: which record to write, where a CNAME chain ends, when it has propagated.

The providers (``dns_providers``) and the issuing thread do the talking;
this module only decides, so it is tested with plain values: the record
name of an identifier, the end of a CNAME chain given a lookup function,
and a :class:`Propagation` that is fed what each authoritative server
answered and says whether every one of them serves every value yet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol

MAX_CNAMES = 8  # a longer chain is a loop or a mistake


class DnsProblem(Exception):
    """One log line: the provider, the record and what the DNS server (or hook) answered.

    ``definite`` is true when the server refused outright (nothing was written),
    so no removal needs to be remembered for the record.
    """

    def __init__(self, message: str, definite: bool = False) -> None:
        super().__init__(message)
        self.definite = definite


@dataclass(frozen=True)
class Record:
    """One TXT value to publish for an identifier: ``name`` is ``_acme-challenge.<domain>``; ``target``
    the end of its CNAME chain, where the value is written."""

    domain: str
    name: str
    target: str
    value: str


class DnsProvider(Protocol):
    """Writes and removes challenge TXT records (blocking; called in the ACME worker thread)."""

    name: str

    def present(self, record: Record) -> str:
        """Publish ``record.value``; return the name it was written at (where propagation is checked)."""

    def cleanup(self, record: Record) -> None:
        """Remove that one value again (other values at the same name stay)."""

    def servers(self, name: str) -> tuple[tuple[str, int], ...]:
        """The authoritative servers to ask whether ``name`` carries the value (``resolvers`` if set)."""


def challenge_name(identifier: str) -> str:
    """``_acme-challenge.<domain>``: ``*.x.test`` and ``x.test`` share ``_acme-challenge.x.test`` (RFC 8555 8.4)."""
    domain = identifier[2:] if identifier.startswith("*.") else identifier
    return "_acme-challenge." + domain.rstrip(".").lower()


def follow_cnames(name: str, cname_of: Callable[[str], str | None]) -> str:
    """Where a CNAME chain starting at ``name`` ends: the name to write the TXT record at.

    ``cname_of(n)`` is the target of ``n``'s CNAME or None.  A loop or a chain
    longer than MAX_CNAMES is a DnsProblem (the CA would fail on it too).
    """
    seen = [name]
    current = name
    while (target := cname_of(current)) is not None:
        target = target.rstrip(".").lower()
        if target in seen or len(seen) > MAX_CNAMES:
            raise DnsProblem(f"CNAME chain from {name} loops or is too long: {' -> '.join(seen + [target])}",
                             definite=True)
        seen.append(target)
        current = target
    return current


@dataclass
class Propagation:
    """Which (server, name) pairs still lack which values; fed answers, asked whether all are there.

    ``expected`` maps each name to the values that must all be in its TXT set
    (a wildcard and its apex put two values at one name); ``servers`` maps it to
    the authoritative servers that must all answer so.
    """

    expected: dict[str, set[str]]
    servers: dict[str, tuple[tuple[str, int], ...]]
    last: dict[tuple[tuple[str, int], str], str] = field(default_factory=dict)  # what each said, for the log
    seen: set[tuple[tuple[str, int], str]] = field(default_factory=set)

    def waiting(self) -> list[tuple[tuple[str, int], str]]:
        """The (server, name) pairs that did not yet answer with every value."""
        return [(server, name) for name in self.expected for server in self.servers[name]
                if (server, name) not in self.seen]

    def answer(self, server: tuple[str, int], name: str, values: Iterable[str] | None, said: str = "") -> None:
        """``server`` answered ``values`` for ``name`` (None: no answer, ``said`` tells what happened)."""
        got = set(values or ())
        if self.expected[name] <= got:
            self.seen.add((server, name))
        else:
            missing = len(self.expected[name] - got)
            self.last[server, name] = said or (f"{missing} of {len(self.expected[name])} values missing"
                                               if got else "no TXT record")

    @property
    def done(self) -> bool:
        return not self.waiting()

    def describe(self) -> str:
        """The servers still waited for and what they last said: for the log."""
        return "; ".join(f"TXT {name} at {host}:{port}: {self.last.get(((host, port), name), 'not asked yet')}"
                         for (host, port), name in self.waiting())


class _Route(Protocol):
    @property
    def hosts(self) -> tuple[str, ...]: ...
    @property
    def terminated(self) -> bool: ...
    @property
    def acme_challenge(self) -> str | None: ...


def plan_certificates(routes: Iterable[_Route], challenge: str, dns: bool,
                      covered: Callable[[str], object | None]) -> dict[str, list[tuple[str, str]]]:
    """The ACME certificates to keep: {certificate name: [(identifier, challenge), ...]}.

    Each terminated exact host that nothing static ``covered`` gets its own
    certificate, proved with its route's ``acme_challenge`` or ``challenge``.
    With a DNS provider (``dns``), each ``*.suffix`` host gets one certificate
    for ``*.suffix`` through dns-01, and the apex ``suffix`` joins it when a
    route names it (one certificate, one order, both values at one TXT name).
    """
    wanted: dict[str, str] = {}
    for route in routes:
        if route.terminated:
            for host in route.hosts:
                if host != "*" and (dns or not host.startswith("*")) and covered(host) is None:
                    wanted.setdefault(host, route.acme_challenge or challenge)
    plan: dict[str, list[tuple[str, str]]] = {}
    for host, chosen in wanted.items():
        if host.startswith("*."):
            plan[host] = [(host, "dns-01")]
            if host[2:] in wanted:
                plan[host].append((host[2:], wanted[host[2:]]))
        elif "*." + host not in wanted:
            plan[host] = [(host, chosen)]
    return plan
