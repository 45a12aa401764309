"""Start real programs on loopback ports and wait until they listen."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_listening(port: int, host: str = "127.0.0.1", timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    """Poll until a TCP connect to host:port succeeds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


class Program:
    """A real server program run for a test, with its output in a log file."""

    def __init__(self, argv: list[str], log: Path, env: dict | None = None, cwd: Path | None = None) -> None:
        self.argv = argv
        self.log_path = log
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=cwd, start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def process_socket(pid: int, fd: int) -> socket.socket:
    """A copy of another process's socket ``fd`` (pidfd_getfd, Linux 5.6+; needs root or ptrace rights)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        copy = libc.syscall(438, pidfd, fd, 0)  # SYS_pidfd_getfd
        if copy < 0:
            raise OSError(ctypes.get_errno(), "pidfd_getfd failed")
        return socket.socket(fileno=copy)
    finally:
        os.close(pidfd)


def process_sockets(pid: int) -> list[socket.socket]:
    """Copies of another process's TCP sockets."""
    found = []
    for entry in os.listdir(f"/proc/{pid}/fd"):
        try:
            if not os.readlink(f"/proc/{pid}/fd/{entry}").startswith("socket:"):
                continue
        except OSError:
            continue
        sock = process_socket(pid, int(entry))
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
            found.append(sock)
        else:
            sock.close()
    return found


TCP_STATES = {1: "ESTABLISHED", 2: "SYN-SENT", 3: "SYN-RECV", 4: "FIN-WAIT-1", 5: "FIN-WAIT-2", 6: "TIME-WAIT",
              7: "CLOSE", 8: "CLOSE-WAIT", 9: "LAST-ACK", 10: "LISTEN", 11: "CLOSING"}


def describe_socket(pid: int, fd: int, doors: dict[int, str] | None = None) -> str:
    """What another process's socket ``fd`` is: family and type; for TCP, its state, its addresses
    and, if its local port is one of ``doors`` ({port: name}), which one (else it is outgoing)."""
    try:
        sock = process_socket(pid, fd)
    except OSError as e:
        return f"(cannot inspect: {e})"
    with sock:
        text = f"{sock.family.name} {sock.type.name}"
        if sock.type == socket.SOCK_STREAM and sock.family in (socket.AF_INET, socket.AF_INET6):
            state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
            try:
                peer = sock.getpeername()[:2]
            except OSError:
                peer = "-"
            local = sock.getsockname()[:2]
            text += f" {TCP_STATES.get(state, state)} local={local} peer={peer}"
            if doors is not None:
                text += f" (client on the {doors[local[1]]} door)" if local[1] in doors else " (outgoing)"
        return text
