# -*- test-case-name: tests.unit.http.test_forwarded, tests.e2e.test_http1_proxy, tests.e2e.test_h2_server -*-
"""The forwarding headers edge adds to every request it relays (one builder for HTTP/1.1 and HTTP/2 clients).

``X-Forwarded-For``, ``X-Forwarded-Proto``, ``X-Forwarded-Host`` and
``Forwarded`` (RFC 7239): the values a client sent come first (the chain
of proxies before edge), then edge's own element for the client it saw.
The proto and host headers are edge's alone: a client's are dropped, since
only edge knows how the request arrived.
"""

from __future__ import annotations

from typing import Iterable

# The request headers edge replaces with its own (the client's values of the first and last are kept as earlier hops).
FORWARDING_FIELDS = frozenset((b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"))


def forwarded_fields(client: str, scheme: str, host: bytes, prior_for: Iterable[bytes] = (),
                     prior_forwarded: Iterable[bytes] = ()) -> list[tuple[bytes, bytes]]:
    """The four forwarding headers as (lower-case name, value) for a request from ``client`` (an IP
    address) for ``host`` (its Host or :authority, as sent) that arrived over ``scheme``."""
    address = client.encode("latin-1")
    node = b'"[%s]"' % address if address.find(b":") >= 0 else address
    proto = scheme.encode("ascii")
    chain_for = list(prior_for)
    chain_for.append(address)
    chain = list(prior_forwarded)
    chain.append(b'for=%s;host="%s";proto=%s' % (node, host, proto))
    return [(b"x-forwarded-for", b", ".join(chain_for)), (b"x-forwarded-proto", proto),
            (b"x-forwarded-host", host), (b"forwarded", b", ".join(chain))]


def forwarded_block(client: str, scheme: str, host: bytes, prior_for: Iterable[bytes] = (),
                    prior_forwarded: Iterable[bytes] = ()) -> bytes:
    """The same headers as HTTP/1.1 header lines, each starting with CRLF."""
    return b"".join(b"\r\n%s: %s" % field
                    for field in forwarded_fields(client, scheme, host, prior_for, prior_forwarded))
