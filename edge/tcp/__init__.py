# -*- test-case-name: tests.test_passthrough, tests.test_backends -*-
"""The TCP layer: the forwarder, backends with their one failover loop, and health checks."""
