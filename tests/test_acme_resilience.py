"""ACME that survives what a user's box does to it: stops mid-order, corrupt state, crashes between
writes, reloads mid-order, a flaky CA.  Real pebble, faults injected with its own environment variables."""

from __future__ import annotations

import re
import time

from tests.support.acme import Pebble
from tests.support.edge import Edge
from tests.support.procs import free_port
from tests.test_acme import HOSTS, acme_body, dns, fetch, origin  # noqa: F401 (fixtures)

DRAIN = 2.0


def wait_exit(program, timeout: float) -> float:
    """Seconds until ``program`` exited; AssertionError if it is still running after ``timeout``."""
    began = time.monotonic()
    while program.proc.poll() is None:
        if time.monotonic() - began > timeout:
            raise AssertionError(f"still running {timeout:g}s after SIGTERM:\n{program.log()}")
        time.sleep(0.05)
    return time.monotonic() - began


def test_sigterm_during_a_validation_exits_within_the_drain_time(start, tmp_path, ca, dns, origin):
    """pebble's VA sleeps before validating: the order is polling its authorization when SIGTERM comes."""
    ports = {"http": free_port(), "https": free_port()}
    pebble = start(Pebble, tmp_path, ca, dns.dns_port, ports["http"], ports["https"],
                   env={"PEBBLE_VA_NOSLEEP": None, "PEBBLE_VA_SLEEPTIME": "40"})
    edge = start(Edge, tmp_path / "edge", acme_body(origin, pebble.directory, ca), ports=ports,
                 timeouts=f'inspect = "2s"\nconnect = "2s"\ndrain = "{DRAIN:g}s"')
    # Both hosts are ordered one after the other: wait for a validation that sleeps long enough.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(int(n) >= 5 for n in re.findall(r"Sleeping for (\d+)", pebble.log())):
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"no validation in flight:\n{pebble.log()}")
    assert "obtained from ACME" not in edge.log() or "ordering a certificate for b.example.test" in edge.log()
    edge.proc.send_signal(15)
    took = wait_exit(edge, DRAIN + 5)
    assert edge.proc.returncode in (0, -15), edge.log()  # twist re-raises the signal that stopped it
    assert took < DRAIN + 5
    assert "Traceback" not in edge.log(), edge.log()
    assert "failed" not in edge.log(), edge.log()
