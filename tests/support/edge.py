"""Run the real edge (``twist edge``) on a config written by a test."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

from tests.support.procs import Program, describe_socket, free_port

ROOT = Path(__file__).resolve().parents[2]
SPARE_PIPES = 64  # edge/splice.py's MAX_SPARE_PIPES: empty pipe pairs kept for reuse


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


def _tcp_inodes(pid: int) -> tuple[set[str], set[str]]:
    """``socket:[inode]`` names of TCP sockets in ``pid``'s namespace: (listening, the others)."""
    listening, others = set(), set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            (listening if fields[3] == "0A" else others).add(f"socket:[{fields[9]}]")
    return listening, others


def _caught_signals(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return int(line.split()[1], 16)
    return 0


def _ss_ends(sockets: list[str], pid: int, fd: int) -> list[str]:
    """The ``ss -Htanp`` lines of ``pid``'s socket ``fd`` and of its other end, if that is local."""
    own = [line for line in sockets if f"pid={pid},fd={fd})" in line]
    addresses = {tuple(line.split()[3:5]) for line in own}
    peers = [line for line in sockets if tuple(line.split()[4:2:-1]) in addresses]
    return own + [line + ("  <- held by the test process" if f"pid={os.getpid()}," in line else "") for line in peers]


class Edge(Program):
    """A running edge with its three doors on fresh loopback ports.

    Descriptor guard: once started the edge records ``baseline``, its open
    descriptors (``/proc/PID/fd`` targets), and :meth:`assert_no_leaked_descriptors`
    (run by the ``start`` fixture after every test) waits until it is back to
    it once clients and origins are gone: a socket the edge never closes
    fails the test that leaked it.  Three kinds are left out, each for a reason:

    * listening TCP sockets: the config decides them and a reload changes them;
      the guard is about connections;
    * TCP connections open when the baseline is taken are not part of it:
      no client has connected yet, so they are the edge's own health checks
      or ACME requests, which must be gone at the end like any other;
    * up to ``SPARE_PIPES`` new pipes whose two ends are both open: the pool
      of empty pipes that splicing keeps for reuse.  A pipe end alone, or
      more pairs than that, is reported.

    The baseline is taken once ``startService`` has run (it installs the
    SIGHUP handler last): workers' pipes and Twisted's signal wakers exist by then.
    """

    def __init__(self, tmp: Path, body: str, *, ssh: bool | None = None, http: bool = True, https: bool = True,
                 accept_proxy: list[str] | None = None, timeouts: str = "", ipv6: bool = False,
                 certs_dir: str | None = None, ports: dict[str, int] | None = None,
                 log_format: str = "text", admin: bool = False, workers: int = 1, log_level: str = "info",
                 listen_extra: str = "", state_dir: Path | None = None, edge_extra: str = "") -> None:
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
        if listen_extra:  # more [listen] keys (deny = [...])
            listen.append(listen_extra)
        if accept_proxy is not None:
            listen.append(f"accept_proxy = {accept_proxy!r}".replace("'", '"'))
        self.config = tmp / "edge.toml"
        self.config.write_text(
            f"[edge]\nstate_dir = {str(state_dir or tmp / 'state')!r}\n"
            + (f"certs_dir = {certs_dir!r}\n" if certs_dir else "")
            + (f"workers = {workers}\n" if workers > 1 else "") + (f"{edge_extra}\n" if edge_extra else "")
            + "\n[listen]\n" + "\n".join(listen) + "\n\n"
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
            if self.proc.poll() is not None:
                raise RuntimeError(f"edge exited with {self.proc.returncode}:\n{self.log()}")
            started = "Starting reactor" in self.log()  # in text and JSON alike
            started = started or (self.log_level != "info" and _listening(port))  # that line is not logged
            if started and _caught_signals(self.pid) & (1 << (signal.SIGHUP - 1)):  # startService has run
                self.baseline = self._descriptors(connections=False)
                return
            time.sleep(0.05)
        raise TimeoutError(f"edge did not start:\n{self.log()}")

    def _descriptors(self, connections: bool = True) -> dict[int, str]:
        """Open descriptors as {fd: readlink target}, without listening sockets (nor TCP connections,
        unless ``connections``)."""
        listening, connected = _tcp_inodes(self.pid)
        skip = listening if connections else listening | connected
        found = {}
        for entry in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                target = os.readlink(f"/proc/{self.pid}/fd/{entry}")
            except OSError:  # closed meanwhile
                continue
            if target not in skip:
                found[int(entry)] = target
        return found

    def leaked_descriptors(self) -> dict[int, str]:
        """Descriptors open now that were not in ``baseline``, less the spare pipe pairs."""
        left = Counter(self.baseline.values())
        extra = {}
        for fd, target in sorted(self._descriptors().items()):
            if left[target]:
                left[target] -= 1
            else:
                extra[fd] = target
        ends = Counter(target for target in extra.values() if target.startswith("pipe:"))
        spare = sorted(target for target, count in ends.items() if count == 2)[:SPARE_PIPES]
        return {fd: target for fd, target in extra.items() if target not in spare}

    def assert_no_leaked_descriptors(self, timeout: float = 10) -> None:
        """Wait until the edge holds no descriptor beyond ``baseline``; else fail, naming them."""
        deadline = time.monotonic() + timeout
        extra = self.leaked_descriptors()
        while extra and time.monotonic() < deadline:
            time.sleep(0.1)
            extra = self.leaked_descriptors() if self.proc.poll() is None else {}  # an edge that exited holds none
        if extra:
            ss = subprocess.run(["ss", "-Htanp"], capture_output=True, text=True).stdout
            sockets = [line.rstrip() for line in ss.splitlines()]
            doors = {port: door for door, port in (("ssh", self.ssh_port), ("http", self.http_port),
                                                   ("https", self.https_port), ("https", self.https_port6),
                                                   ("admin", self.admin_port)) if port}
            lines = []
            for fd, target in list(extra.items())[:20]:
                if target.startswith("socket:"):
                    target += " " + describe_socket(self.pid, fd, doors)
                    target += "".join(f"\n    ss: {line}" for line in _ss_ends(sockets, self.pid, fd))
                lines.append(f"fd {fd} -> {target}")
            if len(extra) > 20:
                lines.append(f"... and {len(extra) - 20} more")
            raise AssertionError(f"edge (pid {self.pid}) still holds {len(extra)} descriptor(s) beyond its "
                                 f"baseline {timeout:g}s after the test:\n" + "\n".join(lines))

    def events(self, logger: str | None = "edge.access") -> list[dict]:
        """The JSON log's events (``log_format="json"``), those of ``logger`` (all if None)."""
        found = []
        for line in self.log().split("\n")[:-1]:  # the last piece may be a line still being written
            if line.startswith("{"):
                event = json.loads(line)  # one clean object per line (edge.ops.logs)
                if logger is None or event["logger"] == logger:
                    found.append(event)
        return found

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
