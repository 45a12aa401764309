"""edge.acme.pairs: is a stored chain and key fit to serve?  Plain unit tests, no I/O."""

from __future__ import annotations

import datetime

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge.acme.pairs import PairProblem, bad_name, check_pair, split_bundle

HOST = "a.example.test"


@pytest.fixture(scope="module")
def issued():
    leaf = trustme.CA().create_child_ca().issue_cert(HOST)
    return b"".join(p.bytes() for p in leaf.cert_chain_pems), leaf.private_key_pem.bytes()


def problem(chain: bytes, key: bytes, host: str = HOST) -> PairProblem:
    with pytest.raises(PairProblem) as caught:
        check_pair(host, chain, key)
    return caught.value


def test_a_whole_pair_is_fit(issued):
    chain, key = check_pair(HOST, *issued)
    assert len(chain) == 2


def test_truncated_certificate(issued):
    assert problem(issued[0][:300], issued[1]).part == "certificate"


def test_chain_cut_inside_the_intermediate(issued):
    chain = issued[0]
    second = chain.index(b"-----BEGIN CERTIFICATE-----", 1)
    found = problem(chain[:second + 200], issued[1])
    assert (found.part, found.reason) == ("certificate", "the chain is cut: 2 certificates begin, 1 are whole")


def test_empty_key(issued):
    assert (problem(issued[0], b"").part, problem(issued[0], b"").reason) == ("key", "empty")


def test_truncated_key(issued):
    assert problem(issued[0], issued[1][:100]).part == "key"


def test_key_of_another_certificate(issued):
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    assert problem(issued[0], other).reason == "does not match the certificate"


def test_chain_that_does_not_link(issued):
    stranger = trustme.CA().create_child_ca().cert_pem.bytes()
    leaf = issued[0][:issued[0].index(b"-----BEGIN CERTIFICATE-----", 1)]
    assert "does not link" in problem(leaf + stranger, issued[1]).reason


def test_certificate_for_another_host(issued):
    assert problem(*issued, host="b.example.test").reason.endswith("not b.example.test")


def test_expired_is_whole_not_bad():
    now = datetime.datetime.now(datetime.timezone.utc)
    leaf = trustme.CA().issue_cert(HOST, not_before=now - datetime.timedelta(days=10),
                                   not_after=now - datetime.timedelta(days=1))
    check_pair(HOST, leaf.cert_chain_pems[0].bytes(), leaf.private_key_pem.bytes())


def test_bundle_splits_into_key_and_chain(issued):
    key, chain = split_bundle(issued[1] + issued[0])
    assert (key, chain) == (issued[1], issued[0])
    assert split_bundle(issued[0]) == (None, issued[0])
    with pytest.raises(PairProblem):
        split_bundle(issued[1][:120])


def test_bad_name_is_utc_timestamped():
    when = datetime.datetime(2026, 3, 4, 5, 6, 7, tzinfo=datetime.timezone.utc)
    assert bad_name("a.example.test.pem", when) == "a.example.test.pem.bad-20260304050607"
