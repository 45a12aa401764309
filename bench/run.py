#!/usr/bin/env python3
"""Side-by-side benchmark: edge against HAProxy, nginx and sslh, on loopback.

    python3 bench/run.py              # full run (several minutes), writes docs/benchmarks.md
    python3 bench/run.py --smoke      # seconds, to keep the harness working (CI); writes nothing by default
    python3 bench/run.py --per-core   # only the per-core rows (see below)

Needs Debian's nginx, haproxy, sslh, wrk, nghttp2-client (h2load), openssl and
curl (the README's test command installs them).  Every contestant forwards to
the same nginx origin; scenarios run in interleaved rounds (A, B, C, then B,
C, A, ...: each round starts with another contestant) and the table shows
medians and the ratio to HAProxy.

Every contestant gets the same client with the same settings, and the client
runs ONE thread (``wrk -t 1``, ``h2load -t 1``): with two client threads on a
two-core machine the client takes the CPU a multi-threaded-capable proxy would
use, which flatters a single-threaded one.  Scenario 5's HTTP/2 load is h2load
with 10 connections of 10 concurrent streams each (``-c 10 -m 10``) fetching a
1 KiB file; a run that does not negotiate h2 counts as failed.

Per-core rows (``... (per core)``; part of the full run, alone with
``--per-core``, left out with ``--no-per-core``) repeat the request-rate
scenarios (1, 2, 5 and 6) with the proxy confined to one CPU and everything
else on another: each contestant is started with the harness's affinity set
to the first CPU, so all its processes (edge's workers, nginx's and HAProxy's
forks) and threads inherit it (and are pinned again after they start, then
checked); the client (wrk, h2load, ``openssl s_time``) runs under
``taskset -c`` on the second CPU, where the nginx origin is pinned too for
those rows.  That is requests per second per proxy core, with the client
never competing with the proxy.  Two more rows per measurement say how much
of its CPU the proxy used ("proxy CPU %") and how busy the other CPU was
("client CPU %": client, origin and anything else running there): a proxy well
under 100 next to a full client CPU was held back by the client, not by itself.
It needs two CPUs (else the rows are skipped).
``--smoke`` runs the per-core rows of scenario 5 only.

Scenario 7 measures RSS per idle connection: passthrough, terminated TLS, and
terminated HTTP/2 (ALPN h2, the client preface and both SETTINGS frames
exchanged and acknowledged, with the h2 library over Python's ssl).
"""

from __future__ import annotations

import argparse
import datetime
import os
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


