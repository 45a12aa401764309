"""A stand-in ARI server in front of pebble.

Debian's pebble (2.4) has no ``renewalInfo`` (ACME Renewal Information,
RFC 9773).  This small HTTPS server serves pebble's directory with
``renewalInfo`` added, pointing at itself, and answers renewal-info
requests with the window a test writes to a JSON file; every other URL in
the directory still points at pebble, so orders go straight to it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.support.certs import TestCA
from tests.support.procs import Program, free_port, wait_listening

SCRIPT = r'''
import datetime, json, ssl, sys, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, pebble_dir, ca_pem, cert, key, window_file = sys.argv[1:]
client = ssl.create_default_context(cafile=ca_pem)
client.check_hostname = False


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/dir":
            with urllib.request.urlopen(pebble_dir, context=client, timeout=10) as r:
                directory = json.load(r)
            directory["renewalInfo"] = f"https://127.0.0.1:{port}/renewal-info"
            self.answer(directory, {})
        elif self.path.startswith("/renewal-info/"):
            with open(window_file) as f:
                window = json.load(f)
            now = datetime.datetime.now(datetime.timezone.utc)
            if window.get("absolute"):  # Unix times: the same window whenever it is asked
                start = datetime.datetime.fromtimestamp(window["start"], datetime.timezone.utc)
                end = datetime.datetime.fromtimestamp(window["end"], datetime.timezone.utc)
            else:  # seconds from the moment it is asked
                start = now + datetime.timedelta(seconds=window["start"])
                end = now + datetime.timedelta(seconds=window["end"])
            fmt = "%Y-%m-%dT%H:%M:%SZ"
            self.answer({"suggestedWindow": {"start": start.strftime(fmt), "end": end.strftime(fmt)}},
                        {"Retry-After": str(window["retry_after"])})
            print("ARI", self.path.rsplit("/", 1)[-1], flush=True)
        else:
            self.send_error(404)

    def answer(self, body, headers):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", int(port)), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
'''


class AriStandIn(Program):
    """``directory`` is what the edge is configured with; ``set_window`` changes the answer."""

    def __init__(self, tmp: Path, ca: TestCA, pebble_directory: str) -> None:
        self.port = free_port()
        self.window_file = tmp / "ari-window.json"
        self.set_window(30 * 86400, 31 * 86400, 3600)
        cert, key, _ = ca.issue("localhost", "127.0.0.1")
        script = tmp / "ari_stand_in.py"
        script.write_text(SCRIPT)
        super().__init__([sys.executable, str(script), str(self.port), pebble_directory, str(ca.ca_pem), str(cert),
                          str(key), str(self.window_file)], tmp / "ari.log")
        wait_listening(self.port, proc=self.proc)
        self.directory = f"https://127.0.0.1:{self.port}/dir"

    def set_window(self, start: float, end: float, retry_after: int, absolute: bool = False) -> None:
        """The window from ``start`` to ``end``: seconds from each question, or Unix times if ``absolute``
        (then the same window for every certificate, whenever it is asked)."""
        self.window_file.write_text(json.dumps({"start": start, "end": end, "retry_after": retry_after,
                                                "absolute": absolute}))

    def asked(self) -> int:
        return self.log().count("ARI ")
