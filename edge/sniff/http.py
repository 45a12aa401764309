# -*- test-case-name: tests.unit.sniff.test_http, tests.e2e.test_redirect -*-
"""Recognise plain HTTP among the first bytes on 443: a known method and a space.

Only the sniffer lives here; reading requests is :mod:`edge.http.h1`'s.
"""

from __future__ import annotations

from edge.sniff import NEED_MORE, NO_MATCH, Verdict

METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE", b"CONNECT")
_LONGEST_METHOD = max(len(m) for m in METHODS) + 1


def sniff_http(data: bytes) -> bool | Verdict:
    """True if ``data`` starts with an HTTP method and a space."""
    space = data.find(b" ", 0, _LONGEST_METHOD)
    if space >= 0:
        return True if data[:space] in METHODS else NO_MATCH
    if len(data) < _LONGEST_METHOD and any(m.startswith(data) for m in METHODS):
        return NEED_MORE
    return NO_MATCH