def cpu_busy(cpu: int) -> tuple[float, float]:
    """CPU ``cpu``'s busy and total seconds since boot (every process on it, not only ours)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            ticks = [int(x) for x in line.split()[1:]]
            idle = ticks[3] + ticks[4]  # idle, iowait
            return (sum(ticks[:8]) - idle) / 100.0, sum(ticks[:8]) / 100.0
    raise RuntimeError(f"no cpu{cpu} in /proc/stat")


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / 100.0
        except (OSError, IndexError):
            pass
    return total


def on_cpu(argv: list[str], cpu: int | None) -> list[str]:
    """``argv`` run on CPU ``cpu`` only (``taskset -c``), or as it is if ``cpu`` is None."""
    return argv if cpu is None else ["taskset", "-c", str(cpu), *argv]


def wrk(url: str, seconds: float, connections: int, close: bool = False, cpu: int | None = None) -> dict:
    """wrk with ONE thread (``-t 1``) for every contestant, so the client never takes a second core."""
    argv = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{int(max(1, seconds))}s", "--latency", url]
    if close:
        argv[1:1] = ["-H", "Connection: close"]
    result = subprocess.run(on_cpu(argv, cpu), capture_output=True, text=True, timeout=seconds + 60)
    out = result.stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise RuntimeError(f"wrk failed: {out}{result.stderr}")
    rps = float(match.group(1))
    total = re.search(r"(\d+) requests in", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {"rps": rps, "requests": int(total.group(1)) if total else 0,
            "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan")}


def h2load(url: str, seconds: float, connections: int, streams: int = 10, cpu: int | None = None) -> dict:
    """h2load with ONE thread: ``connections`` connections of ``streams`` concurrent streams each."""
    argv = ["h2load", "-D", str(int(max(1, seconds))), "-c", str(connections), "-m", str(streams), "-t", "1", url]
    result = subprocess.run(on_cpu(argv, cpu), capture_output=True, text=True, timeout=seconds + 60)
    out = result.stdout
    if "Application protocol: h2" not in out:
        raise RuntimeError(f"h2load did not negotiate h2: {out[-800:]}{result.stderr[-500:]}")
    match = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    counts = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", out)
    if not match or not counts:
        raise RuntimeError(f"h2load failed: {out[-800:]}{result.stderr[-500:]}")
    succeeded, failed = int(counts.group(1)), int(counts.group(2))
    if failed > max(100, succeeded // 100):  # a server that ends connections (GOAWAY) under load stops the run
        raise RuntimeError(f"h2load: {failed} requests failed, {succeeded} succeeded")
    return {"rps": float(match.group(1))}


def bulk(url: str, contestant, cpu: int | None = None) -> dict:
    before = cpu_seconds(contestant.pids())
    started = time.monotonic()
    subprocess.run(on_cpu(["curl", "-sS", "-k", "-o", "/dev/null", url], cpu), check=True, timeout=600)
    elapsed = time.monotonic() - started
    used = cpu_seconds(contestant.pids()) - before
    size = contestant.origin.bulk_bytes
    return {"MBps": size / elapsed / 1e6, "cpu_s_per_GB": used / (size / 1e9)}


def s_time(port: int, seconds: float, reuse: bool, cpu: int | None = None) -> dict:
    """TLS handshakes per second (wall clock) by ``openssl s_time``, which sends no SNI."""
    started = time.monotonic()
    result = subprocess.run(on_cpu(["openssl", "s_time", "-connect", f"127.0.0.1:{port}",
                                    "-reuse" if reuse else "-new", "-time", str(int(max(1, seconds)))], cpu),
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


def idle_h2_memory(port: int, contestant, count: int) -> dict:
    """RSS per idle terminated HTTP/2 connection: ``count`` TLS connections with ALPN h2 on which the
    client preface and SETTINGS went both ways (each side's SETTINGS acknowledged), then held."""
    import h2.config
    import h2.connection
    import h2.events

    before = sum(rss_kib(pid) for pid in contestant.pids())
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    held = []
    try:
        for _ in range(count):
            sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                       server_hostname="localhost")
            held.append(sock)
            if sock.selected_alpn_protocol() != "h2":
                raise RuntimeError(f"ALPN chose {sock.selected_alpn_protocol()!r}, not h2")
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            sock.sendall(conn.data_to_send())
            settings = acknowledged = False
            while not (settings and acknowledged):
                data = sock.recv(65536)
                if not data:
                    raise RuntimeError("the server closed during the HTTP/2 preface")
                for event in conn.receive_data(data):
                    settings |= isinstance(event, h2.events.RemoteSettingsChanged)
                    acknowledged |= isinstance(event, h2.events.SettingsAcknowledged)
                    if isinstance(event, h2.events.ConnectionTerminated):
                        raise RuntimeError(f"GOAWAY during the HTTP/2 preface: {event}")
                sock.sendall(conn.data_to_send())  # our ACK of the server's SETTINGS
            # The client's H2Connection is dropped: only the socket is held, the server's state is measured.
        time.sleep(1.0)
        after = sum(rss_kib(pid) for pid in contestant.pids())
    finally:
        for sock in held:
            sock.close()
    return {"KiB_per_conn": (after - before) / count}


