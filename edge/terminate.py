"""TLS termination at the dispatcher's hand-over point.

The dispatcher already has the ClientHello and its SNI; it picks the
certificate, builds a TLS server protocol around an HTTP channel, and
replays the buffered hello into it.  A name with no certificate gets a
fatal ``unrecognized_name`` alert rather than somebody else's certificate.
"""

from __future__ import annotations

from typing import Any

from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure

from edge.connection import ConnectionInfo

# A TLS record: alert (21), version 3.3, length 2, level fatal (2), unrecognized_name (112).
UNRECOGNIZED_NAME_ALERT = b"\x15\x03\x03\x00\x02\x02\x70"


class EdgeTLSProtocol(TLSMemoryBIOProtocol):
    """A TLS server connection that logs its access-log line when it ends."""

    def __init__(self, factory: Any, wrapped: Any, info: ConnectionInfo) -> None:
        super().__init__(factory, wrapped)
        self.info = info

    def dataReceived(self, data: bytes) -> None:
        self.info.bytes_in += len(data)
        super().dataReceived(data)

    def connectionLost(self, reason: Failure) -> None:
        try:
            super().connectionLost(reason)
        finally:
            self.info.finish(self.info.ended or "closed")

    def switch(self, protocol: Any, data: bytes) -> None:
        """Give the decrypted stream to ``protocol`` (a WebSocket tunnel)."""
        self.wrappedProtocol = protocol
        protocol.makeConnection(self)
        if data:
            protocol.dataReceived(data)
