# -*- test-case-name: tests.unit.net.test_fastpath, tests.e2e.test_fastpath_off -*-
"""Writing to a TCP socket at once when nothing is queued before it.

Twisted's ``transport.write`` only queues: the bytes go out on the next
reactor turn, after two ``epoll_ctl`` calls that register and unregister
the socket for writing.  For a proxy answering thousands of small requests
a second that is most of the cost of a write.  :func:`write_now` sends
directly when the transport's queue is empty and hands Twisted only what
the kernel did not take, so ordering, back-pressure and error handling
stay Twisted's.  It reads Twisted's write buffer, so it lives in
:mod:`edge.net.fastpath` (fast path ``eager_write``; off, a plain ``write``).
"""

from __future__ import annotations

from edge.net.fastpath import PLAIN_TCP, write_now

__all__ = ["PLAIN_TCP", "write_now"]
