# -*- test-case-name: tests.unit.net.test_fastpath, tests.e2e.test_terminate -*-
"""The TLS layer: termination, the certificate store and its sources (PEM files, the local CA), private
files, and the policy for TLS to backends.

pyOpenSSL and ``TLSMemoryBIOProtocol`` internals are used only in :mod:`edge.tls.fast_tls`.
"""
