# -*- test-case-name: tests.certs.test_local_ca, tests.test_terminate -*-
"""Certificates for terminated routes: a live store and the sources that fill it."""
