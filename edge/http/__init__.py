# -*- test-case-name: tests.unit.http.test_h1, tests.unit.http.test_h2, tests.e2e.test_http1_proxy -*-
"""Everything HTTP the edge speaks, in the manner of h11 and h2.

Codecs and policy take bytes or values and return events or decisions
(:mod:`edge.http.h1`, :mod:`edge.http.framing`, :mod:`edge.http.h2`,
:mod:`edge.http.policy`, :mod:`edge.http.forwarded`,
:mod:`edge.http.answers`); the protocols around them only move bytes, own
timers and call the core (:mod:`edge.http.h1_server`,
:mod:`edge.http.h2_server`, :mod:`edge.http.h1_client`,
:mod:`edge.http.redirect`).
"""
