"""Listeners handed over by systemd (LISTEN_FDS), as a Quadlet .socket unit does."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.support.edge import edge_env
from tests.support.procs import Program, free_port


def test_systemd_sockets_by_name(tmp_path, tls_origin, ca):
    origin = tls_origin("pass.example.test")
    http, https = free_port(), free_port()
    config = tmp_path / "edge.toml"
    config.write_text(textwrap.dedent(f"""
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
        """))
    pythonpath = edge_env()["PYTHONPATH"]
    activator = Program(["systemd-socket-activate", "-E", f"PYTHONPATH={pythonpath}", "-E", "PYTHONUNBUFFERED=1", "-l", f"127.0.0.1:{https}", "-l", f"127.0.0.1:{http}",
                         "--fdname=https:http", sys.executable, "-m", "twisted", "--log-format", "text", "edge",
                         "--config", str(config)], tmp_path / "edge.log", env=edge_env())
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
    http = free_port()
    config = tmp_path / "edge.toml"
    config.write_text(f'[edge]\nstate_dir = "{tmp_path / "state"}"\n[listen]\nssh = []\nhttp = ["systemd:0"]\nhttps = []\n')
    # systemd names unnamed sockets after their unit ("edge"); the order is that of ListenStream=.
    activator = Program(["systemd-socket-activate", "-E", f"PYTHONPATH={edge_env()['PYTHONPATH']}", "-l",
                         f"127.0.0.1:{http}", "--fdname=edge", sys.executable, "-m", "twisted", "--log-format", "text", "edge",
                         "--config", str(config)], tmp_path / "edge.log", env=edge_env())
    try:
        redirect = subprocess.run(["curl", "-sS", "-i", "--max-time", "20", "-H", "Host: a.example.test",
                                   f"http://127.0.0.1:{http}/"], capture_output=True, text=True, timeout=30)
        assert redirect.stdout.startswith("HTTP/1.1 308"), redirect.stderr + activator.log()
    finally:
        activator.stop()
