# -*- test-case-name: tests.unit.net.test_fastpath, tests.e2e.test_transports -*-
"""The network layer: what edge adds to Twisted's TCP transports and event loop.

Twisted's private internals are used only in :mod:`edge.net.fastpath` (and,
for TLS, :mod:`edge.tls.fast_tls`); everything else here uses Twisted's
public API.
"""
