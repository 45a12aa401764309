"""What a person and a log shipper read: clean JSON lines and text lines, and fail2ban's filter on both.

The edge runs for real, with the traffic a scanner sends next to a user's; ``fail2ban-regex`` (Debian's
fail2ban) applies the shipped filter, etc/fail2ban/edge.conf, to the edge's own log.
"""

from __future__ import annotations

import datetime
import json
import re
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from edge.ops import logs
from tests.support.config import site
from tests.support.procs import free_port, wait_listening
from tests.support.servers import Nginx
from tests.e2e.test_terminate import local_ca

FILTER = Path(__file__).resolve().parents[2] / "etc" / "fail2ban" / "edge.conf"


def test_json_line_has_time_level_logger_message_then_the_fields():
    when = datetime.datetime(2026, 11, 28, 15, 30, 55, 774000, tzinfo=datetime.timezone.utc)
    event = {"log_time": when.timestamp(), "log_level": LogLevel.warn, "log_namespace": "edge.acme",
             "log_format": "certificate for {host} expires {expiry:%Y-%m-%d}", "host": "a.test", "expiry": when,
             "raw": b"\xff", "names": ("a", "b"), "log_logger": Logger(), "log_source": object()}
    line = logs.json_line(event)
    assert line.endswith("\n") and line.count("\n") == 1
    parsed = json.loads(line)
    assert list(parsed)[:4] == ["time", "level", "logger", "message"]
    assert parsed == {"time": "2026-11-28T15:30:55.774Z", "level": "warn", "logger": "edge.acme",
                      "message": "certificate for a.test expires 2026-11-28", "host": "a.test",
                      "expiry": "2026-11-28T15:30:55.774Z", "raw": "\ufffd", "names": ["a", "b"]}


def test_json_line_of_a_failure_and_of_a_legacy_event():
    try:
        1 / 0
    except ZeroDivisionError:
        failure = Failure()
    parsed = json.loads(logs.json_line({"log_time": 0.0, "log_level": LogLevel.critical, "log_namespace": "x",
                                        "log_format": "boom", "log_failure": failure}))
    assert parsed["error"] == "ZeroDivisionError: division by zero" and "Traceback" in parsed["traceback"]
    legacy = {"log_time": 1.0, "log_level": LogLevel.info, "log_namespace": "log_legacy", "log_format": "{log_text}",
              "log_text": "hello", "message": ("hello",), "system": "-", "time": 1.0, "isError": 0}
    assert json.loads(logs.json_line(legacy)) == {"time": "1970-01-01T00:00:01.000Z", "level": "info",
                                                  "logger": "log_legacy", "message": "hello"}


@pytest.mark.parametrize("text, noise", [
    ("DispatchFactory starting on 8443", True), ("(TCP Port 8443 Closed)", True), ("Site starting on 9099", True),
    ("Starting factory <x>", True), ("something else starting on a boat trip", False), ("hello", False),
])
def test_legacy_chatter_is_dropped(text, noise):
    assert logs.is_noise({"log_namespace": "log_legacy", "log_text": text}) is noise


def test_factory_chatter_is_dropped():
    assert logs.is_noise({"log_namespace": "twisted.web.client._HTTP11ClientFactory",
                          "log_format": "Starting factory {factory!r}", "factory": object()})


@pytest.fixture
def web(start, tmp_path):
    port = free_port()
    nginx = start(Nginx, tmp_path, f'server {{ listen 127.0.0.1:{port}; return 200 "web\\n"; }}')
    wait_listening(port, proc=nginx.proc)
    return port


def scanner_and_user(e, port: int) -> int:
    """A user's requests and a scanner's; returns how many failures the filter must count."""
    context = ssl.create_default_context(cafile=str(local_ca(e)))
    for _ in range(3):  # the user: a redirect, a page
        subprocess.run(["curl", "-sS", "-o", "/dev/null", "-H", "Host: app.example.test",
                        f"http://127.0.0.1:{e.http_port}/"], check=True, timeout=20)
        subprocess.run(["curl", "-sS", "-o", "/dev/null", "--cacert", str(local_ca(e)), "--resolve",
                        f"app.example.test:{e.https_port}:127.0.0.1", f"https://app.example.test:{e.https_port}/"],
                       check=True, timeout=20)
    failures = 0
    with socket.create_connection(("127.0.0.1", e.https_port), timeout=10) as raw:  # not TLS, SSH or HTTP
        raw.sendall(b"\x00\x01garbage" * 10)
        assert raw.recv(10) == b""
    failures += 1
    with socket.create_connection(("127.0.0.1", e.https_port), timeout=10) as raw:  # a name nobody routes
        with pytest.raises(ssl.SSLError):
            context.wrap_socket(raw, server_hostname="admin.example.test")
    failures += 1
    with socket.create_connection(("127.0.0.1", e.https_port), timeout=10) as raw:  # Host is not the TLS name
        with context.wrap_socket(raw, server_hostname="app.example.test") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: other.example.test\r\nConnection: close\r\n\r\n")
            assert tls.recv(100).startswith(b"HTTP/1.1 421")
            while tls.recv(4096):
                pass
    failures += 1
    with socket.create_connection(("127.0.0.1", e.http_port), timeout=10) as raw:  # smuggling attempt on 80
        raw.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx")
        assert raw.recv(100).startswith(b"HTTP/1.1 400")
    failures += 1
    return failures


def fail2ban(log: Path) -> tuple[int, list[str]]:
    out = subprocess.run(["fail2ban-regex", "--print-all-matched", str(log), str(FILTER)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    matched = re.search(r"^Lines: \d+ lines, \d+ ignored, (\d+) matched", out.stdout, re.M)
    assert matched, out.stdout
    return int(matched.group(1)), out.stdout


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_fail2ban_filter_counts_the_scanner_not_the_user(edge, web, log_format):
    e = edge(site(f"http://127.0.0.1:{web}", host=["app.example.test", "other.example.test"]), log_format=log_format)
    failures = scanner_and_user(e, web)
    log_file = e.config.parent / "edge.log"
    e.wait_log("error: invalid Content-Length")  # the last connection's line: written when it closed
    matched, report = fail2ban(log_file)
    assert matched == failures, report
    assert "127.0.0.1" in report
    if log_format == "json":
        for line in log_file.read_text().splitlines():
            event = json.loads(line)  # every line one clean object
            assert {"time", "level", "logger", "message"} <= set(event) and "log_flattened" not in line
            assert not re.search(r"starting on|Port \d+ Closed|__class_uuid__|unpersistable", line), line
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event["time"])
        expiry = next(json.loads(line) for line in log_file.read_text().splitlines() if '"expires"' in line
                      or "local CA" in line)
        assert expiry["logger"] == "edge.app.runtime"
    else:
        text = log_file.read_text()
        assert "starting on" not in text and "Closed)" not in text and "\x1e" not in text
