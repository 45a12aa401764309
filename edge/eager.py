"""Writing to a TCP socket at once when nothing is queued before it.

Twisted's ``transport.write`` only queues: the bytes go out on the next
reactor turn, after two ``epoll_ctl`` calls that register and unregister
the socket for writing.  For a proxy answering thousands of small requests
a second that is most of the cost of a write.  :func:`write_now` sends
directly when the transport's queue is empty and hands Twisted only what
the kernel did not take, so ordering, back-pressure and error handling
stay Twisted's.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp

from edge.outgoing import BackendTransport
from edge.transports import AcceptedTransport

PLAIN_TCP = frozenset((tcp.Server, tcp.Client, AcceptedTransport, BackendTransport))  # not TLS wrappers


def write_now(transport: Any, data: bytes) -> None:
    """``transport.write(data)``, but sent in this turn when the socket can take it."""
    if type(transport) not in PLAIN_TCP or transport._tempDataLen \
            or len(transport.dataBuffer) != transport.offset or not transport.connected or transport.disconnecting:
        transport.write(data)
        return
    try:
        sent = transport.socket.send(data)
    except BlockingIOError:
        sent = 0
    except OSError:
        transport.write(data)  # Twisted's own write path notices the error and closes
        return
    if sent < len(data):
        transport.write(data[sent:])
