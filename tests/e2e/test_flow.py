"""Back-pressure: a slow reader must not make the edge buffer the other side."""

from __future__ import annotations

import hashlib
import os

from tests.support.config import passthrough
from tests.support.procs import free_port, wait_listening
from tests.support.streams import slow_download
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
    e = edge(passthrough(f"127.0.0.1:{port}", host="bulk.example.test", backend="bulk"))
    received, digest, growth_mib = slow_download(e.https_port, "bulk.example.test", str(ca.ca_pem), "/blob", SIZE, e.pid)
    assert received == SIZE
    assert digest == expected
    assert growth_mib < 24, f"edge RSS grew by {growth_mib:.1f} MiB while forwarding 200 MiB"
    e.assert_alive()
