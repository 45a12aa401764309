# -*- test-case-name: tests.unit.http.test_transform, tests.e2e.test_transform_e2e -*-
"""A route's header rules as values: what the config snapshot holds and the HTTP layer applies
(:mod:`edge.http.transform`).  Below both, so the config does not import the HTTP package."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

Fields = list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class HeaderRules:
    """``set`` replaces (or adds) fields, ``remove`` drops them; names lower-case."""

    set: tuple[tuple[bytes, bytes], ...] = ()
    remove: frozenset[bytes] = field(default_factory=frozenset)

    def __bool__(self) -> bool:
        return bool(self.set or self.remove)

    @property
    def gone(self) -> frozenset[bytes]:
        """The names whose fields a message loses: removed, or replaced by a ``set`` one."""
        return self.remove | {name for name, _ in self.set}

    def apply(self, fields: Iterable[tuple[bytes, bytes]]) -> Fields:
        gone = self.gone
        return [(n, v) for n, v in fields if n not in gone] + list(self.set)


def hsts_value(seconds: int, subdomains: bool = False, preload: bool = False) -> bytes:
    """The Strict-Transport-Security value (RFC 6797)."""
    value = f"max-age={seconds}" + ("; includeSubDomains" if subdomains else "") + ("; preload" if preload else "")
    return value.encode("ascii")
