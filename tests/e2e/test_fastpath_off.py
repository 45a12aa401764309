"""The forwarding and termination suites on Twisted's public path alone: every fast path switched off.

tests/support/edge.py starts edge with the test process's environment, so
``EDGE_FASTPATH=off`` reaches every edge these suites start (and the
in-process parts of the suites too).  The pipelining bound, which reads
the write buffer on the fast path, holds here through Twisted's producer
calls (edge.http.h1_server.Backlog): test_hostile_http runs too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUITES = ["tests/e2e/test_passthrough.py", "tests/e2e/test_terminate.py", "tests/e2e/test_http1_proxy.py",
          "tests/e2e/test_ssh.py", "tests/e2e/test_hostile_http.py"]


def test_forwarding_and_termination_pass_with_every_fast_path_off():
    env = {k: v for k, v in os.environ.items() if k != "EDGE_FAST_PATHS"}
    env["EDGE_FASTPATH"] = "off"
    done = subprocess.run([sys.executable, "-m", "pytest", *SUITES, "-q", "-p", "no:cacheprovider"],
                          capture_output=True, text=True, timeout=1500, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert " passed" in done.stdout.splitlines()[-1]
