"""Listeners handed over by systemd (LISTEN_FDS), as a Quadlet .socket unit does."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

from tests.support.edge import edge_env
from tests.support.procs import Program, free_port


def activate(tmp_path, count: int, fdnames: str, config_text: str) -> tuple[Program, list[int]]:
    """``systemd-socket-activate`` on ``count`` fresh ports running the edge on ``config_text``
    (``{0}``, ``{1}`` ... are the ports).  A port still in TIME_WAIT makes it exit: retry with others."""
    env = edge_env()
    for attempt in range(5):
        ports = [free_port() for _ in range(count)]
        config = tmp_path / f"edge-{attempt}.toml"
        config.write_text(config_text.format(*ports))
        sockets = [arg for port in ports for arg in ("-l", f"127.0.0.1:{port}")]
        program = Program(["systemd-socket-activate", "-E", f"PYTHONPATH={env['PYTHONPATH']}", "-E",
                           "PYTHONUNBUFFERED=1", *sockets, f"--fdname={fdnames}", sys.executable, "-m", "twisted",
                           "--log-format", "text", "edge", "--config", str(config)],
                          tmp_path / f"edge-{attempt}.log", env=env)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and program.proc.poll() is None:
            if program.log().count("Listening on") == count:
                return program, ports
            time.sleep(0.05)
        program.stop()
    raise RuntimeError("systemd-socket-activate did not start")


def test_systemd_sockets_by_name(tmp_path, tls_origin, ca):
    origin = tls_origin("pass.example.test")
    activator, (https, http) = activate(tmp_path, 2, "https:http", textwrap.dedent(f"""
        [edge]
        state_dir = "{tmp_path / 'state'}"
        [listen]
        ssh = []
        http = ["systemd:http"]
        https = ["systemd:https"]
        [backends.pass]
        servers = ["127.0.0.1:{origin.port}"]
        [[routes]]
        hosts = ["pass.example.test"]
        tls = "passthrough"
        backend = "pass"
        """).replace("{", "{{").replace("}", "}}"))
    try:
        # The first connection starts the edge, which adopts both sockets.
        redirect = subprocess.run(["curl", "-sS", "-i", "--max-time", "20", "-H", "Host: a.example.test",
                                   f"http://127.0.0.1:{http}/x"], capture_output=True, text=True, timeout=30)
        assert redirect.stdout.startswith("HTTP/1.1 308"), redirect.stdout + redirect.stderr + activator.log()
        passthrough = subprocess.run(
            ["curl", "-sS", "--max-time", "20", "--resolve", f"pass.example.test:{https}:127.0.0.1",
             "--cacert", str(ca.ca_pem), f"https://pass.example.test:{https}/"], capture_output=True, text=True)
        assert passthrough.returncode == 0, passthrough.stderr
        assert "listening for https on systemd:https" in activator.log()
    finally:
        activator.stop()


def test_systemd_sockets_by_index_as_the_shipped_socket_unit_orders_them(tmp_path):
    # systemd names unnamed sockets after their unit ("edge"); the order is that of ListenStream=.
    activator, (http,) = activate(tmp_path, 1, "edge", (
        f'[edge]\nstate_dir = "{tmp_path / "state"}"\n[listen]\nssh = []\nhttp = ["systemd:0"]\nhttps = []\n'
    ).replace("{", "{{").replace("}", "}}"))
    try:
        redirect = subprocess.run(["curl", "-sS", "-i", "--max-time", "20", "-H", "Host: a.example.test",
                                   f"http://127.0.0.1:{http}/"], capture_output=True, text=True, timeout=30)
        assert redirect.stdout.startswith("HTTP/1.1 308"), redirect.stderr + activator.log()
    finally:
        activator.stop()
