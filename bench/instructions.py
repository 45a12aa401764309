#!/usr/bin/env python3
"""Instructions edge executes per request or connection, counted by callgrind: a figure that holds still.

    python3 bench/instructions.py                     # scenarios 1, 2 and 5 of bench/run.py
    python3 bench/instructions.py --only terminate    # one of passthrough, close, terminate, h2

Requests/s on a shared two-core machine move 10-30% from run to run, more
than most single changes are worth.  This runs edge under valgrind's
callgrind, drives it with wrk at low concurrency, and counts the
instructions edge's process executed (user space: Python, OpenSSL,
libc; not the kernel) while the load ran, divided by the requests served.
Two checkouts measured one after the other differ by about 1% when
nothing changed.  It needs Debian's valgrind besides what bench/run.py
needs, and takes about a minute per scenario.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.contestants import ROOT, Edge  # noqa: E402
from bench.run import Origin, h2load, wrk  # noqa: E402
from tests.support.certs import TestCA  # noqa: E402
from tests.support.procs import Program  # noqa: E402

SCENARIOS = {  # name: (edge mode, new connection per request, what one unit is)
    "passthrough": ("passthrough", False, "keep-alive request through TLS passthrough (spliced)"),
    "close": ("passthrough", True, "new TLS passthrough connection"),
    "terminate": ("terminate", False, "keep-alive HTTP/1.1 request on a terminated route"),
    "h2": ("terminate", False, "HTTP/2 request on a terminated route (h2load, 10 connections x 10 streams)"),
}


class CallgrindEdge(Edge):
    """edge started under callgrind with instrumentation off until the load starts."""

    def start(self) -> Program:
        super().start().stop()  # writes the config and certificates; the process itself is not wanted
        self.out = self.tmp / "callgrind.out"
        argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={self.out}",
                sys.executable, "-m", "twisted", "--log-format", "text", "--log-level", "warn", "edge",
                "--config", str(self.tmp / "edge.toml")]
        return Program(argv, self.tmp / "callgrind.log", env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=self.tmp)

    def counted(self) -> int:
        total = 0
        for path in self.tmp.glob("callgrind.out*"):
            for match in re.finditer(r"^(?:summary|totals):\s+(\d+)", path.read_text(errors="replace"), re.M):
                total = max(total, int(match.group(1)))
        return total


def measure(name: str, tmp: Path, origin, cert: Path, key: Path, seconds: float, keep: Path | None = None) -> float:
    mode, close, _ = SCENARIOS[name]
    edge = CallgrindEdge(tmp / name, mode, origin, cert, key)
    try:
        url = f"https://localhost:{edge.port}/1k"
        wrk(url, 2, 4, close=close)  # warm up: imports, caches, pooled backend connections
        if name == "h2":
            h2load(url, 2, 10)
        subprocess.run(["callgrind_control", "--instr=on", str(edge.pid)], capture_output=True, check=True)
        if name == "h2":
            served = h2load(url, seconds, 10)["rps"] * int(max(1, seconds))
        else:  # wrk's own count of completed requests, not rate x seconds (which drifts by a few %)
            result = wrk(url, seconds, 8, close=close)
            served = result["requests"] or result["rps"] * int(max(1, seconds))
        subprocess.run(["callgrind_control", "--instr=off", str(edge.pid)], capture_output=True, check=True)
    finally:
        edge.stop()  # callgrind writes its counts as edge exits
    time.sleep(0.5)
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        for path in edge.tmp.glob("callgrind.out*"):
            shutil.copy(path, keep / f"{name}.{path.name}")
    return edge.counted() / served


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated: " + ", ".join(SCENARIOS))
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load under callgrind")
    parser.add_argument("--keep", type=Path, default=None,
                        help="a folder to copy callgrind's output files to (for callgrind_annotate)")
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(SCENARIOS)
    for tool in ("valgrind", "callgrind_control", "wrk", "nginx"):
        if subprocess.run(["which", tool], capture_output=True).returncode:
            print(f"missing: {tool} (apt-get install valgrind wrk nginx)")
            return 2
    with tempfile.TemporaryDirectory(prefix="edge-instructions-") as name:
        tmp = Path(name)
        cert, key, _ = TestCA(tmp / "ca").issue("localhost")
        origin = Origin(tmp / "origin", cert, key, 1024 * 1024)
        try:
            for scenario in names:
                per_unit = measure(scenario, tmp, origin, cert, key, args.duration, args.keep)
                print(f"{scenario:12} {per_unit:>12,.0f} instructions per {SCENARIOS[scenario][2]}", flush=True)
        finally:
            origin.program.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
