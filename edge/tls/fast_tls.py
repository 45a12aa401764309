# -*- test-case-name: tests.unit.net.test_fastpath, tests.e2e.test_fastpath_off -*-
"""Every use edge makes of pyOpenSSL's and Twisted's TLS internals: each probed at import, each switchable.

Twisted's ``TLSMemoryBIOProtocol`` learns that a memory BIO is empty by
asking it and catching ``WantReadError`` (two failed pyOpenSSL calls, each
allocating a 32 KiB buffer and raising, per request on a kept-alive
connection), queues its TLS records for the next reactor turn, and after
sending ``close_notify`` waits for the peer's for as long as the peer
likes.  :class:`FastTLSProtocol` does less, through internals no release
promises, so each piece is a fast path of :mod:`edge.net.fastpath`'s kind:
probed at import (one warning naming what is missing, then Twisted's own
code runs), and switched off by ``EDGE_FASTPATH=off`` or
``EDGE_FASTPATH=off:name,...``:

``tls_io``
    the steady state inline: received bytes go straight to OpenSSL, a small write goes out as one
    record in this turn (:func:`edge.net.fastpath.write_now`), the receive loop stops once nothing
    more is held; overrides ``_flushSendBIO`` and ``_flushReceiveBIO``.
``tls_bio_size``
    asks a memory BIO how many bytes it holds (``OpenSSL.SSL._lib.BIO_get_mem_data`` on
    ``Connection._from_ssl``/``_into_ssl``) instead of reading and catching ``WantReadError``.
``tls_close``
    the socket closes once ``close_notify`` is out (as HAProxy and nginx do; TLS 1.2 and 1.3 allow it),
    by overriding ``_shutdownTLS``; off, Twisted waits for the peer's ``close_notify``, which
    :class:`edge.tls.terminate.EdgeTLSProtocol` bounds by aborting after its grace.
``tls_queue``
    counts the application bytes queued behind a handshake (``_appSendBuffer``), for the pipelining
    bound and close watches; off, they count as unknown (0).

The counts of bytes in and out go to ``self.info`` (an ``edge.connection.ConnectionInfo``): in, as they
arrive; out, as the TLS records are written to the socket's transport (by ``_flushSendBIO`` with
``tls_io``, through :class:`CountingTransport` without it), so the access log is the same either way.
"""

from __future__ import annotations

import inspect
from typing import Any

from OpenSSL import SSL
from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet.abstract import FileDescriptor
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

from edge.net.fastpath import decide, has, takes, write_now

_TLS = TLSMemoryBIOProtocol


def _assigned_in_make_connection(*names: str) -> list[str]:
    """The ``names`` that ``TLSMemoryBIOProtocol.makeConnection`` does not set on the instance."""
    try:
        source = inspect.getsource(_TLS.makeConnection)
    except (OSError, TypeError):
        return [f"TLSMemoryBIOProtocol.makeConnection (source unavailable to check {', '.join(names)})"]
    return [f"TLSMemoryBIOProtocol.{n}" for n in names if f"self.{n} =" not in source]


def _probe_io() -> list[str]:
    return (has(_TLS, "_handshakeDone", "_lostTLSConnection", "_aborted", kind=bool)
            + _assigned_in_make_connection("_tlsConnection", "_appSendBuffer")
            + takes(getattr(_TLS, "_flushSendBIO", None), "TLSMemoryBIOProtocol._flushSendBIO", ("self",))
            + takes(getattr(_TLS, "_flushReceiveBIO", None), "TLSMemoryBIOProtocol._flushReceiveBIO", ("self",))
            + takes(getattr(_TLS, "_bufferedWrite", None), "TLSMemoryBIOProtocol._bufferedWrite", ("self", "octets"))
            + takes(getattr(_TLS, "_tlsShutdownFinished", None), "TLSMemoryBIOProtocol._tlsShutdownFinished",
                    ("self", "reason"))
            + takes(getattr(_TLS, "_shutdownTLS", None), "TLSMemoryBIOProtocol._shutdownTLS", ("self",)))


def _probe_bio_size() -> list[str]:
    try:
        from OpenSSL.SSL import _ffi, _lib
    except ImportError:
        return ["OpenSSL.SSL._ffi", "OpenSSL.SSL._lib"]
    missing = [] if callable(getattr(_lib, "BIO_get_mem_data", None)) else ["OpenSSL.SSL._lib.BIO_get_mem_data"]
    connection = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)  # a memory-BIO connection, as Twisted makes
    missing += [f"OpenSSL.SSL.Connection.{n}" for n in ("_from_ssl", "_into_ssl")
                if getattr(connection, n, None) is None]
    return missing + has(_ffi, "NULL")


TLS_IO = decide("tls_io", _probe_io)
TLS_BIO_SIZE = decide("tls_bio_size", _probe_bio_size)
TLS_CLOSE = decide("tls_close", lambda: takes(getattr(_TLS, "_shutdownTLS", None), "TLSMemoryBIOProtocol._shutdownTLS",
                                              ("self",)))
