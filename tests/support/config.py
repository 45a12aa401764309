"""Edge's TOML from keyword arguments, so that a test states only what differs from one loopback site.

``site(server)`` is the config most end-to-end tests start from: a local CA for
certificates (``[tls] issuer = "local"``), one backend ``web`` at ``server``, and one
route terminated by edge for ``app.example.test``.  Keyword arguments add to or
replace the route's keys; ``backends`` and ``routes`` add more of each; any other
table (``ssh``, ``acme``, ``admin``, ...) is passed by name::

    site(f"http://127.0.0.1:{port}", http="allow")
    site(f"http://127.0.0.1:{port}", routes=[route("pass.example.test", "pass", tls="passthrough")],
         backends={"pass": f"127.0.0.1:{tls_port}"})
    config(backends={"git": f"127.0.0.1:{sshd.port}"}, ssh={"backend": "git"})
    passthrough(f"127.0.0.1:{origin.port}")  # no certificates: TLS passed through to the origin

``[edge]``, ``[listen]`` and ``[timeouts]`` are written by :class:`tests.support.edge.Edge`
(its keyword arguments), so these builders write the rest.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping, Sequence

HOST = "app.example.test"
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else json.dumps(name)


def value(item: Any) -> str:
    """One TOML value: strings, numbers, booleans, lists, and inline tables for mappings."""
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, (int, float)):
        return repr(item)
    if isinstance(item, str):
        return json.dumps(item)  # a TOML basic string is a JSON string for what tests write
    if isinstance(item, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {value(v)}" for k, v in item.items()) + " }" if item else "{}"
    if isinstance(item, (list, tuple)):
        return "[" + ", ".join(value(v) for v in item) + "]"
    raise TypeError(f"no TOML value for {item!r}")


def _table(header: str, keys: Mapping[str, Any]) -> str:
    return "\n".join([header, *(f"{_key(k)} = {value(v)}" for k, v in keys.items() if v is not None)]) + "\n"


def route(host: str | Sequence[str] = HOST, backend: str | None = "web", *, tls: str = "edge", **keys: Any) -> dict:
    """One ``[[routes]]`` entry: ``hosts`` (one name or several), ``tls``, ``backend``, then ``keys``."""
    return {"hosts": [host] if isinstance(host, str) else list(host), "tls": tls, "backend": backend, **keys}


def config(*, backends: Mapping[str, Any] | None = None, routes: Sequence[Mapping[str, Any]] = (),
           issuer: str | None = "local", **tables: Mapping[str, Any] | None) -> str:
    """The TOML below [edge], [listen] and [timeouts].

    ``backends`` maps a name to its server (a string), servers (a list) or all its keys (a mapping);
    ``issuer`` is ``[tls] issuer`` (None leaves [tls] out); ``tables`` are other tables by name, the
    value of each its keys (None leaves it out).
    """
    parts = [_table("[tls]", {"issuer": issuer})] if issuer is not None else []
    for name, given in tables.items():
        if given is not None:
            parts.append(_table(f"[{name}]", given))
    for name, given in (backends or {}).items():
        keys = given if isinstance(given, Mapping) else {"servers": [given] if isinstance(given, str) else given}
        parts.append(_table(f"[backends.{_key(name)}]", keys))
    parts += [_table("[[routes]]", keys) for keys in routes]
    return "\n".join(parts)


def site(server: str | Sequence[str] | Mapping[str, Any], *, host: str | Sequence[str] = HOST, tls: str = "edge",
         backends: Mapping[str, Any] | None = None, routes: Sequence[Mapping[str, Any]] = (),
         issuer: str | None = "local", tables: Mapping[str, Mapping[str, Any]] | None = None,
         **route_keys: Any) -> str:
    """A local CA, backend ``web`` at ``server``, and a route for ``host`` to it (terminated by edge unless
    ``tls`` says otherwise) with ``route_keys``; then ``routes`` and ``backends``, and ``tables`` by name."""
    return config(backends={"web": server, **(backends or {})}, routes=[route(host, tls=tls, **route_keys), *routes],
                  issuer=issuer, **(tables or {}))


def passthrough(server: str | Sequence[str] | Mapping[str, Any], *, host: str | Sequence[str] = "pass.example.test",
                backend: str = "pass", **route_keys: Any) -> str:
    """No certificates of edge's: backend ``pass`` at ``server``, and ``host``'s TLS passed through to it."""
    return config(issuer=None, backends={backend: server},
                  routes=[route(host, backend, tls="passthrough", **route_keys)])
