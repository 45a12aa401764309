# -*- test-case-name: tests.e2e.test_logs -*-
"""What edge's log output looks like: one readable text line, or one clean JSON object, per event.

``twist`` writes Twisted's own serialisation with ``--log-format json`` (its default when the output
is not a terminal, as under journald or ``podman logs``): record separators, ``log_flattened``,
``__class_uuid__`` and ``{"unpersistable": true}``.  ``observer_factory`` replaces twist's choice with
observers that write, per event, either Twisted's text line or one JSON object:

    {"time": "2026-11-28T15:30:55.774Z", "level": "info", "logger": "edge.access",
     "message": "<the rendered line>", <the event's own fields>...}

Dates in fields become RFC 3339 strings, bytes become text, and an error's failure becomes ``error``
and ``traceback``.  Both formats drop Twisted's legacy chatter that edge says better itself
(``DispatchFactory starting on 8443``, ``(TCP Port 8443 Closed)``): edge logs each door it opens
and closes.  The fields are documented in README.md ("Logs").
"""

from __future__ import annotations

import datetime
import enum
import json
import re
from typing import IO, Any, Callable

from constantly import NamedConstant
from twisted.logger import FileLogObserver, ILogObserver, formatEvent, jsonFileLogObserver, textFileLogObserver
from zope.interface import provider

# Lines from Twisted's legacy ``log.msg`` that repeat what edge logs in its own words.
NOISE = re.compile(r"\((?:TCP|UDP|UNIX) Port \S+ Closed\)|\S+ (?:starting|stopping) on \S+|"
                   r"(?:Starting|Stopping) factory .*")
# Keys of Twisted's legacy events (``twisted.python.log``) that are not the event's own fields.
LEGACY = frozenset(("message", "system", "time", "isError", "format", "why", "failure", "printed"))


FACTORY_CHATTER = frozenset(("Starting factory {factory!r}", "Stopping factory {factory!r}"))


def is_noise(event: dict) -> bool:
    """True for Twisted's start/stop chatter: legacy lines (see ``NOISE``), and a factory starting or
    stopping (twisted.web's client pool does, for every health check over HTTP)."""
    if event.get("log_format") in FACTORY_CHATTER:
        return True
    text = event.get("log_text")
    return event.get("log_namespace") == "log_legacy" and isinstance(text, str) and NOISE.fullmatch(text) is not None


def rfc3339(when: float | datetime.datetime) -> str:
    """UTC, milliseconds, ``Z``: ``2026-11-28T15:30:55.774Z``."""
    if not isinstance(when, datetime.datetime):
        when = datetime.datetime.fromtimestamp(when, datetime.timezone.utc)
    elif when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.astimezone(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _plain(value: Any) -> Any:
    """A field's value as JSON can carry it, readable."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (datetime.datetime, datetime.date)):
        return rfc3339(value) if isinstance(value, datetime.datetime) else value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (NamedConstant, enum.Enum)):
        return value.name
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return str(value)


def json_line(event: dict) -> str:
    """One event as one JSON object on one line (with its newline)."""
    level = event.get("log_level")
    fields: dict[str, Any] = {
        "time": rfc3339(event.get("log_time") or 0.0),
        "level": level.name if isinstance(level, NamedConstant) else "info",
        "logger": event.get("log_namespace") or "-",
        "message": (formatEvent(event) or "").rstrip("\n"),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in LEGACY or key in fields:
            continue
        fields[key] = _plain(value)
    failure = event.get("log_failure")
    if failure is not None:
        fields["error"] = f"{failure.type.__name__}: {failure.getErrorMessage()}"
        fields["traceback"] = failure.getTraceback()
    return json.dumps(fields, ensure_ascii=False, default=str) + "\n"


def _quiet(observer: ILogObserver) -> ILogObserver:
    @provider(ILogObserver)
    def observe(event: dict) -> None:
        if not is_noise(event):
            observer(event)

    return observe


def json_observer(out: IO[str]) -> ILogObserver:
    """One clean JSON object per line on ``out``."""
    return _quiet(FileLogObserver(out, json_line))


def text_observer(out: IO[str]) -> ILogObserver:
    """Twisted's text lines on ``out``, without the legacy chatter."""
    return _quiet(textFileLogObserver(out))


def observer_factory(chosen: Callable[[IO[str]], ILogObserver] | None) -> Callable[[IO[str]], ILogObserver]:
    """edge's observer for what ``twist --log-format`` chose (or defaulted to)."""
    return json_observer if chosen is jsonFileLogObserver else text_observer
