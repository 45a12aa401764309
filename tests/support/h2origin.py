"""An HTTP/2 origin (h2c with prior knowledge) on the ``h2`` library, in threads of the test process.

It answers by path and records what it saw, so that tests can check what
edge sent (headers, byte-exact bodies) and what it did to a stream (reset):

- ``/echo``: after the request's end, ``<length> <sha256>`` of its body, no Content-Length;
- ``/trailers``: ``hello`` then trailer fields (``x-checksum``, ``grpc-status``), no Content-Length;
- ``/reset``: a response head and 100 KB, then RST_STREAM (INTERNAL_ERROR);
- ``/endless``: DATA as fast as the windows allow, until the client resets the stream;
- ``/silent``: no answer at all;
- ``/refuse``: RST_STREAM (INTERNAL_ERROR) before any response;
- ``/hold``: no answer, and request body bytes are never acknowledged (the stream's window stays closed);
- anything else: ``ok <path>`` with a Content-Length.
"""

from __future__ import annotations

import hashlib
import select
import socket
import threading
import time
from typing import Any, Callable, NamedTuple

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from h2.errors import ErrorCodes

WAIT = 20.0


class Seen(NamedTuple):
    """A request as the origin received it."""

    headers: list[tuple[bytes, bytes]]
    body: bytes
    trailers: list[tuple[bytes, bytes]] | None

    def header(self, name: bytes) -> bytes | None:
        return next((value for key, value in self.headers if key == name), None)


class H2Origin:
    """The origin: ``port``; ``requests`` and ``resets`` (stream ids the client reset) as they happen."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[Seen] = []
        self.resets: list[tuple[int, int]] = []  # (stream, error code)
        self.connections = 0
        self.received = 0  # request body bytes, all streams
        self.changed = threading.Condition()
        self.stopping = False
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopping:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self.changed:
                self.connections += 1
                self.sockets.append(sock)
                self.changed.notify_all()
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def wait_for(self, predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
        """Block until ``predicate()`` is true (it is checked on every change), or fail naming ``what``."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                result = predicate()
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"the origin never saw {what}")
                self.changed.wait(remaining)

    def _serve(self, sock: socket.socket) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        streams: dict[int, dict[str, Any]] = {}
        sending: dict[int, bytearray | None] = {}  # what each stream still has to send (None: endless)
        ending: dict[int, Any] = {}  # what ends each stream once its bytes are out: trailers, a reset, or None

        def pump() -> None:
            for stream in list(sending):
                rest = sending[stream]
                try:
                    while True:
                        room = min(conn.local_flow_control_window(stream), conn.max_outbound_frame_size)
                        if room <= 0:
                            break
                        if rest is None:
                            conn.send_data(stream, b"e" * room)
                            continue
                        if not rest:
                            break
                        piece = bytes(rest[:room])
                        del rest[:room]
                        conn.send_data(stream, piece)
                    if rest is not None and not rest:
                        del sending[stream]
                        end = ending.pop(stream, None)
                        if end == "reset":
                            conn.reset_stream(stream, ErrorCodes.INTERNAL_ERROR)
                        elif end:
                            conn.send_headers(stream, end, end_stream=True)
                        else:
                            conn.end_stream(stream)
                except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                    sending.pop(stream, None)

        def respond(stream: int, seen: Seen) -> None:
            path = seen.header(b":path") or b"/"
            if path.startswith(b"/echo"):
                conn.send_headers(stream, [(b":status", b"200"), (b"content-type", b"text/plain")])
                sending[stream] = bytearray(b"%d %s" % (len(seen.body), hashlib.sha256(seen.body).hexdigest().encode()))
            elif path.startswith(b"/trailers"):
                conn.send_headers(stream, [(b":status", b"200"), (b"content-type", b"text/plain"),
                                           (b"trailer", b"x-checksum, grpc-status")])
                sending[stream] = bytearray(b"hello")
                ending[stream] = [(b"x-checksum", b"5d41402a"), (b"grpc-status", b"0")]
            elif path.startswith(b"/reset"):
                conn.send_headers(stream, [(b":status", b"200"), (b"content-type", b"application/octet-stream")])
                sending[stream] = bytearray(b"r" * 100_000)
                ending[stream] = "reset"
            elif path.startswith(b"/silent"):
                pass
            elif path.startswith(b"/refuse"):
                conn.reset_stream(stream, ErrorCodes.INTERNAL_ERROR)
            elif path.startswith(b"/endless"):
                conn.send_headers(stream, [(b":status", b"200"), (b"content-type", b"application/octet-stream")])
                sending[stream] = None
            else:
                body = b"ok " + path
                head_only = seen.header(b":method") == b"HEAD"
                conn.send_headers(stream, [(b":status", b"200"), (b"content-type", b"text/plain"),
                                           (b"content-length", b"%d" % len(body))], end_stream=head_only)
                if not head_only:
                    sending[stream] = bytearray(body)

        try:
            while not self.stopping:
                readable, _, _ = select.select([sock], [], [], 0.5)
                if readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    for event in conn.receive_data(data):
                        kind = type(event)
                        if kind is h2.events.RequestReceived:
                            streams[event.stream_id] = {"headers": list(event.headers), "body": bytearray(),
                                                        "trailers": None}
                        elif kind is h2.events.DataReceived:
                            record = streams[event.stream_id]
                            record["body"] += event.data
                            with self.changed:
                                self.received += len(event.data)
                                self.changed.notify_all()
                            if (b":path", b"/hold") not in record["headers"]:
                                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                        elif kind is h2.events.TrailersReceived:
                            streams[event.stream_id]["trailers"] = list(event.headers)
                        elif kind is h2.events.StreamEnded:
                            record = streams.pop(event.stream_id)
                            seen = Seen(record["headers"], bytes(record["body"]), record["trailers"])
                            with self.changed:
                                self.requests.append(seen)
                                self.changed.notify_all()
                            respond(event.stream_id, seen)
                        elif kind is h2.events.StreamReset:
                            sending.pop(event.stream_id, None)
                            streams.pop(event.stream_id, None)
                            with self.changed:
                                self.resets.append((event.stream_id, event.error_code))
                                self.changed.notify_all()
                        elif kind is h2.events.ConnectionTerminated:
                            return
                pump()
                out = conn.data_to_send()
                if out:
                    sock.sendall(out)
        except (OSError, h2.exceptions.ProtocolError):
            return
        finally:
            sock.close()

    def stop(self) -> None:
        self.stopping = True
        self.listener.close()
        with self.changed:
            sockets = list(self.sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
