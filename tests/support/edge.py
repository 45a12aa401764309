"""Run the real edge (``twist edge``) on a config written by a test."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.support.procs import Program, free_port

ROOT = Path(__file__).resolve().parents[2]


def edge_env() -> dict:
    """Run from the checkout: twisted finds ROOT/twisted/plugins via sys.path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_edge_command(config: Path, *extra: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "twisted", "edge", "--config", str(config), *extra],
        capture_output=True, text=True, timeout=timeout, env=edge_env(), cwd=config.parent,
    )


def _listening(port: int | None) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except (OSError, TypeError):
        return False


class Edge(Program):
    """A running edge with its three doors on fresh loopback ports."""

    def __init__(self, tmp: Path, body: str, *, ssh: bool | None = None, http: bool = True, https: bool = True,
                 accept_proxy: list[str] | None = None, timeouts: str = "", ipv6: bool = False,
                 certs_dir: str | None = None, ports: dict[str, int] | None = None,
                 log_format: str = "text", admin: bool = False, workers: int = 1, log_level: str = "info") -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        if ssh is None:
            ssh = "[ssh]" in body
        ports = ports or {}
        self.ssh_port = (ports.get("ssh") or free_port()) if ssh else None
        self.http_port = (ports.get("http") or free_port()) if http else None
        self.https_port = (ports.get("https") or free_port()) if https else None
        listen = [
            f"ssh = {self._door(self.ssh_port)}",
            f"http = {self._door(self.http_port)}",
            f"https = {self._door(self.https_port)}",
        ]
        self.https_port6 = free_port("::1") if ipv6 else None
        if ipv6:
            listen[2] = f'https = ["127.0.0.1:{self.https_port}", "[::1]:{self.https_port6}"]'
        self.admin_port = free_port() if admin else None
        if accept_proxy is not None:
            listen.append(f"accept_proxy = {accept_proxy!r}".replace("'", '"'))
        self.config = tmp / "edge.toml"
        self.config.write_text(
            f"[edge]\nstate_dir = {str(tmp / 'state')!r}\n"
            + (f"certs_dir = {certs_dir!r}\n" if certs_dir else "")
            + (f"workers = {workers}\n" if workers > 1 else "") + "\n[listen]\n" + "\n".join(listen) + "\n\n"
            + (f'[admin]\nlisten = "127.0.0.1:{self.admin_port}"\n\n' if admin else "")
            + "[timeouts]\n" + (textwrap.dedent(timeouts).strip() or 'inspect = "2s"\nconnect = "2s"\nidle = "60s"')
            + "\n\n" + textwrap.dedent(body)
        )
        self.log_level = log_level
        super().__init__(
            [sys.executable, "-m", "twisted", "--log-format", log_format, "--log-level", log_level,
             "edge", "--config", str(self.config)],
            tmp / "edge.log", env=edge_env(), cwd=tmp,
        )
        try:
            self.wait_started()
        except BaseException:
            self.stop()  # the test never gets this object to stop: do not leave the process behind
            raise

    @staticmethod
    def _door(port: int | None) -> str:
        return f'["127.0.0.1:{port}"]' if port else "[]"

    def wait_started(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        port = self.https_port or self.http_port or self.ssh_port
        while time.monotonic() < deadline:
            if "Starting reactor" in self.log():  # in text and JSON alike
                return
            if self.log_level != "info" and _listening(port):  # that line is not logged
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"edge exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise TimeoutError(f"edge did not start:\n{self.log()}")

    def wait_log(self, text: str, timeout: float = 10) -> str:
        """Wait until ``text`` appears in the edge's log; return the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if text in log:
                return log
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in the edge log:\n{self.log()}")

    def assert_alive(self) -> None:
        assert self.proc.poll() is None, f"edge died:\n{self.log()}"
        assert "Traceback" not in self.log(), self.log()
