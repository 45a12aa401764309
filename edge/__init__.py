# -*- test-case-name: tests.e2e.test_packaging -*-
"""edge: one Twisted process on ports 22, 80 and 443 with layered dispatch."""

__version__ = "0.1.0"
