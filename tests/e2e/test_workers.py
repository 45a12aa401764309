"""[edge] workers = N: several processes accept on the same ports; reload and stop reach them all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from tests.support.config import passthrough


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def wait_for(predicate, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


def test_two_workers_share_the_ports_and_follow_reload_and_stop(edge, tls_origin, ca):
    origin = tls_origin("pass.example.test")
    e = edge(passthrough(f"127.0.0.1:{origin.port}"), log_format="json", workers=2)
    wait_for(lambda: len(children(e.pid)) == 1)
    wait_for(lambda: e.log().count("Starting reactor") == 2)
    served = set()
    for _ in range(60):
        result = subprocess.run(["curl", "-sS", "--max-time", "10", "--resolve",
                                 f"pass.example.test:{e.https_port}:127.0.0.1", "--cacert", str(ca.ca_pem),
                                 f"https://pass.example.test:{e.https_port}/"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr

    def both_served() -> bool:
        for line in e.log().split("\n")[:-1]:
            event = json.loads(line)
            if event.get("logger") == "edge.access" and event.get("sni") == "pass.example.test":
                served.add(event["worker"])
        return served == {0, 1}

    wait_for(both_served)  # the kernel spread the connections over both processes
    worker = children(e.pid)[0]
    os.kill(e.pid, signal.SIGHUP)
    wait_for(lambda: e.log().count("reloaded") == 2)  # the worker reloaded too
    e.proc.send_signal(signal.SIGTERM)
    assert e.proc.wait(30) in (0, -signal.SIGTERM)
    wait_for(lambda: not os.path.exists(f"/proc/{worker}"))
