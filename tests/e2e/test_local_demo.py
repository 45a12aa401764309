"""The README's run command: etc/edge.local.toml answers on loopback out of the box."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.edge import ROOT, edge_env
from tests.support.procs import Program, wait_listening


@pytest.fixture
def local_demo(tmp_path):
    program = Program([sys.executable, "-m", "twisted", "--log-format", "text", "edge", "--config",
                       str(ROOT / "etc" / "edge.local.toml")], tmp_path / "edge.log", env=edge_env(), cwd=ROOT)
    try:
        for port in (8080, 8443, 9099):
            wait_listening(port, proc=program.proc)
        yield program
    finally:
        program.stop()


def test_port_8080_redirects(local_demo):
    result = subprocess.run(["curl", "-sS", "-i", "--max-time", "10", "http://127.0.0.1:8080/"], capture_output=True, text=True)
    assert result.stdout.startswith("HTTP/1.1 308")
    assert "Location: https://127.0.0.1:8443/" in result.stdout


def test_https_localhost_serves_the_status_page_with_the_local_ca(local_demo):
    ca = ROOT / "etc" / ".edge-state" / "local-ca" / "ca.pem"
    for version in ("--http1.1", "--http2"):
        result = subprocess.run(["curl", "-sS", "-i", "--max-time", "10", version, "--cacert", str(ca),
                                 "https://localhost:8443/"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert " 200" in result.stdout.splitlines()[0]
        assert "<title>edge status</title>" in result.stdout
        assert "localhost" in result.stdout and "local-tls" in result.stdout
    assert (ca.parent / "ca.key").stat().st_mode & 0o777 == 0o600
