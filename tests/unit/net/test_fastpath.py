"""The fenced fast paths (edge.net.fastpath, edge.tls.fast_tls): switches, probes, and the fallback with one warning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher

from edge.net import fastpath

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("environ, expected", [
    ({}, (False, frozenset())),
    ({"EDGE_FASTPATH": "on"}, (False, frozenset())),
    ({"EDGE_FASTPATH": "off"}, (True, frozenset())),
    ({"EDGE_FASTPATH": "off:epoll, splice"}, (False, frozenset({"epoll", "splice"}))),
    ({"EDGE_FAST_PATHS": "0"}, (True, frozenset())),  # the older switch
    ({"EDGE_FAST_PATHS": "1"}, (False, frozenset())),
])
def test_the_switch_reads_all_or_named_paths(environ, expected):
    assert fastpath.parse_switch(environ) == expected


def test_every_fast_path_is_on_with_this_twisted_and_pyopenssl():
    import edge.tls.fast_tls  # noqa: F401  (registers the TLS layer's paths)

    assert {name: path.missing for name, path in fastpath.PATHS.items() if not path.on} == {}
    assert {"write_buffer", "quick_close", "eager_write", "splice", "accept", "connect", "linger", "epoll",
            "systemd", "tls_io", "tls_bio_size", "tls_close", "tls_queue", "tls_direct"} <= set(fastpath.PATHS)


def _run(code: str, **environ: str) -> dict:
    """Run ``code`` in a fresh interpreter (edge not yet imported); it prints one JSON line, returned here."""
    env = {k: v for k, v in os.environ.items() if k not in ("EDGE_FASTPATH", "EDGE_FAST_PATHS")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**env, **environ}, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# Collects the warnings logged while edge's fast paths are decided, then reports what was decided.
_REPORT = """
import json
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
warnings = []
globalLogPublisher.addObserver(lambda e: e.get("log_level") is LogLevel.warn and warnings.append(formatEvent(e)))
{hide}
import edge.net.fastpath as f, edge.tls.fast_tls, edge.net.eager, edge.net.splice
on = sorted(name for name, path in f.PATHS.items() if path.on)
print(json.dumps({{"warnings": warnings, "on": on, "pending": f.pending_bytes(object()),
                   "plain_write": edge.net.eager.write_now.__doc__.startswith("``transport.write(data)`` (the"),
                   "splice": edge.net.splice.HAVE_SPLICE, "close_at_once": f.QuickClose.close_at_once}}))
