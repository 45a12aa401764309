"""The sans-IO DNS-01 core: record names, CNAME chains, the propagation decision, the certificate plan."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from edge.config.addresses import parse_host_port as parse_server
from edge.acme.dns01 import (DnsProblem, Propagation, challenge_name, follow_cnames,
                             plan_certificates)
from edge.acme.dns_solver import Journal
from edge.acme.dns01 import Record

A, B = ("192.0.2.1", 53), ("192.0.2.2", 53)


def test_challenge_name_is_shared_by_a_wildcard_and_its_apex():
    assert challenge_name("*.X.test.") == challenge_name("x.test") == "_acme-challenge.x.test"


def test_follow_cnames_to_the_end_of_the_chain():
    chain = {"_acme-challenge.a.test": "Sub.Auth.test.", "sub.auth.test": "final.test"}
    assert follow_cnames("_acme-challenge.a.test", chain.get) == "final.test"
    assert follow_cnames("_acme-challenge.b.test", chain.get) == "_acme-challenge.b.test"


def test_a_cname_loop_is_a_problem():
    loop = {"a.test": "b.test", "b.test": "a.test"}
    with pytest.raises(DnsProblem, match="loops"):
        follow_cnames("a.test", loop.get)


def test_propagation_needs_every_value_from_every_server():
    check = Propagation({"_acme-challenge.x.test": {"v1", "v2"}}, {"_acme-challenge.x.test": (A, B)})
    assert not check.done
    check.answer(A, "_acme-challenge.x.test", {"v1", "v2", "old"})
    check.answer(B, "_acme-challenge.x.test", {"v1"})
    assert check.waiting() == [(B, "_acme-challenge.x.test")]
    assert check.describe() == "TXT _acme-challenge.x.test at 192.0.2.2:53: 1 of 2 values missing"
    check.answer(B, "_acme-challenge.x.test", None, "REFUSED")
    assert "REFUSED" in check.describe()
    check.answer(B, "_acme-challenge.x.test", {"v2", "v1"})
    assert check.done


def test_parse_server():
    assert parse_server("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_server("[::1]:53") == ("::1", 53)
    assert parse_server("ns1.example") == ("ns1.example", 53)
    assert parse_server("::1") == ("::1", 53)
    with pytest.raises(ValueError):
        parse_server("127.0.0.1:x")


def route(hosts, challenge=None, terminated=True):
    return SimpleNamespace(hosts=tuple(hosts), terminated=terminated, acme_challenge=challenge)


def test_plan_wildcard_takes_the_apex_and_uses_dns01():
    routes = [route(["*.x.test"]), route(["x.test", "www.y.test"]), route(["api.y.test"], "tls-alpn-01")]
    plan = plan_certificates(routes, "http-01", True, lambda host: None)
    assert plan == {"*.x.test": [("*.x.test", "dns-01"), ("x.test", "http-01")],
                    "www.y.test": [("www.y.test", "http-01")], "api.y.test": [("api.y.test", "tls-alpn-01")]}


def test_plan_without_dns_provider_or_with_static_certificates():
    routes = [route(["*.x.test", "a.test", "*"]), route(["p.test"], terminated=False)]
    assert plan_certificates(routes, "http-01", False, lambda host: None) == {"a.test": [("a.test", "http-01")]}
    static = {"*.x.test": object()}
    assert plan_certificates(routes, "dns-01", True, static.get) == {"a.test": [("a.test", "dns-01")]}


def test_journal_survives_and_empties(tmp_path):
    journal = Journal(tmp_path / "dns-pending.json")
    one, two = (Record("x.test", "_acme-challenge.x.test", "_acme-challenge.x.test", v) for v in ("v1", "v2"))
    journal.add("rfc2136", one)
    journal.add("rfc2136", two)
    assert [e["value"] for e in Journal(tmp_path / "dns-pending.json").entries()] == ["v1", "v2"]
    journal.remove("rfc2136", one)
    journal.remove("rfc2136", two)
    assert not (tmp_path / "dns-pending.json").exists()
