# -*- test-case-name: tests.e2e.test_socket_activation, tests.e2e.test_doors -*-
"""Listening sockets for the front doors.

The edge makes its own listening socket so it can set what Twisted's
``listenTCP`` does not: ``IPV6_V6ONLY`` (so ``[::]:443`` and
``0.0.0.0:443`` can both be bound, as the default config does),
``SO_REUSEADDR`` and ``TCP_NODELAY`` (which accepted sockets inherit); the
socket is then adopted by the reactor.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import Logger

from edge.net import transports
from edge.config.addresses import ListenAddress, SystemdAddress
from edge.net.fastpath import systemd_descriptors

log = Logger()


def systemd_socket(address: SystemdAddress) -> socket.socket:
    """The listening socket systemd passed for ``address`` (socket activation)."""
    fds = systemd_descriptors()
    named = fds.inheritedNamedDescriptors()
    if not address.name.isdigit() and address.name in named:
        fd = named[address.name]
    elif address.name.isdigit() and int(address.name) < len(fds.inheritedDescriptors()):
        fd = fds.inheritedDescriptors()[int(address.name)]
    else:
        raise OSError(f"systemd passed no socket named {address.name!r} (LISTEN_FDNAMES={sorted(named)})")
    sock = socket.socket(fileno=os.dup(fd))
    sock.setblocking(False)
    _no_delay(sock)
    return sock


def _no_delay(sock: socket.socket) -> None:
    """Send small writes at once (no Nagle), as HAProxy and nginx do; accepted sockets inherit it."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass  # not a TCP socket (a systemd socket unit may pass anything)


def bind(address: ListenAddress, backlog: int = 1024, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket on ``address`` (resolving a host name once)."""
    if isinstance(address, SystemdAddress):
        return systemd_socket(address)
    family = socket.AF_INET6 if address.family6 else socket.AF_INET
    infos = socket.getaddrinfo(address.host, address.port, family if address.family6 else 0, socket.SOCK_STREAM)
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        _no_delay(sock)
        if reuse_port:  # [edge] workers > 1: every worker binds the same port, the kernel spreads connections
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class ListenerService(Service):
    """Listens on one address for one front door while running."""

    def __init__(self, reactor: Any, door: str, address: ListenAddress, factory: IProtocolFactory,
                 reuse_port: bool = False) -> None:
        """Bind at once, so a port in use fails start-up before the reactor runs."""
        self.reuse_port = reuse_port
        self.reactor = reactor
        self.door = door
        self.address = address
        self.factory = factory
        self.port: IListeningPort | None = None
        self.socket: socket.socket | None = bind(address, reuse_port=reuse_port)
        self.setName(f"{door}:{address}")

    def close_socket(self) -> None:
        """Release a socket bound but never started (start-up failed)."""
        if self.socket is not None:
            self.socket.close()
            self.socket = None

    def startService(self) -> None:
        sock, self.socket = self.socket, None
        if sock is None:
            sock = bind(self.address, reuse_port=self.reuse_port)
        try:
            self.port = self.reactor.adoptStreamPort(sock.fileno(), sock.family, self.factory)
        finally:
            sock.close()  # the reactor holds its own duplicate
        transports.use_for(self.port)
        host = self.port.getHost()
        port = host.port if isinstance(host, (IPv4Address, IPv6Address)) else host  # systemd may pass a UNIX socket
        log.info("listening for {door} on {address} (port {port})", door=self.door, address=str(self.address),
                 port=port)
        super().startService()

    def stopService(self):
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
