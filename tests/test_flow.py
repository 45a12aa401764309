"""Back-pressure: a slow reader must not make the edge buffer the other side."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import time

from tests.support.procs import free_port, rss_kib, wait_listening
from tests.support.servers import Nginx

SIZE = 200 * 1024 * 1024


def test_200_mb_to_a_slow_reader_keeps_edge_memory_flat(edge, start, ca, tmp_path):
    cert, key, _ = ca.issue("bulk.example.test")
    files = tmp_path / "files"
    files.mkdir()
    blob = files / "blob"
    block = os.urandom(1024 * 1024)
    with open(blob, "wb") as f:
        for _ in range(SIZE // len(block)):
            f.write(block)
    expected = hashlib.sha256(blob.read_bytes()).hexdigest()
    port = free_port()
    origin = start(Nginx, tmp_path, f"""
        server {{
          listen 127.0.0.1:{port} ssl;
          ssl_certificate {cert};
          ssl_certificate_key {key};
          root {files};
        }}
        """)
    wait_listening(port, proc=origin.proc)
    e = edge(f"""
    [backends.bulk]
    servers = ["127.0.0.1:{port}"]
    [[routes]]
    hosts = ["bulk.example.test"]
    tls = "passthrough"
    backend = "bulk"
    """)
    baseline = rss_kib(e.pid)
    context = ssl.create_default_context(cafile=str(ca.ca_pem))
    raw = socket.create_connection(("127.0.0.1", e.https_port), timeout=30)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    digest, received, peak = hashlib.sha256(), 0, baseline
    with context.wrap_socket(raw, server_hostname="bulk.example.test") as tls:
        tls.sendall(b"GET /blob HTTP/1.1\r\nHost: bulk.example.test\r\nConnection: close\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += tls.recv(1)
        assert head.startswith(b"HTTP/1.1 200")
        for pause in range(6):  # the reader stalls: the origin keeps sending, the edge must not buffer it
            time.sleep(0.5)
            peak = max(peak, rss_kib(e.pid))
        next_sample = 0
        while received < SIZE:
            chunk = tls.recv(256 * 1024)
            if not chunk:
                break
            digest.update(chunk)
            received += len(chunk)
            if received >= next_sample:
                peak = max(peak, rss_kib(e.pid))
                next_sample += 8 * 1024 * 1024
                time.sleep(0.02)  # still a slow reader
    assert received == SIZE
    assert digest.hexdigest() == expected
    growth_mib = (peak - baseline) / 1024
    assert growth_mib < 24, f"edge RSS grew by {growth_mib:.1f} MiB while forwarding 200 MiB"
    e.assert_alive()
