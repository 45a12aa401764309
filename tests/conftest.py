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


@pytest.fixture
def start(tmp_path):
    """start(Class, *args, **kwargs): a program stopped when the test ends."""
    running = []

    def _start(cls, *args, **kwargs):
        program = cls(*args, **kwargs)
        running.append(program)
        return program

    yield _start
    for program in reversed(running):
        program.stop()


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
