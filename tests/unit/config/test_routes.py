"""Host lookup: exact beats the longest wildcard beats '*'; cost independent of size."""

import pytest

from edge.config import Route
from edge.config.routes import RouteTable


def route(i, *hosts, paths=("/",)):
    return Route(hosts, "passthrough" if paths == ("/",) else "edge", "b", index=i, paths=paths)


def test_longest_path_prefix_wins():
    table = RouteTable([route(0, "a.test", paths=("/",)), route(1, "a.test", paths=("/api/", "/v2/")),
                        route(2, "a.test", paths=("/api/admin/",))])
    entry = table.lookup("a.test")
    assert entry.match("/api/admin/x").index == 2
    assert entry.match("/api/x").index == 1
    assert entry.match("/v2/").index == 1
    assert entry.match("/other").index == 0
    assert RouteTable([route(0, "b.test", paths=("/api/",))]).lookup("b.test").match("/") is None


def test_most_specific_wins():
    table = RouteTable([route(0, "*.example.test"), route(1, "a.example.test"), route(2, "*.b.example.test"), route(3, "*")])
    assert table.lookup("a.example.test").routes[0].index == 1
    assert table.lookup("x.example.test").routes[0].index == 0
    assert table.lookup("y.x.example.test").routes[0].index == 0
    assert table.lookup("c.b.example.test").routes[0].index == 2
    assert table.lookup("example.test").routes[0].index == 3
    assert table.lookup("other.test").routes[0].index == 3
    assert table.lookup(None).routes[0].index == 3


def test_no_default_means_no_route():
    table = RouteTable([route(0, "*.example.test")])
    assert table.lookup("example.test") is None
    assert table.lookup(None) is None
    assert table.lookup("a.example.test.evil") is None


def test_ten_thousand_routes():
    table = RouteTable([route(i, f"h{i}.example.test", f"*.w{i}.example.test") for i in range(10000)])
    assert table.lookup("h9999.example.test").routes[0].index == 9999
    assert table.lookup("deep.x.w42.example.test").routes[0].index == 42


@pytest.mark.parametrize("path, resolved", [
    ("/admin/x", "/admin/x"), ("/%61dmin/secret.txt", "/admin/secret.txt"), ("//admin/secret.txt", "/admin/secret.txt"),
    ("/./admin/secret.txt", "/admin/secret.txt"), ("/x/../admin/secret.txt", "/admin/secret.txt"),
    ("/../../admin", "/admin"), ("/%2e%2e/admin", "/admin"), ("/admin%2fsecret", "/admin/secret"),
    ("/a/b/..", "/a/"), ("/a/./", "/a/"), ("/a/..", "/"), ("/%zz/x", "/%zz/x"), ("/a%2", "/a%2"), ("/", "/"),
])
def test_paths_are_matched_as_the_backend_reads_them(path, resolved):
    from edge.config.routes import normalise_path

    assert normalise_path(path) == resolved


@pytest.mark.parametrize("path", ["/%61dmin/secret.txt", "//admin/secret.txt", "/./admin/x", "/x/../admin/x",
                                  "/%2e%2e/admin/x", "/admin"])
def test_a_guarded_prefix_cannot_be_walked_around(path):
    from edge.config import Route
    from edge.config.routes import HostEntry

    public, admin = Route(("a.test",), "edge", "web", paths=("/",)), Route(("a.test",), "edge", "web", paths=("/admin",))
    entry = HostEntry("a.test", [("/", public), ("/admin", admin)])
    assert entry.match(path) is admin
