"""Real podman for the tests: its API service on a test socket, and a minimal image of our own.

Containers run with Debian's ``runc`` and explicit, lowered limits: crun cannot set rlimits or use
the hybrid cgroups of these machines (on a normal host the defaults work and the flags are harmless).
The image is busybox (``httpd``, a shell) in an empty root with ``/lib`` pointing at ``/usr/lib``, so a
test can mount this machine's ``openssl`` and its libraries to serve TLS from a container.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path

from tests.support.procs import Program

PODMAN = ["podman", "--runtime", "runc"]
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1000:1000"]
IMAGE = "localhost/edge-test-busybox"
# this machine's openssl, runnable inside the busybox image
OPENSSL_MOUNTS = ["-v", "/usr/bin/openssl:/usr/bin/openssl:ro", "-v", "/usr/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu:ro",
                  "-v", "/lib64:/lib64:ro"]


def podman(*argv: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*PODMAN, *argv], capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"podman {argv}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    return result


def build_image(tmp: Path) -> str:
    root = tmp / "busybox-root"
    for folder in ("bin", "www", "usr/lib/x86_64-linux-gnu", "usr/bin", "lib64", "tls"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    for command in ("sh", "httpd", "sleep"):
        (root / "bin" / command).symlink_to("busybox")
    (root / "lib").symlink_to("usr/lib")
    (root / "www" / "index.html").write_text("hello from a container\n")
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    result = subprocess.run(["podman", "import", "-", IMAGE], stdin=tar.stdout, capture_output=True, text=True,
                            timeout=120)
    tar.wait()
    assert result.returncode == 0, result.stderr
    return IMAGE


class PodmanAPI(Program):
    """``podman system service`` on ``socket`` (the Docker-compatible API edge's discovery reads)."""

    def __init__(self, tmp: Path, socket: Path, name: str = "podman-api") -> None:
        self.socket = socket
        socket.unlink(missing_ok=True)
        super().__init__(["podman", "system", "service", "--time=0", f"unix://{socket}"], tmp / f"{name}.log")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if socket.exists() and subprocess.run(["curl", "-sf", "--unix-socket", str(socket), "http://d/_ping"],
                                                  capture_output=True, timeout=10).returncode == 0:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"podman system service exited:\n{self.log()}")
            time.sleep(0.05)
        raise TimeoutError(f"podman API did not answer on {socket}:\n{self.log()}")


class Containers:
    """Containers started by one test, removed when it ends."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.names: list[str] = []

    def run(self, labels: dict[str, str], publish: list[str], command: list[str], extra: list[str] = ()) -> str:
        name = f"edge-test-{uuid.uuid4().hex[:8]}"
        argv = ["run", "-d", "--name", name, *LIMITS, *extra]
        for key, value in labels.items():
            argv += ["--label", f"{key}={value}"]
        for port in publish:
            argv += ["-p", port]
        podman(*argv, self.image, *command)
        self.names.append(name)
        return name

    def stop(self, name: str) -> None:
        podman("stop", "-t", "0", name)

    def remove_all(self) -> None:
        for name in self.names:
            podman("rm", "-f", "-t", "0", name, check=False)
