"""A stand-in in front of pebble that drops certificate downloads on demand.

Everything is passed to pebble as it came (the Host header too, so the URLs
pebble writes, and checks in signed requests, name the proxy).  While the
file ``block`` exists, a request for an issued certificate (``/certZ/``) is
cut off without an answer: the CA has issued, the client never gets it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.support.certs import TestCA
from tests.support.procs import Program, free_port, wait_listening

SCRIPT = r'''
import http.client, os, ssl, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, pebble_port, ca_pem, cert, key, block = sys.argv[1:]
client = ssl.create_default_context(cafile=ca_pem)
client.check_hostname = False


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def relay(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if self.path.startswith("/certZ/") and os.path.exists(block):
            print("DROPPED", self.command, self.path, flush=True)
            self.close_connection = True
            self.connection.shutdown(2)
            return
        upstream = http.client.HTTPSConnection("127.0.0.1", int(pebble_port), context=client, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
        upstream.request(self.command, self.path, body=body, headers=headers)
        response = upstream.getresponse()
        data = response.read()
        upstream.close()
        self.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in ("connection", "transfer-encoding", "content-length", "keep-alive", "date"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        print(self.command, self.path, response.status, flush=True)

    do_GET = do_POST = do_HEAD = relay

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", int(port)), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
'''


class CaProxy(Program):
    """``directory`` is what the edge is configured with; ``block()`` / ``unblock()`` switch the drop."""

    def __init__(self, tmp: Path, ca: TestCA, pebble_port: int) -> None:
        self.port = free_port()
        self.block_file = tmp / "ca-proxy.block"
        cert, key, _ = ca.issue("localhost", "127.0.0.1")
        script = tmp / "ca_proxy.py"
        script.write_text(SCRIPT)
        super().__init__([sys.executable, str(script), str(self.port), str(pebble_port), str(ca.ca_pem), str(cert),
                          str(key), str(self.block_file)], tmp / "ca-proxy.log")
        wait_listening(self.port, proc=self.proc)
        self.directory = f"https://127.0.0.1:{self.port}/dir"

    def block(self) -> None:
        self.block_file.write_text("")

    def unblock(self) -> None:
        self.block_file.unlink()

    def dropped(self) -> int:
        return self.log().count("DROPPED ")
