# -*- test-case-name: tests.e2e.test_acme -*-
"""Let's Encrypt (ACME, RFC 8555): account, challenges, issuance and renewal."""
