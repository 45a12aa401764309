"""Run some of edge's own test modules again in a child pytest: with other switches, or another Python."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Mapping

ROOT = Path(__file__).resolve().parents[2]

# The tests that carry bytes through edge: TCP and TLS passthrough, TLS termination, HTTP/1.1 and HTTP/2
# proxying, SSH, and the hostile HTTP/1.1 and HTTP/2 clients.
FORWARDING = ("tests/e2e/test_passthrough.py", "tests/e2e/test_terminate.py", "tests/e2e/test_http1_proxy.py",
              "tests/e2e/test_h2_server.py", "tests/e2e/test_ssh.py", "tests/e2e/test_hostile_http.py",
              "tests/e2e/test_hostile_h2.py")

# The tests that need no sockets of their own (the sans-IO cores: every package under tests/unit but the lint
# and type checks of tests/unit/test_architecture.py), and those of the modules that reach into Twisted's
# internals (edge.net.fastpath, edge.tls.fast_tls, edge.net.transports, edge.net.timers).
UNIT = ("tests/unit/config", "tests/unit/sniff", "tests/unit/net", "tests/unit/tls", "tests/unit/tcp", "tests/unit/acme",
        "tests/unit/http", "tests/unit/discovery", "tests/e2e/test_transports.py")


def run_pytest(paths: Iterable[str], *, python: str | os.PathLike = sys.executable,
               env: Mapping[str, str] | None = None, timeout: float = 1500) -> str:
    """Run pytest on ``paths`` (relative to the checkout) with ``python`` and ``env``; return its summary line.

    A failure raises AssertionError with the end of the child's output, which names the failing tests."""
    present = list(paths)
    missing = [p for p in present if not (ROOT / p).exists()]
    assert not missing, f"no such test modules: {missing}"
    done = subprocess.run([str(python), "-m", "pytest", *present, "-q", "-p", "no:cacheprovider"],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=dict(os.environ if env is None else env))
    lines = done.stdout.strip().splitlines()
    summary = lines[-1] if lines else ""
    assert done.returncode == 0 and " passed" in summary and "failed" not in summary and "error" not in summary, \
        f"pytest {' '.join(present)} with {python}: exit {done.returncode}\n" + done.stdout[-8000:] + done.stderr[-3000:]
    return summary