TLS_QUEUE = decide("tls_queue", lambda: _assigned_in_make_connection("_appSendBuffer"))

if TLS_BIO_SIZE:
    from OpenSSL.SSL import _ffi, _lib

    _MEM_DATA: Any = _lib.BIO_get_mem_data
    _NULL: Any = _ffi.NULL

    def held(connection: Any, bio_name: str) -> int:
        """Bytes waiting in one of ``connection``'s memory BIOs (``_from_ssl``, ``_into_ssl``); -1 if unknown."""
        bio = getattr(connection, bio_name, None)
        return -1 if bio is None else _MEM_DATA(bio, _NULL)
else:
    def held(connection: Any, bio_name: str) -> int:
        """Bytes waiting in a memory BIO: unknown (-1) without the ``tls_bio_size`` fast path."""
        return -1


class CountingTransport:
    """The transport below a TLS layer, counting into ``info.bytes_out`` what the layer writes to it.

    Without ``tls_io``, Twisted's own ``_flushSendBIO`` writes the records; this counts them on the
    public side, the transport's ``write``.  Everything else is the transport's own (and so are the
    interfaces it provides)."""

    def __init__(self, below: Any, info: Any) -> None:
        self._below = below
        self._info = info
        directlyProvides(self, providedBy(below))

    def write(self, data: bytes) -> None:
        self._info.bytes_out += len(data)
        self._below.write(data)

    def writeSequence(self, data: Any) -> None:
        data = list(data)
        self._info.bytes_out += sum(map(len, data))
        self._below.writeSequence(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._below, name)


class FastTLSProtocol(TLSMemoryBIOProtocol):
    """Twisted's TLS protocol with the fast paths above; counts bytes into ``self.info``."""

    info: Any  # an edge.ops.access_log.ConnectionInfo: bytes_in, bytes_out

    if TLS_IO:
        def dataReceived(self, data: bytes) -> None:
            self.info.bytes_in += len(data)
            if self._handshakeDone and not self._appSendBuffer:  # the steady state: Twisted's steps, inline
                self._tlsConnection.bio_write(data)
                self._flushReceiveBIO()
                return
            super().dataReceived(data)
    else:
        def dataReceived(self, data: bytes) -> None:
            self.info.bytes_in += len(data)
            super().dataReceived(data)

        def makeConnection(self, transport: Any) -> None:
            super().makeConnection(CountingTransport(transport, self.info))

    def queued_tls(self) -> int:
        """Application bytes written and queued behind the handshake (0 when that cannot be known)."""
        waiting = getattr(self, "_appSendBuffer", None) if TLS_QUEUE else None
        return sum(map(len, waiting)) if waiting else 0

    if TLS_IO:
        def write(self, data: bytes) -> None:
            # One record's worth with nothing queued before it (a response head, a small body): straight to
            # OpenSSL and out.  A memory BIO never makes SSL_write wait, so this is Twisted's _write minus its loop.
            if self._handshakeDone and not self.disconnecting and not self._appSendBuffer \
                    and not self._lostTLSConnection and len(data) <= 16384 and type(data) is bytes and data:
                try:
                    self._tlsConnection.send(data)
                except WantReadError:
                    self._bufferedWrite(data)
                    return
                except Error:
                    self._tlsShutdownFinished(Failure())
                    return
                self._flushSendBIO()
                return
            super().write(data)

        def _flushSendBIO(self) -> None:
            # As Twisted's, but the TLS records go out in this reactor turn (edge.net.eager), and are counted.
            connection = self._tlsConnection
            pending = held(connection, "_from_ssl")
            if pending == 0:
                return
            try:
                data = connection.bio_read(pending if pending > 0 else 2**15)
            except WantReadError:
                return
            self.info.bytes_out += len(data)
            write_now(self.transport, data)

        def _flushReceiveBIO(self) -> None:
            # Twisted's loop, except that it stops once OpenSSL and its input BIO hold nothing more,
            # rather than after a last recv that can only raise WantReadError.
            connection = self._tlsConnection
            while not self._lostTLSConnection:
                try:
                    data = connection.recv(2**15)
                except WantReadError:
                    break
                except ZeroReturnError:  # the client's close_notify
                    self._shutdownTLS()
                    self._tlsShutdownFinished(None)
                except Error:
                    self._tlsShutdownFinished(Failure())
                else:
                    if not self._aborted:  # ProtocolWrapper.dataReceived, inline
                        self.wrappedProtocol.dataReceived(data)
                    if connection is self._tlsConnection and not connection.pending() \
                            and held(connection, "_into_ssl") == 0:
                        break
            self._flushSendBIO()

    if TLS_CLOSE:
        def _shutdownTLS(self) -> None:
            super()._shutdownTLS()
            transport = self.transport  # a TCP connection (a FileDescriptor), or gone
            if transport is not None and not (isinstance(transport, FileDescriptor) and transport.disconnecting):
                transport.loseConnection()  # close_notify is on its way: the peer's is not awaited
