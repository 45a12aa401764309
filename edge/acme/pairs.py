# -*- test-case-name: tests.unit.acme.test_pairs, tests.e2e.test_acme_resilience -*-
"""Is a stored certificate chain and its key fit to serve?  Pure functions, no I/O.

``state_dir`` is the user's disk: files get truncated, emptied, replaced by
hand or half-written by a crash.  A pair is only served if the chain
parses completely (every PEM block, not just the ones before a cut), the
key parses and belongs to the leaf, each certificate is signed by the next
one, the dates make sense and the leaf names the host.  Anything else is a
:class:`PairProblem` naming the part at fault, so the caller can log the
file, move it aside and order again instead of stopping the edge.
"""

from __future__ import annotations

import datetime
import re

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from edge.tls.store import ServingKey, key_matches, names_of

_KEY_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----\r?\n?", re.S)


class PairProblem(ValueError):
    """What is wrong with a stored pair: ``part`` is "certificate" or "key"."""

    def __init__(self, part: str, reason: str) -> None:
        super().__init__(f"{part}: {reason}")
        self.part = part
        self.reason = reason


def split_bundle(data: bytes) -> tuple[bytes | None, bytes]:
    """One file holding a key and a chain (edge's layout): (the key's PEM or None, the rest)."""
    found = _KEY_BLOCK.search(data)
    if found is None:
        if b"PRIVATE KEY-----" in data:
            raise PairProblem("key", "a private key block is cut off")
        return None, data
    return found.group(0), data[:found.start()] + data[found.end():]


def parse_chain(chain_pem: bytes) -> list[x509.Certificate]:
    """Every certificate of ``chain_pem``; a block cut anywhere (cryptography skips an unfinished
    last one silently) is a PairProblem."""
    begins = chain_pem.count(b"-----BEGIN CERTIFICATE-----")
    ends = chain_pem.count(b"-----END CERTIFICATE-----")
    if begins == 0:
        raise PairProblem("certificate", "no certificate in it" if chain_pem.strip() else "empty")
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError as e:
        raise PairProblem("certificate", f"does not parse ({str(e).rsplit(' ', 1)[-1]})") from None
    if not (begins == ends == len(chain)):
        raise PairProblem("certificate", f"the chain is cut: {begins} certificates begin, {len(chain)} are whole")
    return chain


def parse_key(key_pem: bytes) -> ServingKey:
    if not key_pem.strip():
        raise PairProblem("key", "empty")
    try:
        key = serialization.load_pem_private_key(key_pem, None)
    except (ValueError, TypeError) as e:
        raise PairProblem("key", f"does not parse ({str(e).rsplit(' ', 1)[-1]})") from None
    if not isinstance(key, ServingKey):
        raise PairProblem("key", f"a {type(key).__name__} cannot sign a TLS handshake")
    return key


def check_pair(host: str, chain_pem: bytes, key_pem: bytes) -> tuple[list[x509.Certificate], ServingKey]:
    """The parsed (chain, key) if fit to serve for ``host``; else PairProblem.

    An expired leaf is not a problem here: it is whole, and due for renewal (that is the scheduler's call).
    """
    chain = parse_chain(chain_pem)
    key = parse_key(key_pem)
    if not key_matches(key, chain[0]):
        raise PairProblem("key", "does not match the certificate")
    for subject, issuer in zip(chain, chain[1:]):
        if subject.issuer != issuer.subject:
            raise PairProblem("certificate", f"the chain does not link: {subject.subject.rfc4514_string()} is "
                                             f"not issued by {issuer.subject.rfc4514_string()}")
        try:
            subject.verify_directly_issued_by(issuer)
        except (InvalidSignature, ValueError, TypeError):
            raise PairProblem("certificate", f"the chain does not link: {subject.subject.rfc4514_string()}'s "
                                             f"signature is not {issuer.subject.rfc4514_string()}'s") from None
    for cert in chain:
        if cert.not_valid_before_utc >= cert.not_valid_after_utc:
            raise PairProblem("certificate", f"{cert.subject.rfc4514_string()} is valid from "
                                             f"{cert.not_valid_before_utc:%Y-%m-%d} "
                                             f"to {cert.not_valid_after_utc:%Y-%m-%d}")
    if host.lower() not in names_of(chain[0]):
        raise PairProblem("certificate", f"is for {', '.join(names_of(chain[0]))}, not {host}")
    return chain, key


def bad_name(name: str, now: datetime.datetime) -> str:
    """Where a bad file is moved aside: ``NAME.bad-YYYYMMDDHHMMSS`` (UTC)."""
    return f"{name}.bad-{now.astimezone(datetime.timezone.utc):%Y%m%d%H%M%S}"