NOTES_MARK = "## Notes"

SCENARIOS = [
    # name, mode, measure, unit key
    ("1. passthrough keep-alive 1 KiB (wrk, 50 conns)", "passthrough", "wrk", "rps"),
    ("1. passthrough keep-alive p99 ms", "passthrough", "wrk", "p99_ms"),
    ("2. passthrough new connection per request", "passthrough", "wrk_close", "rps"),
    ("3. passthrough bulk MB/s", "passthrough", "bulk", "MBps"),
    ("3. passthrough bulk CPU s/GB", "passthrough", "bulk", "cpu_s_per_GB"),
    ("4. TCP (SSH door) bulk MB/s", "tcp", "bulk_plain", "MBps"),
    ("5. terminated HTTP/1.1 keep-alive 1 KiB (wrk)", "terminate", "wrk", "rps"),
    ("5. terminated HTTP/1.1 p99 ms", "terminate", "wrk", "p99_ms"),
    ("5. terminated HTTP/2 (h2load, 10 conns x 10 streams)", "terminate", "h2load", "rps"),
    ("6. full handshakes/s (terminated)", "terminate", "s_time_new", "hps"),
    ("6. resumed handshakes/s (terminated)", "terminate", "s_time_reuse", "hps"),
    ("7. idle passthrough: KiB per connection", "passthrough", "idle", "KiB_per_conn"),
    ("7. idle terminated: KiB per connection", "terminate", "idle_tls", "KiB_per_conn"),
    ("7. idle terminated HTTP/2: KiB per connection", "terminate", "idle_h2", "KiB_per_conn"),
]

PER_CORE = " (per core)"
PER_CORE_KINDS = ("wrk", "wrk_close", "h2load", "s_time_new", "s_time_reuse")  # the request-rate scenarios
SMOKE_PER_CORE_KINDS = ("wrk", "h2load")  # and, in --smoke, of scenario 5 only (terminate mode)


def measure(kind: str, c, args, cpu: int | None = None) -> dict:
    """One measurement of contestant ``c``; the client runs on CPU ``cpu`` if given."""
    url = f"https://localhost:{c.port}/1k"
    if kind == "wrk":
        return wrk(url, args.duration, 50, cpu=cpu)
    if kind == "wrk_close":
        return wrk(url, args.duration, 50, close=True, cpu=cpu)
    if kind == "h2load":
        return h2load(url, args.duration, 10, streams=10, cpu=cpu)  # the issue's load: -c 10 -m 10, 1 KiB responses
    if kind == "bulk":
        return bulk(f"https://localhost:{c.port}/bulk", c, cpu=cpu)
    if kind == "bulk_plain":
        return bulk(f"http://127.0.0.1:{c.port}/bulk", c, cpu=cpu)
    if kind == "s_time_new":
        return s_time(c.port, args.duration, reuse=False, cpu=cpu)
    if kind == "s_time_reuse":
        return s_time(c.port, args.duration, reuse=True, cpu=cpu)
    if kind == "idle":
        return idle_memory(c.port, c, args.idle, tls=True)
    if kind == "idle_tls":
        return idle_memory(c.port, c, args.idle, tls=True)
    if kind == "idle_h2":
        return idle_h2_memory(c.port, c, args.idle)
    raise ValueError(kind)


