# -*- test-case-name: tests.e2e.test_transports, tests.e2e.test_fastpath_off -*-
"""Twisted's TCP transports, with less system-call work per connection.

A proxy closes two sockets per forwarded connection.  Twisted's
``loseConnection`` stops reading, registers the socket for writing, waits a
reactor turn to find its buffer empty, unregisters it, then calls
``shutdown(2)`` and ``close``: three ``epoll_ctl`` calls, a ``shutdown``
that mostly fails (the peer has already closed) and a loop turn per socket.
:class:`QuickClose` closes at once when nothing is left to write, with one
``epoll_ctl`` and a plain ``close`` (the process holds no other copy of the
descriptor, so ``close`` sends the FIN; Twisted's own comment calls the
``shutdown`` unnecessary).  With data still queued it behaves exactly as
Twisted does, so nothing written is lost.

:class:`AcceptedTransport` is the transport edge's listening ports build for
each client: Twisted's ``tcp.Server`` with that close, a lingering close
(:class:`edge.net.closing.Linger`) and without the log prefix strings it
formats for every connection.  Every close is bounded by a
:class:`edge.net.closing.CloseWatch`.

What reads Twisted's internals (the write buffer, the socket close, the
constructors' copies) lives in :mod:`edge.net.fastpath`, checked at import
and switchable (``EDGE_FASTPATH``); this module names it for its users.
"""

from __future__ import annotations

from typing import Any

from twisted.protocols.tls import TLSMemoryBIOProtocol

from edge.net.closing import (CLOSE_STALL, LINGER, LINGER_TIME, CloseWatch, Linger, keep_lingering, queued_output,
                              unread_bytes)
from edge.net.fastpath import WRITE_BUFFER, AcceptedTransport, QuickClose, accept_with, pending_bytes

# Whether queued_for_peer() knows the bytes a transport holds; without it (Twisted's public path only) it says 0
# and a caller that must bound what a client leaves unread watches Twisted's producer calls instead.
QUEUE_KNOWN = WRITE_BUFFER

__all__ = ["CLOSE_STALL", "LINGER", "LINGER_TIME", "keep_lingering", "queued_output", "QUEUE_KNOWN",
           "AcceptedTransport", "CloseWatch", "Linger", "QuickClose", "pending_bytes",
           "queued_for_peer", "under_tls", "unread_bytes", "use_for"]


def queued_for_peer(transport: Any) -> int:
    """Bytes written to ``transport`` that its peer has not taken yet, as far as they can be known.

    Edge's own transports (and its TLS layer) answer this themselves
    (``transport.queued_for_peer()``); this walks down the ``transport``
    chain of any other, asking each layer that can answer.
    """
    own = getattr(transport, "queued_for_peer", None)
    if own is not None:
        return own()
    total = 0
    while transport is not None:
        own = getattr(transport, "queued_for_peer", None)
        if own is not None:
            return total + own()
        total += pending_bytes(transport)  # a Twisted TCP transport not of edge's classes (0 for anything else)
        transport = getattr(transport, "transport", None)
    return total


def under_tls(transport: Any, protocol: Any) -> None:
    """``protocol`` is about to run on ``transport``: if it is a TLS layer, close the Twisted way."""
    if isinstance(protocol, TLSMemoryBIOProtocol) and isinstance(transport, QuickClose):
        transport.close_at_once = False


def use_for(port: Any) -> None:
    """Make the listening ``port`` build :class:`AcceptedTransport` (TCP ports only)."""
    accept_with(port)
