"""A TCP relay, in the test process, that waits for its target to listen.

pebble validates at fixed ports; pointed at an edge that is not started
yet, its first validation would fail at once.  Through this relay a
connection waits (bounded) until the target accepts, then bytes flow both ways.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time

from tests.support.procs import free_port


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.server.relayed += 1
        deadline = time.monotonic() + 20
        while True:
            try:
                upstream = socket.create_connection(("127.0.0.1", self.server.target), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.05)
        with upstream:
            def pump(source: socket.socket, sink: socket.socket) -> None:
                try:
                    while data := source.recv(65536):
                        sink.sendall(data)
                except OSError:
                    pass
                try:
                    sink.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

            back = threading.Thread(target=pump, args=(upstream, self.request), daemon=True)
            back.start()
            pump(self.request, upstream)
            back.join(30)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class PatientRelay:
    """Listens on ``port`` (a free one), relays to 127.0.0.1:``target``; ``stop()`` closes it."""

    def __init__(self, target: int) -> None:
        self.port = free_port()
        self.server = _Server(("127.0.0.1", self.port), _Handler)
        self.server.target = target
        self.server.relayed = 0
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def relayed(self) -> int:
        """Connections accepted so far."""
        return self.server.relayed

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
