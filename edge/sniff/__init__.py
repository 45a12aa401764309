# -*- test-case-name: tests.unit.sniff.test_http, tests.unit.sniff.test_tls, tests.unit.sniff.test_proxy -*-
"""Pure parsers over the first bytes of a connection (sans-I/O, no sockets).

Each sniffer returns a result, :data:`NEED_MORE` when the bytes so far are a
valid but incomplete prefix, or :data:`NO_MATCH` when they are not its
protocol at all; it raises :class:`Malformed` when they claim to be its
protocol but break its rules.  The dispatcher owns buffering and timeouts.
"""

from __future__ import annotations

import enum
from typing import Final, Literal


class Verdict(enum.Enum):
    NEED_MORE = "need more bytes"
    NO_MATCH = "not this protocol"


NEED_MORE: Final = Verdict.NEED_MORE  # Final: ``x is NEED_MORE`` narrows a result's type
NO_MATCH: Final = Verdict.NO_MATCH
NeedMore = Literal[Verdict.NEED_MORE]  # the result of a parser that never says NO_MATCH


class Malformed(ValueError):
    """The bytes start like the protocol but are not valid for it."""
