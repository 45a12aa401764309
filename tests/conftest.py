"""Shared fixtures: certificates, real origin servers and a running edge."""

from __future__ import annotations

import pytest

from tests.support.certs import TestCA
from tests.support.edge import Edge
from tests.support.servers import OpenSSLServer, Sshd


@pytest.fixture(scope="session")
def ca(tmp_path_factory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    server = Sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Note on the test item whether the test itself failed (the ``start`` fixture asks)."""
    report = yield
    if report.when == "call":
        item.test_failed = report.failed
    return report


@pytest.fixture
def start(request):
    """start(Class, *args, **kwargs): a program stopped when the test ends.

    Each edge must then be back to its baseline of open descriptors
    (:meth:`Edge.assert_no_leaked_descriptors`): the origins are stopped first,
    so that the edge's idle keep-alive connections to them close, then the
    edges are waited on, then stopped.  A test that failed already is not
    checked: its traceback still holds its clients' sockets.
    """
    running = []

    def _start(cls, *args, **kwargs):
        program = cls(*args, **kwargs)
        running.append(program)
        return program

    yield _start
    edges = [program for program in running if isinstance(program, Edge)]
    for program in reversed(running):
        if program not in edges:
            program.stop()
    try:
        if not getattr(request.node, "test_failed", True):
            for edge in edges:
                if edge.proc.poll() is None:
                    edge.assert_no_leaked_descriptors()
    finally:
        for edge in reversed(edges):
            edge.stop()


@pytest.fixture
def edge(start, tmp_path):
    """edge(body, **listen): the real edge on a config whose routes are ``body``."""
    def _edge(body: str, **kwargs) -> Edge:
        return start(Edge, tmp_path / f"edge{len(list(tmp_path.glob('edge*')))}", body, **kwargs)
    return _edge


@pytest.fixture
def tls_origin(start, ca, tmp_path):
    """tls_origin(*names): openssl s_server with a certificate for ``names``."""
    def _origin(*names: str) -> OpenSSLServer:
        cert, key, _ = ca.issue(*names)
        return start(OpenSSLServer, tmp_path, cert, key, f"s_server-{names[0].replace('*', '_')}")
    return _origin
