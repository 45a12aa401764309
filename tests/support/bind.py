"""Debian's BIND 9 (``named``), authoritative for a test zone on loopback, dynamic updates allowed for a TSIG key."""

from __future__ import annotations

import base64
import subprocess
import time
from pathlib import Path

from tests.support.procs import Program, free_port, wait_listening

ZONE = "x.test"
KEY_NAME = "edge-key"
SECRET = base64.b64encode(b"edge test tsig secret, 32 bytes!").decode()

ZONE_FILE = """\
$TTL 1
@                   SOA   ns.x.test. hostmaster.x.test. 1 60 60 600 1
@                   NS    ns.x.test.
ns                  A     127.0.0.1
@                   A     127.0.0.1
*                   A     127.0.0.1
; CNAME delegation of one challenge name to a name of its own (edge must write the TXT there)
_acme-challenge.d   CNAME d.delegated.x.test.
; acme-dns style: the challenge name of ad.x.test points at the stand-in's fulldomain
_acme-challenge.ad  CNAME 0d1e2f.auth.x.test.
"""


class Bind(Program):
    """``named -g`` on a free loopback port (UDP and TCP), authoritative for x.test, updatable with KEY_NAME."""

    def __init__(self, tmp: Path) -> None:
        tmp = tmp / "bind"
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.dir = tmp
        (tmp / "x.test.zone").write_text(ZONE_FILE)
        self.key_file = tmp / "tsig.key"  # nsupdate -k format
        self.key_file.write_text(f'key "{KEY_NAME}" {{ algorithm hmac-sha256; secret "{SECRET}"; }};\n')
        self.secret_file = tmp / "tsig.secret"  # edge's tsig_secret_file: the base64 secret alone
        self.secret_file.write_text(SECRET + "\n")
        conf = tmp / "named.conf"
        conf.write_text(f"""
            include "{self.key_file}";
            options {{
                directory "{tmp}";
                pid-file "{tmp}/named.pid";
                session-keyfile "{tmp}/session.key";
                managed-keys-directory "{tmp}";
                listen-on port {self.port} {{ 127.0.0.1; }};
                listen-on-v6 {{ none; }};
                recursion no;
                dnssec-validation no;
                notify no;
            }};
            controls {{ }};
            zone "{ZONE}" {{
                type primary;
                file "{tmp}/x.test.zone";
                allow-update {{ key "{KEY_NAME}"; }};
            }};
        """)
        super().__init__(["/usr/sbin/named", "-g", "-4", "-c", str(conf)], tmp / "named.log")
        wait_listening(self.port, proc=self.proc)
        deadline = time.monotonic() + 15
        while "running" not in self.log():  # "all zones loaded" then "running"
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"named did not start:\n{self.log()}")
            time.sleep(0.05)

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    def dig(self, name: str, rtype: str = "TXT") -> list[str]:
        """The answer's records as dig +short prints them."""
        result = subprocess.run(["dig", "+short", "+norecurse", "-p", str(self.port), "@127.0.0.1", rtype, name],
                                capture_output=True, text=True, timeout=10, check=True)
        return [line for line in result.stdout.splitlines() if line]

    def nsupdate(self, *commands: str) -> None:
        script = f"server 127.0.0.1 {self.port}\n" + "\n".join(commands) + "\nsend\n"
        subprocess.run(["nsupdate", "-k", str(self.key_file)], input=script, text=True, check=True,
                       capture_output=True, timeout=10)
