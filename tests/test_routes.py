"""Host lookup: exact beats the longest wildcard beats '*'; cost independent of size."""

from edge.config import Route
from edge.routes import RouteTable


def route(i, *hosts):
    return Route(hosts, "passthrough", "b", index=i)


def test_most_specific_wins():
    table = RouteTable([route(0, "*.example.test"), route(1, "a.example.test"), route(2, "*.b.example.test"), route(3, "*")])
    assert table.lookup("a.example.test").index == 1
    assert table.lookup("x.example.test").index == 0
    assert table.lookup("y.x.example.test").index == 0
    assert table.lookup("c.b.example.test").index == 2
    assert table.lookup("example.test").index == 3
    assert table.lookup("other.test").index == 3
    assert table.lookup(None).index == 3


def test_no_default_means_no_route():
    table = RouteTable([route(0, "*.example.test")])
    assert table.lookup("example.test") is None
    assert table.lookup(None) is None
    assert table.lookup("a.example.test.evil") is None


def test_ten_thousand_routes():
    table = RouteTable([route(i, f"h{i}.example.test", f"*.w{i}.example.test") for i in range(10000)])
    assert table.lookup("h9999.example.test").index == 9999
    assert table.lookup("deep.x.w42.example.test").index == 42
