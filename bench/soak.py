#!/usr/bin/env python3
"""Soak: edge under a mixed, legitimate load for N minutes, sampling its RSS and descriptors.

    python3 bench/soak.py --minutes 30          # the figures in README's benchmark section
    python3 bench/soak.py --minutes 1 --every 5  # a quick look

Four loads run at once, each for the whole time, against one edge on
loopback (``twist --log-level warn``), all forwarding to one nginx origin:

- passthrough, a new TLS connection per request (wrk, ``Connection: close``);
- terminated HTTP/2, 64 KiB responses (h2load, 4 connections x 8 streams);
- terminated HTTP/1.1 keep-alive, 1 KiB responses (h2load --h1, 20 connections);
- port-80 redirects, keep-alive (wrk).

Every ``--every`` seconds the edge's RSS (``/proc/PID/status``) and open
descriptors are sampled.  The report gives the RSS growth after the first
minute (the allocator and caches settle in that minute), failed requests,
and the descriptors before the load and once it has stopped.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.contestants import ROOT  # noqa: E402
from tests.support.certs import TestCA  # noqa: E402
from tests.support.procs import Program, free_port, rss_kib, wait_listening  # noqa: E402

HOST = "app.soak.test"


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def start_origin(tmp: Path, cert: Path, key: Path) -> tuple[Program, int, int]:
    www = tmp / "www"
    www.mkdir(parents=True)
    (www / "1k").write_bytes(b"x" * 1024)
    (www / "64k").write_bytes(b"y" * 65536)
    plain, tls = free_port(), free_port()
    (tmp / "logs").mkdir()
    config = tmp / "nginx.conf"
    config.write_text(textwrap.dedent(f"""
        daemon off; master_process off; worker_processes 1; error_log stderr warn; pid nginx.pid;
        events {{ worker_connections 8000; }}
        http {{
          access_log off; keepalive_requests 1000000; keepalive_timeout 600s;
          server {{ listen 127.0.0.1:{plain} backlog=4096; root {www}; }}
          server {{ listen 127.0.0.1:{tls} ssl backlog=4096; root {www};
                   ssl_certificate {cert}; ssl_certificate_key {key}; }}
        }}
        """))
    program = Program(["nginx", "-p", str(tmp), "-c", str(config)], tmp / "origin.log")
    wait_listening(plain, proc=program.proc)
    wait_listening(tls, proc=program.proc)
    return program, plain, tls


def start_edge(tmp: Path, plain: int, tls: int, cert: Path, key: Path) -> tuple[Program, int, int]:
    https, http = free_port(), free_port()
    certs = tmp / "certs"
    certs.mkdir(parents=True)
    (certs / "app.pem").write_bytes(cert.read_bytes() + key.read_bytes())
    config = tmp / "edge.toml"
    config.write_text(textwrap.dedent(f"""
        [edge]
        state_dir = "{tmp / 'state'}"
        certs_dir = "{certs}"
        [listen]
        ssh = []
        http = ["127.0.0.1:{http}"]
        https = ["127.0.0.1:{https}"]
        [backends.pass]
        servers = ["127.0.0.1:{tls}"]
        [backends.web]
        servers = ["http://127.0.0.1:{plain}"]
        [[routes]]
        hosts = ["localhost"]
        tls = "passthrough"
        backend = "pass"
        [[routes]]
        hosts = ["{HOST}"]
        tls = "edge"
        backend = "web"
        """))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    program = Program([sys.executable, "-m", "twisted", "--log-level", "warn", "edge", "--config", str(config)],
                      tmp / "edge.log", env=env, cwd=tmp)
    wait_listening(https, proc=program.proc, timeout=30)
    wait_listening(http, proc=program.proc, timeout=30)
    return program, https, http


LOADS = {"pass": "passthrough, new connections", "h2": "terminated HTTP/2, 64 KiB",
         "h1": "terminated HTTP/1.1 keep-alive", "redirect": "port-80 redirects"}


def loads(seconds: int, https: int, http: int, only: list[str]) -> dict[str, subprocess.Popen]:
    duration = str(seconds)
    argv = {
        "passthrough, new connections": ["wrk", "-t", "1", "-c", "4", "-d", f"{duration}s", "-H", "Connection: close",
                                         f"https://localhost:{https}/1k"],
        "terminated HTTP/2, 64 KiB": ["h2load", "-D", duration, "-c", "4", "-m", "8", "-t", "1",
                                      f"--connect-to=127.0.0.1:{https}", f"https://{HOST}:{https}/64k"],
        "terminated HTTP/1.1 keep-alive": ["h2load", "--h1", "-D", duration, "-c", "20", "-t", "1",
                                           f"--connect-to=127.0.0.1:{https}", f"https://{HOST}:{https}/1k"],
        "port-80 redirects": ["wrk", "-t", "1", "-c", "4", "-d", f"{duration}s", "-H", f"Host: {HOST}",
                              f"http://127.0.0.1:{http}/"],
    }
    wanted = {LOADS[key] for key in only}
    return {name: subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for name, args in argv.items() if name in wanted}


def outcome(name: str, output: str) -> str:
    """Requests done and failed, from wrk's or h2load's summary."""
    if "h2load" in output or "requests:" in output:
        match = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored",
                          output)
        if not match:
            return f"no summary: {output[-300:]!r}"
        total, done, ok, failed, errored = map(int, match.groups())
        rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", output)
        return f"{done} requests ({rate.group(1) if rate else '?'}/s), {failed} failed, {errored} errored"
    match = re.search(r"(\d+) requests in", output)
    if not match:
        return f"no summary: {output[-300:]!r}"
    errors = re.search(r"Socket errors: (.*)", output)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    return (f"{match.group(1)} requests ({rate.group(1) if rate else '?'}/s), socket errors: "
            f"{errors.group(1) if errors else 'none'}, non-2xx/3xx: {non2xx.group(1) if non2xx else 0}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--loads", default=",".join(LOADS), help=f"comma-separated, of {', '.join(LOADS)}")
    args = parser.parse_args()
    seconds = max(10, int(args.minutes * 60))
    with tempfile.TemporaryDirectory(prefix="edge-soak-") as name:
        tmp = Path(name)
        ca = TestCA(tmp / "ca")
        cert, key, _ = ca.issue(HOST, "localhost")
        origin, plain, tls = start_origin(tmp / "origin", cert, key)
        edge = None
        try:
            edge, https, http = start_edge(tmp / "edge", plain, tls, cert, key)
            time.sleep(1.0)  # let start-up finish (gc.freeze, first health state) before the baseline
            fds_before, rss_before = descriptors(edge.pid), rss_kib(edge.pid)
            print(f"edge pid {edge.pid}: {rss_before / 1024:.1f} MiB, {fds_before} descriptors before the load")
            running = loads(seconds, https, http, args.loads.split(","))
            started = time.monotonic()
            samples: list[tuple[float, int, int]] = []
            while any(p.poll() is None for p in running.values()) and time.monotonic() - started < seconds + 60:
                elapsed = time.monotonic() - started
                samples.append((elapsed, rss_kib(edge.pid), descriptors(edge.pid)))
                print(f"{elapsed:7.0f} s  RSS {samples[-1][1] / 1024:7.1f} MiB  descriptors {samples[-1][2]}", flush=True)
                time.sleep(args.every)
            results = {}
            for name, process in running.items():
                try:
                    output, _ = process.communicate(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    output, _ = process.communicate()
                results[name] = outcome(name, output)
            deadline = time.monotonic() + 30
            while descriptors(edge.pid) > fds_before and time.monotonic() < deadline:
                time.sleep(0.5)
            fds_after = descriptors(edge.pid)
            after_first = [rss for at, rss, _ in samples if at >= 60] or [samples[-1][1]]
            print()
            print(f"Soak of {seconds / 60:g} minutes, edge alone on {'these loads at once' if len(running) > 1 else 'this load'}:")
            for name, text in results.items():
                print(f"- {name}: {text}")
            print(f"- RSS: {rss_before / 1024:.1f} MiB before, {after_first[0] / 1024:.1f} MiB after the first minute, "
                  f"{samples[-1][1] / 1024:.1f} MiB at the end, peak {max(s[1] for s in samples) / 1024:.1f} MiB; "
                  f"growth after the first minute {(samples[-1][1] - after_first[0]) / 1024:+.1f} MiB")
            print(f"- descriptors: {fds_before} before, peak {max(s[2] for s in samples)}, "
                  f"{fds_after} once the load stopped (idle backend connections stay pooled)")
        finally:
            if edge is not None:
                edge.stop()
            origin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
