"""The benchmark harness still runs (smoke mode, seconds). It asserts nothing about speed."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.edge import ROOT


def test_bench_smoke_prints_the_table(tmp_path):
    out = tmp_path / "bench.md"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--out", str(out)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = out.read_text()
    assert "| scenario | edge | edge x2 | haproxy | nginx | sslh | edge / haproxy |" in report
    for scenario in ("1. passthrough keep-alive", "2. passthrough new connection", "3. passthrough bulk MB/s",
                     "4. TCP (SSH door) bulk", "5. terminated HTTP/2", "6. full handshakes/s",
                     "7. idle terminated", "7. idle terminated HTTP/2", "8. dispatch cost ratio"):
        assert scenario in report
    if len(os.sched_getaffinity(0)) >= 2:  # per-core rows: the proxy on one CPU, client and origin on another
        for scenario in ("5. terminated HTTP/1.1 keep-alive 1 KiB (wrk) (per core)",
                         "5. terminated HTTP/2 (h2load, 10 conns x 10 streams) (per core)"):
            assert scenario in report
    assert "nan" not in report
