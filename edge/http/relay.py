# -*- test-case-name: tests.unit.http.test_exchange, tests.e2e.test_http1_proxy, tests.e2e.test_h2_server -*-
"""The thin driver of :class:`edge.http.exchange.Exchange`: its log lines.

Both servers carry out an exchange's actions on their own codec; what they
write to the log about it is written here, once: the warning that goes
with an action (the detail a public answer leaves out) and the access-log
line of the request.
"""

from __future__ import annotations

import time

from twisted.logger import Logger

from edge.ops.access_log import ConnectionInfo, log_request
from edge.http.exchange import Cut, Exchange, Reply, Retry

log = Logger(namespace="edge.http")


def warn(info: ConnectionInfo, action: Reply | Cut | Retry) -> None:
    """The warning of ``action``, if it has one, naming the client."""
    warning = getattr(action, "warning", None)
    if warning is not None:
        log.warn("{client}: {reason}", client=info.client[0], reason=warning)


def log_exchange(info: ConnectionInfo, exchange: Exchange) -> None:
    """The access-log line (and the request metrics) of ``exchange``."""
    method, host, target, status, sent, route, backend, server, upstream, duration, protocol, outcome, user = \
        exchange.log_fields(time.monotonic())
    log_request(info, method, host, target, status, sent, route, backend, server, upstream, duration, protocol,
                outcome, user=user)
