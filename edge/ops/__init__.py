# -*- test-case-name: tests.e2e.test_observability, tests.e2e.test_logs -*-
"""Operations: the access log and what each connection and request records, Prometheus metrics, log formats, workers.

Below every handler (they all record here) and above nothing: it imports no other part of edge.
"""
