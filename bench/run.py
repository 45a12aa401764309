#!/usr/bin/env python3
"""Side-by-side benchmark: edge against HAProxy, nginx and sslh, on loopback.

    python3 bench/run.py              # full run (several minutes), writes docs/benchmarks.md
    python3 bench/run.py --smoke      # seconds, to keep the harness working (CI); writes nothing by default

Needs Debian's nginx, haproxy, sslh, wrk, nghttp2-client (h2load), openssl and
curl (the README's test command installs them).  Every contestant forwards to
the same nginx origin; scenarios run in interleaved rounds (A, B, C, then B,
C, A, ...: each round starts with another contestant) and the table shows
medians and the ratio to HAProxy.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import re
import resource
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.contestants import CONTESTANTS, ROOT, Edge  # noqa: E402
from tests.support.certs import TestCA  # noqa: E402
from tests.support.procs import Program, free_port, rss_kib, wait_listening  # noqa: E402


class Origin:
    """nginx serving a 1 KiB file and a bulk file over plain HTTP and over TLS."""

    def __init__(self, tmp: Path, cert: Path, key: Path, bulk_bytes: int) -> None:
        www = tmp / "www"
        www.mkdir(parents=True)
        (www / "1k").write_bytes(b"x" * 1024)
        with open(www / "bulk", "wb") as f:
            f.truncate(bulk_bytes)
        self.bulk_bytes = bulk_bytes
        self.http, self.tls = free_port(), free_port()
        (tmp / "logs").mkdir()
        config = tmp / "nginx.conf"
        config.write_text(textwrap.dedent(f"""
            daemon off; master_process off; worker_processes 1; error_log stderr warn; pid nginx.pid;
            events {{ worker_connections 19000; }}
            http {{
              access_log off; sendfile on; keepalive_requests 1000000; keepalive_timeout 600s;
              server {{ listen 127.0.0.1:{self.http} backlog=4096; root {www}; }}
              server {{ listen 127.0.0.1:{self.tls} ssl backlog=4096; root {www};
                       ssl_certificate {cert}; ssl_certificate_key {key}; }}
            }}
            """))
        self.program = Program(["nginx", "-p", str(tmp), "-c", str(config)], tmp / "origin.log")
        wait_listening(self.http, proc=self.program.proc)
        wait_listening(self.tls, proc=self.program.proc)
        # Read the bulk file once, so the first contestant's download is not the one that fills the page cache.
        subprocess.run(["curl", "-sS", "-o", "/dev/null", f"http://127.0.0.1:{self.http}/bulk"], check=True, timeout=600)


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / 100.0
        except (OSError, IndexError):
            pass
    return total


def wrk(url: str, seconds: float, connections: int, close: bool = False) -> dict:
    argv = ["wrk", "-t", "2", "-c", str(connections), "-d", f"{int(max(1, seconds))}s", "--latency", url]
    if close:
        argv[1:1] = ["-H", "Connection: close"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    out = result.stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise RuntimeError(f"wrk failed: {out}{result.stderr}")
    rps = float(match.group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {"rps": rps, "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan")}


def h2load(url: str, seconds: float, connections: int) -> dict:
    out = subprocess.run(["h2load", "-D", str(int(max(1, seconds))), "-c", str(connections), "-m", "10", "-t", "2", url],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    match = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    return {"rps": float(match.group(1)) if match else float("nan")}


def bulk(url: str, contestant) -> dict:
    before = cpu_seconds(contestant.pids())
    started = time.monotonic()
    subprocess.run(["curl", "-sS", "-k", "-o", "/dev/null", url], check=True, timeout=600)
    elapsed = time.monotonic() - started
    used = cpu_seconds(contestant.pids()) - before
    size = contestant.origin.bulk_bytes
    return {"MBps": size / elapsed / 1e6, "cpu_s_per_GB": used / (size / 1e9)}


def s_time(port: int, seconds: float, reuse: bool) -> dict:
    """TLS handshakes per second (wall clock) by ``openssl s_time``, which sends no SNI."""
    started = time.monotonic()
    result = subprocess.run(["openssl", "s_time", "-connect", f"127.0.0.1:{port}",
                             "-reuse" if reuse else "-new", "-time", str(int(max(1, seconds)))],
                            capture_output=True, text=True, timeout=seconds + 60)
    elapsed = time.monotonic() - started
    match = re.search(r"(\d+) connections in [\d.]+s", result.stdout)
    if not match:
        raise RuntimeError(f"s_time failed: {result.stdout[-500:]}{result.stderr[-500:]}")
    return {"hps": int(match.group(1)) / elapsed}


def idle_memory(port: int, contestant, count: int, tls: bool) -> dict:
    """RSS per idle connection: open ``count`` connections (handshaken if TLS) and hold them."""
    before = sum(rss_kib(pid) for pid in contestant.pids())
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    held = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            if tls:
                sock = context.wrap_socket(sock, server_hostname="localhost")
            held.append(sock)
        time.sleep(1.0)
        after = sum(rss_kib(pid) for pid in contestant.pids())
    finally:
        for sock in held:
            sock.close()
    return {"KiB_per_conn": (after - before) / count}


NOTES_MARK = "## Notes"

SCENARIOS = [
    # name, mode, measure, unit key, contestants filter
    ("1. passthrough keep-alive 1 KiB (wrk, 50 conns)", "passthrough", "wrk", "rps"),
    ("1. passthrough keep-alive p99 ms", "passthrough", "wrk", "p99_ms"),
    ("2. passthrough new connection per request", "passthrough", "wrk_close", "rps"),
    ("3. passthrough bulk MB/s", "passthrough", "bulk", "MBps"),
    ("3. passthrough bulk CPU s/GB", "passthrough", "bulk", "cpu_s_per_GB"),
    ("4. TCP (SSH door) bulk MB/s", "tcp", "bulk_plain", "MBps"),
    ("5. terminated HTTP/1.1 keep-alive 1 KiB (wrk)", "terminate", "wrk", "rps"),
    ("5. terminated HTTP/1.1 p99 ms", "terminate", "wrk", "p99_ms"),
    ("5. terminated HTTP/2 (h2load, 10 streams)", "terminate", "h2load", "rps"),
    ("6. full handshakes/s (terminated)", "terminate", "s_time_new", "hps"),
    ("6. resumed handshakes/s (terminated)", "terminate", "s_time_reuse", "hps"),
    ("7. idle passthrough: KiB per connection", "passthrough", "idle", "KiB_per_conn"),
    ("7. idle terminated: KiB per connection", "terminate", "idle_tls", "KiB_per_conn"),
]


def measure(kind: str, c, args) -> dict:
    url = f"https://localhost:{c.port}/1k"
    if kind == "wrk":
        return wrk(url, args.duration, 50)
    if kind == "wrk_close":
        return wrk(url, args.duration, 50, close=True)
    if kind == "h2load":
        return h2load(url, args.duration, 10)
    if kind == "bulk":
        return bulk(f"https://localhost:{c.port}/bulk", c)
    if kind == "bulk_plain":
        return bulk(f"http://127.0.0.1:{c.port}/bulk", c)
    if kind == "s_time_new":
        return s_time(c.port, args.duration, reuse=False)
    if kind == "s_time_reuse":
        return s_time(c.port, args.duration, reuse=True)
    if kind == "idle":
        return idle_memory(c.port, c, args.idle, tls=True)
    if kind == "idle_tls":
        return idle_memory(c.port, c, args.idle, tls=True)
    raise ValueError(kind)


def run_scenarios(args, tmp: Path, origin, cert, key) -> dict:
    results: dict[tuple[str, str], list[float]] = {}
    groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for title, mode, kind, unit in SCENARIOS:
        if args.only and title.split(".", 1)[0] not in args.only:
            continue
        groups.setdefault((mode, kind), []).append((title, unit))
    for (mode, kind), rows in groups.items():
        for round_number in range(args.rounds):
            shift = round_number % len(CONTESTANTS)  # each round starts with another contestant
            for cls in CONTESTANTS[shift:] + CONTESTANTS[:shift]:
                if args.contestants and cls.name not in args.contestants:
                    continue
                if mode not in cls.modes or (kind == "h2load" and cls.name == "sslh"):
                    continue
                c = cls(tmp / f"{cls.name}-{mode}-{kind}-{round_number}", mode, origin, cert, key)
                try:
                    outcome = measure(kind, c, args)
                except Exception as e:  # a contestant that cannot do it (sslh-select: select() caps at 1024 fds)
                    print(f"  {cls.name} failed {kind}: {type(e).__name__}: {e}", flush=True)
                    outcome = {unit: float("nan") for _, unit in rows}
                finally:
                    c.stop()
                for title, unit in rows:
                    results.setdefault((title, cls.name), []).append(outcome[unit])
                print(f"  {mode:11} {kind:12} round {round_number + 1} {cls.name:8} {outcome}", flush=True)
    # 8. route scale: new connections/s with 10 and 10,000 routes (edge only).
    for routes in (10, 10_000) if not args.only or "8" in args.only else ():
        samples = []
        for round_number in range(args.rounds):
            c = Edge(tmp / f"edge-routes-{routes}-{round_number}", "passthrough", origin, cert, key, routes=routes)
            try:
                samples.append(wrk(f"https://localhost:{c.port}/1k", args.duration, 50, close=True)["rps"])
            finally:
                c.stop()
        results[(f"8. new conns/s with {routes} routes", "edge")] = samples
        print(f"  routes {routes}: {samples}", flush=True)
    if not args.only or "8" in args.only:
        for routes in (10, 10_000):
            results[(f"8. route lookup ns with {routes} routes", "edge")] = [lookup_ns(routes)]
    return results


def lookup_ns(routes: int) -> float:
    """Nanoseconds per host lookup (exact, wildcard and unknown names) in a table of ``routes`` routes."""
    import timeit
    import tomllib

    from edge.config import parse
    from edge.routes import RouteTable

    text = "[backends.pass]\nservers = [\"127.0.0.1:1\"]\n" + "".join(
        f'[[routes]]\nhosts = ["h{i}.bench.test", "*.w{i}.bench.test"]\ntls = "passthrough"\nbackend = "pass"\n'
        for i in range(routes))
    table = RouteTable(parse(tomllib.loads(text)).routes)
    names = ["h7.bench.test", "a.b.w3.bench.test", "unknown.example.test"]
    loops = 20_000
    best = min(timeit.repeat(lambda: [table.lookup(n) for n in names], number=loops, repeat=5))
    return best / loops / len(names) * 1e9


def versions() -> dict[str, str]:
    def first(argv):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (out.stdout + out.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"
    return {"haproxy": first(["haproxy", "-v"]), "nginx": first(["nginx", "-v"]),
            "sslh": first(["sslh-select", "-V"]), "wrk": first(["wrk", "--version"]),
            "python": sys.version.split()[0], "openssl": first(["openssl", "version"])}


def table(results: dict) -> str:
    names = [cls.name for cls in CONTESTANTS]
    titles = list(dict.fromkeys(title for title, _ in results))
    lines = ["| scenario | " + " | ".join(names) + " | edge / haproxy |", "|---" * (len(names) + 2) + "|"]
    for title in titles:
        medians = {n: statistics.median(results[(title, n)]) for n in names if (title, n) in results}
        cells = [("failed" if medians[n] != medians[n] else f"{medians[n]:,.1f}") if n in medians else "—"
                 for n in names]
        ratio = f"{medians['edge'] / medians['haproxy']:.2f}" if "edge" in medians and medians.get("haproxy") else "—"
        lines.append(f"| {title} | " + " | ".join(cells) + f" | {ratio} |")
    scale = [t for t in titles if t.startswith("8. new conns")]
    if len(scale) == 2:
        a, b = (statistics.median(results[(t, "edge")]) for t in scale)
        lines.append("| 8. dispatch cost ratio, 10 / 10,000 routes | " + "— | " * len(names) + f"{a / b:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="seconds, not minutes: 1 round, 1 s runs, small files")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk/h2load/s_time run")
    parser.add_argument("--bulk-mb", type=int, default=1024)
    parser.add_argument("--idle", type=int, default=10_000, help="idle connections for scenario 7")
    parser.add_argument("--out", default=None, help="markdown report (default docs/benchmarks.md, none with --smoke)")
    parser.add_argument("--only", default="", help="scenario numbers to run, e.g. 1,5 (default all)")
    parser.add_argument("--contestants", default="", help="names to run, e.g. edge,haproxy (default all)")
    args = parser.parse_args()
    args.only = {n.strip() for n in args.only.split(",") if n.strip()}
    args.contestants = {n.strip() for n in args.contestants.split(",") if n.strip()}
    if args.smoke:
        args.rounds, args.duration, args.bulk_mb, args.idle = 1, 1.0, 20, 100
    out = Path(args.out) if args.out else (None if args.smoke else ROOT / "docs" / "benchmarks.md")
    missing = [tool for tool in ("nginx", "haproxy", "sslh-select", "wrk", "h2load", "openssl", "curl")
               if not shutil.which(tool)]
    if missing:
        print(f"missing: {' '.join(missing)} (apt-get install nginx haproxy sslh wrk nghttp2-client openssl curl)")
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as name:
        tmp = Path(name)
        ca = TestCA(tmp / "ca")
        cert, key, _ = ca.issue("localhost")
        origin = Origin(tmp / "origin", cert, key, args.bulk_mb * 1024 * 1024)
        try:
            started = time.monotonic()
            results = run_scenarios(args, tmp, origin, cert, key)
        finally:
            origin.program.stop()
    report = table(results)
    print(report)
    if out is not None:
        info = versions()
        notes = ""  # hand-written analysis below the table survives a rerun
        if out.exists() and NOTES_MARK in out.read_text():
            notes = out.read_text()[out.read_text().index(NOTES_MARK):]
        command = " ".join(["bench/run.py", *sys.argv[1:]])
        out.write_text(textwrap.dedent(f"""\
            # Benchmarks

            Made by `{command}` on {datetime.date.today()} ({time.monotonic() - started:.0f} s):
            {platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores, {platform.platform()}.
            {args.rounds} interleaved rounds of {args.duration:g} s per measurement, medians; bulk file {args.bulk_mb} MiB;
            {args.idle} idle connections. All on loopback; the origin is nginx; wrk and h2load are the clients.
            Versions: {'; '.join(f'{k} {v}' for k, v in info.items())}.

            """) + report + "\n" + ("\n" + notes if notes else ""))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
