# -*- test-case-name: tests.unit.sniff.test_http, tests.e2e.test_ssh -*-
"""Recognise an SSH identification string (RFC 4253 section 4.2)."""

from __future__ import annotations

from edge.sniff import NEED_MORE, NO_MATCH, Verdict

_PREFIX = b"SSH-"


def sniff_ssh(data: bytes) -> bool | Verdict:
    """True for an SSH client's first bytes, else NEED_MORE or NO_MATCH."""
    if data.startswith(_PREFIX):
        return True
    if _PREFIX.startswith(data):
        return NEED_MORE
    return NO_MATCH