"""

# Twisted's write buffer without one of its fields: every FileDescriptor made from now on lacks _tempDataLen.
_HIDE_TEMP_DATA_LEN = """
from twisted.internet.abstract import FileDescriptor
_init = FileDescriptor.__init__
def _without(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    del self._tempDataLen
FileDescriptor.__init__ = _without
"""


def test_a_hidden_internal_falls_back_with_exactly_one_warning():
    """A Twisted whose write buffer has no ``_tempDataLen``: the paths that read it (write_buffer, and
    quick_close, eager_write and splice, which need it) are off; one warning names what is missing;
    the rest stay on."""
    report = _run(_REPORT.format(hide=_HIDE_TEMP_DATA_LEN))
    assert len(report["warnings"]) == 1, report["warnings"]
    assert "write_buffer" in report["warnings"][0] and "_tempDataLen" in report["warnings"][0]
    assert not {"write_buffer", "quick_close", "eager_write", "splice"} & set(report["on"])
    assert {"accept", "connect", "linger", "epoll", "systemd", "tls_io", "tls_close"} <= set(report["on"])
    assert report["pending"] == 0 and report["plain_write"] and not report["splice"] and not report["close_at_once"]


def test_a_changed_signature_turns_off_only_its_path():
    """``tcp.Server.__init__`` taking other arguments: the copied constructor is not used (one warning)."""
    hide = ("from twisted.internet import tcp\n_init = tcp.Server.__init__\n"
            "tcp.Server.__init__ = lambda self, sock, protocol, client, server, sessionno, reactor, extra=None: "
            "_init(self, sock, protocol, client, server, sessionno, reactor)\n")
    report = _run(_REPORT.format(hide=hide))
    assert len(report["warnings"]) == 1 and "accept" in report["warnings"][0], report["warnings"]
    assert "accept" not in report["on"] and "write_buffer" in report["on"]


def test_h2_without_an_internal_of_the_lean_path_falls_back_with_one_warning():
    """An h2 without ``_decode_headers``: the HTTP/2 codec's lean path (decided in the sans-IO edge.http.h2_lean,
    recorded by the HTTP/2 server) is off, one warning names it, a codec then takes every frame through h2."""
    hide = ("import h2.connection\ndel h2.connection._decode_headers\nimport edge.http.h2_server\n"
            "from edge.http.h2 import H2Codec\nassert H2Codec().lean is False\n")
    report = _run(_REPORT.format(hide=hide))
    assert len(report["warnings"]) == 1, report["warnings"]
    assert "h2_lean" in report["warnings"][0] and "_decode_headers" in report["warnings"][0]
    assert "h2_lean" not in report["on"] and "write_buffer" in report["on"]
    assert "h2_lean" in _run(_REPORT.format(hide="import edge.http.h2_server\n"))["on"]
    assert _run(_REPORT.format(hide="import edge.http.h2_server\n"), EDGE_FASTPATH="off:h2_lean")["warnings"] == []


def test_everything_off_says_so_once_and_warns_of_nothing_missing():
    report = _run(_REPORT.format(hide=""), EDGE_FASTPATH="off")
    assert report["warnings"] == [] and report["on"] == []
    assert report["pending"] == 0 and report["plain_write"] and not report["close_at_once"]
    named = _run(_REPORT.format(hide=""), EDGE_FASTPATH="off:epoll,tls_close")
    assert named["warnings"] == [] and not {"epoll", "tls_close"} & set(named["on"]) and "tls_io" in named["on"]
    older = _run(_REPORT.format(hide=""), EDGE_FAST_PATHS="0")
    assert older["on"] == []


def test_an_epoll_reactor_without_its_private_state_is_left_as_it_is(monkeypatch):
    """``lighten`` finds the reactor's private state missing: the reactor keeps Twisted's own poll step,
    ``after_events`` falls back to ``callLater(0)``, and one warning says what was missing."""
    from twisted.internet.epollreactor import EPollReactor

    monkeypatch.setitem(fastpath.PATHS, "epoll", fastpath.PATHS["epoll"])  # restored afterwards
    bare = EPollReactor.__new__(EPollReactor)  # no __init__: no _selectables, _poller, _reads, _writes
    warnings: list[dict] = []

    def observe(event: dict) -> None:
        if event.get("log_level") is LogLevel.warn:
            warnings.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        assert fastpath.lighten(bare) is False
        assert fastpath.lighten(bare) is False  # asked again: still no second warning
    finally:
        globalLogPublisher.removeObserver(observe)
    assert len(warnings) == 1 and "_selectables" in warnings[0]["missing"], warnings
    assert "doPoll" not in vars(bare) and not fastpath.lightened(bare)

    clock, called = MemoryReactorClock(), []
    fastpath.after_events(clock, lambda: called.append(1))
    clock.advance(0)
    assert called == [1]


def test_tls_direct_calls_carry_a_session_as_pyopenssls_methods_do(tmp_path):
    """A real handshake and records both ways, every step through tls_direct's calls on one side and pyOpenSSL's
    methods on the other: the bytes and the errors agree (WantReadError while the peer's records are missing,
    ZeroReturnError after its close_notify)."""
    from OpenSSL import SSL

    from edge.tls import fast_tls as f
    from tests.support.certs import TestCA

    assert f.TLS_DIRECT
    cert, key, _ = TestCA(tmp_path / "ca").issue("localhost")
    server_context = SSL.Context(SSL.TLS_METHOD)
    server_context.use_certificate_file(str(cert))
    server_context.use_privatekey_file(str(key))
    server = SSL.Connection(server_context, None)
    server.set_accept_state()
    client = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
    client.set_connect_state()

    def shuttle(direct_from, direct_to, source, target):  # the records ``source`` wrote, into ``target``
        size = f._mem_data(source._from_ssl)
        if not size:
            return 0
        data = f._bio_read(source, size) if direct_from else source.bio_read(size)
        assert len(data) == size
        return f._bio_write(target, data) if direct_to else target.bio_write(data)

    def read(connection, direct):
        try:
            return f._ssl_recv(connection) if direct else connection.recv(2**15)
        except SSL.WantReadError:
            return None

    with pytest.raises(SSL.WantReadError):
        f._ssl_send(client, b"hello")  # the handshake first
    for _ in range(10):  # client (direct calls) <-> server (pyOpenSSL's methods) until both are through
        shuttle(True, False, client, server)
        assert read(server, False) is None
        shuttle(False, True, server, client)
        if read(client, True) is None and client.get_state_string() == b"SSL negotiation finished successfully":
            break
    f._ssl_send(client, b"hello")
    shuttle(True, False, client, server)
    assert read(server, False) == b"hello"
    assert server.send(b"x" * 20000) == 16384  # one record at a time (partial writes)
    server.send(b"x" * 3616)
    shuttle(False, True, server, client)
    got = b""
    while (chunk := read(client, True)) is not None:  # two records
        got += chunk
    assert got == b"x" * 20000
    server.shutdown()
    shuttle(False, True, server, client)
    with pytest.raises(SSL.ZeroReturnError):
        f._ssl_recv(client)
