"""Debian's pebble (Let's Encrypt's RFC 8555 test server) and pebble-challtestsrv as its DNS."""

from __future__ import annotations

import json
import os
import re
import ssl
import time
import urllib.request
from pathlib import Path

from tests.support.certs import TestCA
from tests.support.procs import Program, free_port, wait_listening


class ChallTestSrv(Program):
    """Answers every DNS name with 127.0.0.1, so pebble validates against the edge."""

    def __init__(self, tmp: Path) -> None:
        self.dns_port = free_port()
        management = free_port()
        super().__init__(["pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
                          "-dns01", f"127.0.0.1:{self.dns_port}", "-management", f"127.0.0.1:{management}",
                          "-http01", "", "-https01", "", "-tlsalpn01", ""], tmp / "challtestsrv.log")
        wait_listening(management, proc=self.proc)


class Pebble(Program):
    """pebble validating HTTP-01 on ``http_port`` and TLS-ALPN-01 on ``tls_port`` (the edge's doors);
    ``validity`` (seconds) makes short-lived certificates."""

    def __init__(self, tmp: Path, ca: TestCA, dns_port: int, http_port: int, tls_port: int,
                 port: int | None = None, management: int | None = None, env: dict | None = None,
                 validity: int | None = None) -> None:
        self.port = port or free_port()
        self.management = management or free_port()
        cert, key, _ = ca.issue("localhost", "127.0.0.1")
        config = tmp / "pebble.json"
        config.write_text(json.dumps({"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management}",
            "certificate": str(cert), "privateKey": str(key),
            "httpPort": http_port, "tlsPort": tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": False,
            **({"certificateValidityPeriod": validity} if validity else {}),  # seconds
        }}))
        # Fault injection: ``env`` overrides these (PEBBLE_VA_SLEEPTIME needs PEBBLE_VA_NOSLEEP removed,
        # give it as None).
        merged = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0",
                  **(env or {})}
        merged = {name: value for name, value in merged.items() if value is not None}
        super().__init__(["pebble", "-config", str(config), "-dnsserver", f"127.0.0.1:{dns_port}"],
                         tmp / "pebble.log", env=merged)
        wait_listening(self.port, proc=self.proc)
        self.directory = f"https://127.0.0.1:{self.port}/dir"
        self.ca = ca

    def root_pem(self) -> str:
        """The root that signs pebble's certificates (new for every pebble run)."""
        context = ssl.create_default_context(cafile=str(self.ca.ca_pem))
        context.check_hostname = False
        with urllib.request.urlopen(f"https://127.0.0.1:{self.management}/roots/0", context=context, timeout=10) as r:
            return r.read().decode()

    def count(self, text: str) -> int:
        return self.log().count(text)

    def wait_log(self, pattern: str, timeout: float = 30) -> re.Match:
        """Wait until the regular expression ``pattern`` matches a line of pebble's log; return the match."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.log())
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not in pebble's log:\n{self.log()}")
