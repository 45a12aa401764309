"""A deliberately slow HTTP download through the edge, watching the edge's memory."""

from __future__ import annotations

import hashlib
import socket
import ssl
import time

from tests.support.procs import rss_kib


def slow_download(port: int, host: str, cafile: str, path: str, size: int, edge_pid: int) -> tuple[int, str, float]:
    """GET ``path`` over TLS, stall 3 s, then read slowly; return (bytes, sha256, peak RSS growth in MiB)."""
    baseline = peak = rss_kib(edge_pid)
    context = ssl.create_default_context(cafile=cafile)
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    digest, received = hashlib.sha256(), 0
    with context.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += tls.recv(1)
        assert head.startswith(b"HTTP/1.1 200"), head
        for _ in range(6):  # the reader stalls: the origin keeps sending, the edge must not buffer it
            time.sleep(0.5)
            peak = max(peak, rss_kib(edge_pid))
        next_sample = 0
        while received < size:
            chunk = tls.recv(256 * 1024)
            if not chunk:
                break
            digest.update(chunk)
            received += len(chunk)
            if received >= next_sample:
                peak = max(peak, rss_kib(edge_pid))
                next_sample += 8 * 1024 * 1024
                time.sleep(0.02)  # still a slow reader
    return received, digest.hexdigest(), (peak - baseline) / 1024
