# -*- test-case-name: tests.test_fastpath -*-
"""The TLS layer.  pyOpenSSL and ``TLSMemoryBIOProtocol`` internals are used only in :mod:`edge.tls.fast_tls`."""
