# -*- test-case-name: tests.test_acme -*-
"""Let's Encrypt (ACME, RFC 8555): account, challenges, issuance and renewal."""
