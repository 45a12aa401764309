# -*- test-case-name: tests.e2e.test_passthrough, tests.e2e.test_backends -*-
"""The TCP layer: the forwarder, backends with their one failover loop, and health checks."""
