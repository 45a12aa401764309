# -*- test-case-name: tests.unit.config.test_parsing -*-
"""The configuration layer, below everything that reads it.

:mod:`~edge.config.model` holds the snapshot's frozen dataclasses, :mod:`~edge.config.parsing` turns a TOML
file into one (or a one-line :class:`ConfigError`); listen and server addresses, header rules, access
rules and the host-name lookup over routes are the values it is built from.  The names most modules need
are re-exported here.
"""

from edge.config.model import (
    AcmeConfig, AcmeDnsConfig, BackendConfig, Config, ConfigError, Door, ForwardAuth, Route, Server,
)
from edge.config.parsing import load, normalise_host, parse, parse_duration, valid_route_host

__all__ = [
    "AcmeConfig", "AcmeDnsConfig", "BackendConfig", "Config", "ConfigError", "Door", "ForwardAuth", "Route",
    "Server", "load", "normalise_host", "parse", "parse_duration", "valid_route_host",
]
