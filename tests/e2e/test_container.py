"""The Containerfile really builds and the image really runs edge (slow: deselect with -m 'not slow').

The base image is made here (debootstrap, then podman import), the image is
built with ``podman build --isolation chroot`` and run with ``podman run`` as the
README's Quadlet unit runs it.  Containers use Debian's ``runc`` with explicit,
lowered limits: crun cannot set rlimits or use the hybrid cgroups of these
machines (on a normal host the defaults work and the flags are harmless).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import textwrap
import time

import pytest

from tests.support.edge import ROOT
from tests.support.procs import Program, free_port, wait_listening

pytestmark = pytest.mark.slow


def run(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(list(argv), capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{argv}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("container")
    rootfs = tmp / "rootfs"
    run("debootstrap", "--variant=minbase", "--include=python3,python3-venv,openssh-server,openssl", "bookworm", str(rootfs), timeout=1200)
    # Let pip inside the build trust the same CAs as this machine (some networks intercept TLS).
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs/ca-certificates.crt")
    (rootfs / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    run("podman", "import", "-", "localhost/edge-base", stdin=tar.stdout, timeout=600)
    tar.wait()
    run("podman", "build", "--isolation", "chroot", "--build-arg", "BASE=localhost/edge-base",
        "-t", "localhost/edge-test", "-f", str(ROOT / "Containerfile"), str(ROOT), timeout=1200)
    yield "localhost/edge-test"
    subprocess.run(["podman", "rmi", "-f", "localhost/edge-test", "localhost/edge-base"], capture_output=True)


SIDECAR = """
mkdir -p /run/sshd
/usr/sbin/sshd -D -e -f /side/sshd_config &
exec openssl s_server -accept 127.0.0.1:9443 -cert /side/cert.pem -key /side/key.pem -www -naccept 1000000
"""


def test_image_runs_under_podman_as_users_run_it(image, tmp_path, ca):
    """``podman run`` as the README's Quadlet unit does: config and state as volumes, ports published,
    SIGHUP by ``podman kill``, ``podman stop`` within the drain time.  A sidecar in the edge's network
    namespace (the base image, which has openssh-server and openssl) is the passthrough and SSH backend,
    so every address edge uses is its own loopback."""
    name = f"edge-image-{tmp_path.name[-6:]}"
    config, state, side = tmp_path / "config", tmp_path / "state", tmp_path / "side"
    for folder in (config, state, side):
        folder.mkdir()
    state.chmod(0o777)  # the image's user (uid 10001) writes its local CA here
    cert, key, _ = ca.issue("pass.example.test")
    (side / "cert.pem").write_bytes(cert.read_bytes())
    (side / "key.pem").write_bytes(key.read_bytes())
    for key_file in ("host", "client"):
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(side / key_file))
    (side / "authorized_keys").write_bytes((side / "client.pub").read_bytes())
    (side / "sshd_config").write_text("ListenAddress 127.0.0.1:2200\nHostKey /side/host\nAuthorizedKeysFile "
                                      "/side/authorized_keys\nStrictModes no\nPasswordAuthentication no\n"
                                      "UsePAM no\nPermitRootLogin prohibit-password\n")
    (side / "run.sh").write_text(SIDECAR)
    for path in side.iterdir():
        path.chmod(0o600 if path.name in ("client", "host", "key.pem") else 0o644)  # sshd refuses open keys
    http, https, ssh = free_port(), free_port(), free_port()
    body = textwrap.dedent("""
        [edge]
        state_dir = "/var/lib/edge"
        [listen]
        ssh = ["0.0.0.0:22"]
        http = ["0.0.0.0:80"]
        https = ["0.0.0.0:443"]
        [timeouts]
        drain = "5s"
        [tls]
        issuer = "local"
        [admin]
        listen = "127.0.0.1:9099"
        [ssh]
        backend = "git"
        [backends.git]
        servers = ["127.0.0.1:2200"]
        [backends.status]
        servers = ["http://127.0.0.1:9099"]
        [backends.tls]
        servers = ["127.0.0.1:9443"]
        [[routes]]
        hosts = ["localhost"]
        tls = "edge"
        backend = "status"
        [[routes]]
        hosts = ["pass.example.test"]
        tls = "passthrough"
        backend = "tls"
        """)
    (config / "edge.toml").write_text(body)
    podman = ["podman", "--runtime", "runc"]
    limits = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1000:1000"]
    try:
        run(*podman, "run", "-d", "--name", name, *limits, "--sysctl", "net.ipv4.ip_unprivileged_port_start=22",
            "-p", f"127.0.0.1:{ssh}:22", "-p", f"127.0.0.1:{http}:80", "-p", f"127.0.0.1:{https}:443",
            "-v", f"{config}:/etc/edge:ro", "-v", f"{state}:/var/lib/edge", "localhost/edge-test", timeout=120)
        run(*podman, "run", "-d", "--name", f"{name}-side", *limits, "--network", f"container:{name}",
            "-v", f"{side}:/side:ro", "localhost/edge-base", "sh", "/side/run.sh", timeout=120)
        logs = wait_for_log(name, "Starting reactor")
        assert "listening for https on 0.0.0.0:443" in logs
        redirect = run("curl", "-sS", "-i", "--max-time", "10", f"http://127.0.0.1:{http}/")
        assert redirect.stdout.startswith("HTTP/1.1 308")
        page = run("curl", "-sS", "--max-time", "10", "--cacert", str(state / "local-ca" / "ca.pem"),
                   "--resolve", f"localhost:{https}:127.0.0.1", f"https://localhost:{https}/")
        assert "<title>edge status</title>" in page.stdout
        key_file = state / "local-ca" / "ca.key"
        assert key_file.stat().st_uid == 10001 and key_file.stat().st_mode & 0o777 == 0o600
        passthrough = retry(lambda: subprocess.run(
            ["curl", "-sS", "--max-time", "10", "--cacert", str(ca.ca_pem), "--resolve",
             f"pass.example.test:{https}:127.0.0.1", f"https://pass.example.test:{https}/"],
            capture_output=True, text=True, timeout=30))
        assert "s_server" in passthrough.stdout, passthrough.stderr
        login = retry(lambda: subprocess.run(
            ["ssh", "-F", "/dev/null", "-p", str(ssh), "-i", str(side / "client"), "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
             "root@127.0.0.1", "echo through-edge"], capture_output=True, text=True, timeout=30))
        assert login.stdout == "through-edge\n", login.stderr + run(*podman, "logs", f"{name}-side").stderr
        # reload: a new route appears
        (config / "edge.toml").write_text(body.replace('hosts = ["localhost"]', 'hosts = ["localhost", "alias.test"]'))
        run(*podman, "kill", "--signal", "HUP", name)
        wait_for_log(name, "reloaded /etc/edge/edge.toml")
        alias = run("curl", "-sS", "--max-time", "10", "--cacert", str(state / "local-ca" / "ca.pem"),
                    "--resolve", f"alias.test:{https}:127.0.0.1", f"https://alias.test:{https}/")
        assert "<title>edge status</title>" in alias.stdout
        # stop within the drain time (5 s) while a client holds a connection open
        held = socket.create_connection(("127.0.0.1", ssh), timeout=10)
        started = time.monotonic()
        run(*podman, "stop", "-t", "30", name, timeout=60)
        took = time.monotonic() - started
        held.close()
        logs = run(*podman, "logs", name).stdout + run(*podman, "logs", name).stderr
        assert "draining 1 open connections" in logs and "Main loop terminated" in logs, logs[-3000:]
        assert took < 15, f"podman stop took {took:.1f}s"
        state_of = run(*podman, "inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        assert state_of == "0", logs[-3000:]
    finally:
        subprocess.run([*podman, "rm", "-f", "-t", "0", f"{name}-side", name], capture_output=True, timeout=60)


def wait_for_log(name: str, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = subprocess.run(["podman", "logs", name], capture_output=True, text=True, timeout=30)
        logs = result.stdout + result.stderr
        if text in logs:
            return logs
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in the container's log:\n{logs[-3000:]}")


def retry(attempt, tries: int = 50):
    """The sidecar starts after the edge: try until its servers answer (bounded)."""
    for _ in range(tries):
        result = attempt()
        if result.returncode == 0:
            return result
        time.sleep(0.2)
    return result