class Cores:
    """Per-core mode: the proxy on one CPU, the client and the origin on another."""

    def __init__(self) -> None:
        self.all = os.sched_getaffinity(0)
        cpus = sorted(self.all)
        if len(cpus) < 2:
            raise RuntimeError(f"per-core mode needs two CPUs, this process may use {cpus}")
        self.proxy, self.client = cpus[0], cpus[1]

    @staticmethod
    def tasks(pids: list[int]) -> list[int]:
        """Every thread of every process in ``pids``."""
        found = []
        for pid in pids:
            try:
                found += [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
            except OSError:
                pass
        return found

    @classmethod
    def pin(cls, pids: list[int], cpus: set[int]) -> None:
        for tid in cls.tasks(pids):
            try:
                os.sched_setaffinity(tid, cpus)
            except (ProcessLookupError, PermissionError):
                pass

    def start(self, cls, *args, **kwargs):
        """Start contestant ``cls`` on the proxy CPU: the harness takes that affinity while it starts the
        programs, so every process and thread the contestant starts or forks inherits it; they are pinned
        again once it is ready (for anything that changed its own affinity), then checked."""
        os.sched_setaffinity(0, {self.proxy})
        try:
            c = cls(*args, **kwargs)
        finally:
            os.sched_setaffinity(0, {self.client})
        self.pin(c.pids(), {self.proxy})
        stray = {tid: os.sched_getaffinity(tid) for tid in self.tasks(c.pids())}
        stray = {tid: cpus for tid, cpus in stray.items() if cpus != {self.proxy}}
        if stray:
            c.stop()
            raise RuntimeError(f"{cls.name}: threads not on CPU {self.proxy}: {stray}")
        return c

    def __enter__(self) -> "Cores":
        os.sched_setaffinity(0, {self.client})  # the harness (and so anything it runs) off the proxy's CPU
        return self

    def __exit__(self, *exc) -> None:
        os.sched_setaffinity(0, self.all)


def run_scenarios(args, tmp: Path, origin, cert, key) -> dict:
    results: dict[tuple[str, str], list[float]] = {}
    groups: dict[tuple[str, str, bool], list[tuple[str, str]]] = {}
    per_core_kinds = SMOKE_PER_CORE_KINDS if args.smoke else PER_CORE_KINDS
    for per_core in (False, True):
        if (per_core and args.per_core == "no") or (not per_core and args.per_core == "only"):
            continue
        for title, mode, kind, unit in SCENARIOS:
            if args.only and title.split(".", 1)[0] not in args.only:
                continue
            if per_core and (kind not in per_core_kinds or (args.smoke and mode != "terminate")):
                continue
            groups.setdefault((mode, kind, per_core), []).append((title + (PER_CORE if per_core else ""), unit))
    cores = None
    if any(per_core for _, _, per_core in groups):
        try:
            cores = Cores()
        except RuntimeError as e:
            print(f"  per-core rows skipped: {e}", flush=True)
            groups = {key: rows for key, rows in groups.items() if not key[2]}
    for (mode, kind, per_core), rows in groups.items():
        if per_core:
            with cores:
                Cores.pin([origin.program.pid], {cores.client})
                try:
                    measure_group(args, tmp, origin, cert, key, mode, kind, rows, results, cores)
                finally:
                    Cores.pin([origin.program.pid], cores.all)
        else:
            measure_group(args, tmp, origin, cert, key, mode, kind, rows, results, None)
    # 8. route scale: new connections/s with 10 and 10,000 routes (edge only).
    for routes in (10, 10_000) if (not args.only or "8" in args.only) and args.per_core != "only" else ():
        samples = []
        for round_number in range(args.rounds):
            c = Edge(tmp / f"edge-routes-{routes}-{round_number}", "passthrough", origin, cert, key, routes=routes)
            try:
                samples.append(wrk(f"https://localhost:{c.port}/1k", args.duration, 50, close=True)["rps"])
            finally:
                c.stop()
        results[(f"8. new conns/s with {routes} routes", "edge")] = samples
        print(f"  routes {routes}: {samples}", flush=True)
    if (not args.only or "8" in args.only) and args.per_core != "only":
        for routes in (10, 10_000):
            results[(f"8. route lookup ns with {routes} routes", "edge")] = [lookup_ns(routes)]
    return results


def busy_title(rows: list[tuple[str, str]], who: str) -> str:
    """The per-core row saying how busy the proxy's (``who``) or the client's CPU was while ``rows`` were measured."""
    return rows[0][0].removesuffix(PER_CORE) + f": {who} CPU %" + PER_CORE


def measure_group(args, tmp, origin, cert, key, mode, kind, rows, results, cores: Cores | None) -> None:
    """``args.rounds`` interleaved rounds of one measurement over the contestants; with ``cores``, each
    contestant on the proxy CPU and the client on the other."""
    label = "per-core" if cores else ""
    for round_number in range(args.rounds):
        shift = round_number % len(CONTESTANTS)  # each round starts with another contestant
        for cls in CONTESTANTS[shift:] + CONTESTANTS[:shift]:
            if args.contestants and cls.name not in args.contestants:
                continue
            if mode not in cls.modes or (kind == "h2load" and cls.name == "sslh"):
                continue
            where = tmp / f"{cls.name}-{mode}-{kind}-{'core-' if cores else ''}{round_number}"
            c = cores.start(cls, where, mode, origin, cert, key) if cores else cls(where, mode, origin, cert, key)
            try:
                pids = c.pids()
                used, started = cpu_seconds(pids), time.monotonic()
                client = cpu_busy(cores.client) if cores else None
                outcome = measure(kind, c, args, cpu=cores.client if cores else None)
                # How busy the proxy was, and the client's CPU (client, origin and anything else on it):
                # a proxy well under 100% next to a full client CPU was limited by the client, not itself.
                outcome["cpu_pct"] = round(100 * (cpu_seconds(pids) - used) / (time.monotonic() - started), 1)
                if cores:
                    busy, total = cpu_busy(cores.client)
                    outcome["client_cpu_pct"] = round(100 * (busy - client[0]) / max(0.01, total - client[1]), 1)
            except Exception as e:  # a contestant that cannot do it (sslh-select: select() caps at 1024 fds)
                print(f"  {cls.name} failed {kind}: {type(e).__name__}: {e}", flush=True)
                outcome = {unit: float("nan") for _, unit in rows}
            finally:
                c.stop()
            for title, unit in rows:
                results.setdefault((title, cls.name), []).append(outcome[unit])
            if cores:
                for who, field in (("proxy", "cpu_pct"), ("client", "client_cpu_pct")):
                    results.setdefault((busy_title(rows, who), cls.name), []).append(outcome.get(field, float("nan")))
            print(f"  {mode:11} {kind:12} {label:8} round {round_number + 1} {cls.name:8} {outcome}", flush=True)


def lookup_ns(routes: int) -> float:
    """Nanoseconds per host lookup (exact, wildcard and unknown names) in a table of ``routes`` routes."""
    import timeit
    import tomllib

    from edge.config import parse
    from edge.config.routes import RouteTable

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
    pinning = parser.add_mutually_exclusive_group()
    pinning.add_argument("--per-core", dest="per_core", action="store_const", const="only", default="also",
                         help="only the per-core rows: each proxy on CPU 0, client and origin on CPU 1")
    pinning.add_argument("--no-per-core", dest="per_core", action="store_const", const="no",
                         help="leave out the per-core rows")
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
            {platform.machine()}, {len(os.sched_getaffinity(0))} cores, {platform.platform()}.
            {args.rounds} interleaved rounds of {args.duration:g} s per measurement, medians; bulk file {args.bulk_mb} MiB;
            {args.idle} idle connections. All on loopback; the origin is nginx; wrk and h2load are the clients,
            with the same settings for every contestant and one client thread (`-t 1`). Rows marked
            "(per core)": each contestant's processes pinned to one CPU, the client and the origin to another;
            "proxy CPU %" is the proxy's use of its CPU, "client CPU %" how busy the other CPU was (client, origin
            and anything else running): a proxy well under 100 next to a full client CPU was held back by the client.
            Versions: {'; '.join(f'{k} {v}' for k, v in info.items())}.

            """) + report + "\n" + ("\n" + notes if notes else ""))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
