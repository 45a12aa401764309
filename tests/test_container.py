"""The Containerfile really builds and the image really runs edge (slow: deselect with -m 'not slow').

The base image is made here (debootstrap, then podman import), the image is
built with ``podman build --isolation chroot``, and since ``podman run`` is
refused in this sandbox, the image is mounted and ``twist edge`` started in it
with chroot as the image's non-root user, the config and state folders
bind-mounted where the Quadlet unit puts its volumes.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap

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
    run("debootstrap", "--variant=minbase", "--include=python3,python3-venv", "bookworm", str(rootfs), timeout=1200)
    # Let pip inside the build trust the same CAs as this machine (some networks intercept TLS).
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs/ca-certificates.crt")
    (rootfs / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    run("podman", "import", "-", "localhost/edge-base", stdin=tar.stdout, timeout=600)
    tar.wait()
    run("podman", "build", "--isolation", "chroot", "--build-arg", "BASE=localhost/edge-base",
        "-t", "localhost/edge-test", "-f", str(ROOT / "Containerfile"), str(ROOT), timeout=1200)
    mount = run("podman", "image", "mount", "localhost/edge-test").stdout.strip()
    yield mount
    subprocess.run(["podman", "image", "unmount", "localhost/edge-test"], capture_output=True)
    subprocess.run(["podman", "rmi", "-f", "localhost/edge-test", "localhost/edge-base"], capture_output=True)


def test_image_runs_edge_as_its_own_user(image, tmp_path):
    config, state = tmp_path / "config", tmp_path / "state"
    config.mkdir()
    state.mkdir(mode=0o777)
    state.chmod(0o777)
    http, https, admin = free_port(), free_port(), free_port()
    (config / "edge.toml").write_text(textwrap.dedent(f"""
        [edge]
        state_dir = "/var/lib/edge"
        [listen]
        ssh = []
        http = ["127.0.0.1:{http}"]
        https = ["127.0.0.1:{https}"]
        [tls]
        issuer = "local"
        [admin]
        listen = "127.0.0.1:{admin}"
        [backends.status]
        servers = ["http://127.0.0.1:{admin}"]
        [[routes]]
        hosts = ["localhost"]
        tls = "edge"
        backend = "status"
        """))
    script = (f"mount --bind {config} {image}/etc/edge && mount --bind {state} {image}/var/lib/edge && "
              f"exec chroot --userspec=edge:edge {image} /opt/edge/bin/twist --log-format text edge "
              f"--config /etc/edge/edge.toml")
    edge = Program(["unshare", "--mount", "sh", "-c", script], tmp_path / "edge.log")
    try:
        wait_listening(https, proc=edge.proc, timeout=60)
        redirect = run("curl", "-sS", "-i", "--max-time", "10", f"http://127.0.0.1:{http}/")
        assert redirect.stdout.startswith("HTTP/1.1 308")
        page = run("curl", "-sS", "--max-time", "10", "--cacert", str(state / "local-ca" / "ca.pem"),
                   "--resolve", f"localhost:{https}:127.0.0.1", f"https://localhost:{https}/")
        assert "<title>edge status</title>" in page.stdout
        key = state / "local-ca" / "ca.key"
        assert key.stat().st_uid == 10001 and key.stat().st_mode & 0o777 == 0o600
    finally:
        edge.stop()
