"""SSH and git through the edge: port 22, SSH recognised on 443, and half-close."""

from __future__ import annotations

import os
import subprocess
import time

import pytest


def ssh_body(sshd) -> str:
    return f"""
    [ssh]
    backend = "git"
    [backends.git]
    servers = ["127.0.0.1:{sshd.port}"]
    """


@pytest.fixture
def git_edge(edge, sshd):
    return edge(ssh_body(sshd))


def run_ssh(sshd, port: int, *command: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        sshd.ssh_args(port) + [f"{sshd.user}@127.0.0.1", *command],
        input=input, capture_output=True, timeout=60,
    )


@pytest.mark.parametrize("door", ["ssh_port", "https_port"])
def test_ssh_command_through_the_edge(git_edge, sshd, door):
    result = run_ssh(sshd, getattr(git_edge, door), "echo", "hello-from-sshd")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello-from-sshd\n"
    git_edge.assert_alive()


def test_stdin_eof_reaches_the_server_half_close(git_edge, sshd):
    """`wc -c` only answers once it has seen EOF on its input."""
    payload = os.urandom(3 * 1024 * 1024)
    result = run_ssh(sshd, git_edge.ssh_port, "wc", "-c", input=payload)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(len(payload)).encode()


@pytest.fixture
def repository(tmp_path):
    work = tmp_path / "work"
    bare = tmp_path / "origin.git"
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    for i in range(20):
        (work / f"file{i}.bin").write_bytes(os.urandom(50_000))
    subprocess.run(["git", "-C", str(work), "add", "."], check=True)
    subprocess.run(["git", "-C", str(work), "commit", "-qm", "content"], check=True, env=env)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    head = subprocess.run(["git", "-C", str(work), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    return bare, head.stdout.strip()


@pytest.mark.parametrize("door", ["ssh_port", "https_port"])
def test_git_clone_and_push_over_ssh(git_edge, sshd, repository, tmp_path, door):
    bare, head = repository
    port = getattr(git_edge, door)
    env = {**os.environ, "GIT_SSH_COMMAND": sshd.git_ssh_command()}
    clone = tmp_path / f"clone-{door}"
    url = f"ssh://{sshd.user}@127.0.0.1:{port}{bare}"
    subprocess.run(["git", "clone", "-q", url, str(clone)], check=True, env=env, timeout=120)
    cloned = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert cloned.stdout.strip() == head
    (clone / "new.txt").write_text("pushed through the edge\n")
    subprocess.run(["git", "-C", str(clone), "add", "new.txt"], check=True)
    subprocess.run(["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "push"], check=True)
    subprocess.run(["git", "-C", str(clone), "push", "-q", "origin", "main"], check=True, env=env, timeout=120)
    log = subprocess.run(["git", "-C", str(bare), "log", "--format=%s", "-1"], capture_output=True, text=True)
    assert log.stdout.strip() == "push"
    git_edge.assert_alive()


def test_silent_client_on_443_gets_the_ssh_banner_after_inspect(edge, sshd):
    """Some SSH clients wait for the server to speak first."""
    import socket

    e = edge(ssh_body(sshd), timeouts='inspect = "1s"\nconnect = "2s"\nidle = "60s"')
    with socket.create_connection(("127.0.0.1", e.https_port), timeout=10) as sock:
        banner = sock.recv(100)
    assert banner.startswith(b"SSH-2.0-OpenSSH")


def test_trusted_balancer_header_on_port_22(edge, sshd):
    """From a trusted source a PROXY header is read on port 22 too; sshd logs the real client."""
    import socket

    from edge.sniff.proxy import build_v1

    e = edge(ssh_body(sshd), accept_proxy=["127.0.0.0/8"])
    with socket.create_connection(("127.0.0.1", e.ssh_port), timeout=10) as sock:
        sock.sendall(build_v1(("198.51.100.7", 5555), ("127.0.0.1", 22)))
        assert sock.recv(100).startswith(b"SSH-2.0-OpenSSH")
    e.wait_log("198.51.100.7:5555 ssh ssh")
    result = run_ssh(sshd, e.ssh_port, "true")  # and without a header, from the same trusted source
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("volume", [1000, 200_000])  # below and past the point where splicing starts
def test_idle_timeout_cuts_a_silent_session_and_spares_a_busy_one(edge, sshd, volume):
    e = edge(f"""
    [ssh]
    backend = "git"
    [backends.git]
    servers = ["127.0.0.1:{sshd.port}"]
    """, timeouts='inspect = "2s"\nconnect = "2s"\nidle = "1s"')
    busy = run_ssh(sshd, e.ssh_port, f"for i in 1 2 3 4 5 6 7; do head -c {volume} /dev/zero; sleep 0.4; done")
    assert busy.returncode == 0, busy.stderr
    assert len(busy.stdout) == 7 * volume
    started = time.monotonic()
    silent = run_ssh(sshd, e.ssh_port, f"head -c {volume} /dev/zero; sleep 8; echo late")
    assert b"late" not in silent.stdout and silent.returncode != 0
    assert time.monotonic() - started < 6
    log = e.wait_log("timeout: idle")
    assert log.count("timeout: idle") == 1
    e.assert_alive()
