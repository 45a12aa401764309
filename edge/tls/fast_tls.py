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
``tls_direct``
    with ``tls_io`` and ``tls_bio_size``: the steady state's ``SSL_read``, ``SSL_write``, ``BIO_read``,
    ``BIO_write`` and ``SSL_pending`` called as pyOpenSSL's ``recv``, ``send``, ``bio_read``, ``bio_write``
    and ``pending`` call them, with its own error checks (``Connection._raise_ssl_error``,
    ``_handle_bio_errors``), minus a Python frame, an argument check and a buffer allocation each: about
    half of the Python calls a kept-alive request made in pyOpenSSL.  Reads go into one buffer kept for
    the reactor's thread, the only one that runs these protocols.

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

def _probe_direct() -> list[str]:
    from OpenSSL.SSL import _ffi, _lib  # tls_bio_size (required) found them

    missing = [f"OpenSSL.SSL._lib.{n}" for n in ("SSL_read", "SSL_write", "SSL_pending", "BIO_read", "BIO_write")
               if not callable(getattr(_lib, n, None))]
    missing += has(_ffi, "buffer", "new")
    missing += takes(getattr(SSL.Connection, "_raise_ssl_error", None), "OpenSSL.SSL.Connection._raise_ssl_error",
                     ("self", "ssl", "result"))
    missing += takes(getattr(SSL.Connection, "_handle_bio_errors", None),
                     "OpenSSL.SSL.Connection._handle_bio_errors", ("self", "bio", "result"))
    if missing:
        return missing
    # What the calls do, against pyOpenSSL's own methods: a client's first write starts its handshake
    # (WantReadError, the ClientHello in its output BIO); a server takes the ClientHello through its input BIO
    # and, having no certificate, fails on reading it, as it does through pyOpenSSL.
    context = SSL.Context(SSL.TLS_METHOD)
    outcomes = []
    for direct in (True, False):
        client = SSL.Connection(context, None)
        client.set_connect_state()
        server = SSL.Connection(context, None)
        server.set_accept_state()
        try:
            _ssl_send(client, b"x") if direct else client.send(b"x")
            sent: Any = "sent"
        except Exception as e:
            sent = type(e)
        pending = _mem_data(client._from_ssl)
        hello = _bio_read(client, pending) if direct else client.bio_read(pending)
        taken = _bio_write(server, hello) if direct else server.bio_write(hello)
        try:
            _ssl_recv(server) if direct else server.recv(2**15)
            read: Any = "read"
        except Exception as e:
            read = type(e)
        outcomes.append((sent, len(hello) > 0, taken == len(hello), read,
                         _pending(server._ssl) if direct else server.pending()))
    if outcomes[0] != outcomes[1] or outcomes[0][:3] != (WantReadError, True, True):
        return [f"OpenSSL.SSL direct calls (did {outcomes[0]}, pyOpenSSL {outcomes[1]})"]
    return []


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

if TLS_BIO_SIZE:
    _SSL_read: Any = _lib.SSL_read
    _SSL_write: Any = _lib.SSL_write
    _pending: Any = _lib.SSL_pending
    _BIO_read: Any = _lib.BIO_read
    _BIO_write: Any = _lib.BIO_write
    _buffer: Any = _ffi.buffer
    _READ = 2**15
    _READ_BUFFER: Any = _ffi.new("char[]", _READ)  # the reactor thread's: filled and copied out in one call

    def _mem_data(bio: Any) -> int:
        return _MEM_DATA(bio, _NULL)

    def _ssl_recv(connection: Any) -> bytes:
        """``connection.recv(2**15)``."""
        ssl = connection._ssl
        result = _SSL_read(ssl, _READ_BUFFER, _READ)
        connection._raise_ssl_error(ssl, result)
        return _buffer(_READ_BUFFER, result)[:]

    def _ssl_send(connection: Any, data: bytes) -> int:
        """``connection.send(data)`` for bytes of at most 2 GiB."""
        ssl = connection._ssl
        result = _SSL_write(ssl, data, len(data))
        connection._raise_ssl_error(ssl, result)
        return result

    def _bio_read(connection: Any, size: int) -> bytes:
        """``connection.bio_read(size)``."""
        if size > _READ:
            return connection.bio_read(size)
        bio = connection._from_ssl
        result = _BIO_read(bio, _READ_BUFFER, size)
        if result <= 0:
            connection._handle_bio_errors(bio, result)
        return _buffer(_READ_BUFFER, result)[:]

    def _bio_write(connection: Any, data: bytes) -> int:
        """``connection.bio_write(data)`` for bytes."""
        bio = connection._into_ssl
        result = _BIO_write(bio, data, len(data))
        if result <= 0:
            connection._handle_bio_errors(bio, result)
        return result

TLS_DIRECT = decide("tls_direct", _probe_direct, requires=("tls_io", "tls_bio_size"))


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
                if TLS_DIRECT:
                    _bio_write(self._tlsConnection, data)
                else:
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
                    if TLS_DIRECT:
                        _ssl_send(self._tlsConnection, data)
                    else:
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
            if TLS_DIRECT:
                pending = _MEM_DATA(connection._from_ssl, _NULL)
                if pending == 0:
                    return
                try:
                    data = _bio_read(connection, pending)
                except WantReadError:  # as below; a memory BIO that holds bytes gives them
                    return
            else:
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
                    data = _ssl_recv(connection) if TLS_DIRECT else connection.recv(2**15)
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
                    if connection is not self._tlsConnection:
                        continue
                    if TLS_DIRECT:
                        if not _pending(connection._ssl) and _MEM_DATA(connection._into_ssl, _NULL) == 0:
                            break
                    elif not connection.pending() and held(connection, "_into_ssl") == 0:
                        break
            self._flushSendBIO()

    if TLS_CLOSE:
        def _shutdownTLS(self) -> None:
            super()._shutdownTLS()
            transport = self.transport  # a TCP connection (a FileDescriptor), or gone
            if transport is not None and not (isinstance(transport, FileDescriptor) and transport.disconnecting):
                transport.loseConnection()  # close_notify is on its way: the peer's is not awaited
