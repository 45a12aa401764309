# -*- test-case-name: tests.unit.net.test_fastpath -*-
"""The ``EDGE_FASTPATH`` switch, read without Twisted (the sans-IO HTTP/2 codec's fast path reads it too)."""

from __future__ import annotations

from typing import Mapping


def parse_switch(environ: Mapping[str, str]) -> tuple[bool, frozenset[str]]:
    """(every fast path off?, the names switched off) from ``EDGE_FASTPATH`` / ``EDGE_FAST_PATHS``."""
    if environ.get("EDGE_FAST_PATHS", "1").strip() == "0":
        return True, frozenset()
    value = environ.get("EDGE_FASTPATH", "").strip().lower()
    if value in ("off", "0", "none"):
        return True, frozenset()
    if value.startswith("off:"):
        return False, frozenset(name.strip() for name in value[4:].split(",") if name.strip())
    return False, frozenset()
