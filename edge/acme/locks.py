# -*- test-case-name: tests.e2e.test_acme_storage, tests.e2e.test_acme_shared -*-
"""Decisions about shared ACME state, with no I/O and no clock: locks and what to do with a host next.

Several edges may share one set of certificates (CertMagic's model): before
ordering, an edge takes the host's lock in the shared storage; a lock
records its owner and when it expires, its holder pushes that forward
(``HEARTBEAT``) while it works, and a lock past its expiry is stale (its
holder died) and may be taken over.  Having taken the lock, the edge looks
again: another edge may have stored a fresh certificate meanwhile.  An order
the CA may already have issued is recorded before finalizing, so it is
finished (downloaded) rather than ordered again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum

LOCK_TTL = 20.0  # seconds a lock lives without a heartbeat
HEARTBEAT = LOCK_TTL / 4  # how often its holder refreshes it
LOCK_WAIT = 2.0  # how soon an edge that found a host locked looks again


@dataclass(frozen=True)
class LockRecord:
    """Who holds a lock and until when (Unix time, seconds)."""

    owner: str
    expires: float

    def encode(self) -> bytes:
        return json.dumps({"owner": self.owner, "expires": self.expires}).encode()

    @classmethod
    def decode(cls, data: bytes | None) -> "LockRecord | None":
        """The record in ``data``; None if absent or unreadable (a lock file cut short by a crash: stale)."""
        if not data:
            return None
        try:
            value = json.loads(data)
            return cls(str(value["owner"]), float(value["expires"]))
        except (ValueError, KeyError, TypeError):
            return None


class LockDecision(Enum):
    TAKE = "take"  # no lock: create it
    MINE = "mine"  # already ours: refresh it
    TAKE_OVER = "take over"  # stale (expired or unreadable): replace it
    WAIT = "wait"  # another edge holds it


def decide_lock(existing: LockRecord | None, present: bool, me: str, now: float) -> LockDecision:
    """What to do about a lock that is ``present`` (a file or key exists) holding ``existing``."""
    if not present:
        return LockDecision.TAKE
    if existing is None or existing.expires <= now:
        return LockDecision.TAKE_OVER
    if existing.owner == me:
        return LockDecision.MINE
    return LockDecision.WAIT


def new_record(me: str, now: float, ttl: float = LOCK_TTL) -> LockRecord:
    return LockRecord(me, now + ttl)


class Next(Enum):
    """What an edge holding a host's lock does next."""

    ADOPT = "adopt"  # another edge stored a certificate that is not due: serve it, order nothing
    FINISH = "finish"  # an order was recorded before finalizing: finish it (download what the CA issued)
    ORDER = "order"  # order a new certificate


def after_lock(stored_is_due: bool | None, stored_is_new: bool, order_recorded: bool) -> Next:
    """After taking the lock, look again: ``stored_is_due`` is None if nothing usable is stored, else
    whether the stored pair is due for renewal; ``stored_is_new`` whether it differs from what this edge
    serves; ``order_recorded`` whether an unfinished order is kept."""
    if stored_is_due is False and stored_is_new:
        return Next.ADOPT
    if order_recorded:
        return Next.FINISH
    if stored_is_due is False:  # not due after all (the caller's view was stale): nothing to do
        return Next.ADOPT
    return Next.ORDER


class Resume(Enum):
    """What to do with a recorded order, by its status at the CA."""

    DOWNLOAD = "download"  # valid: the certificate is there
    POLL = "poll"  # processing: wait for it, then download
    FINALIZE = "finalize"  # ready: finalize with the recorded key's CSR
    DISCARD = "discard"  # pending, invalid, expired or gone: order afresh


def resume_action(status: str | None, names_match: bool) -> Resume:
    """``status`` is the order's status at the CA (None if it is gone); ``names_match`` whether the
    recorded order is for the names wanted now (a config change makes it useless)."""
    if not names_match:
        return Resume.DISCARD
    return {"valid": Resume.DOWNLOAD, "processing": Resume.POLL, "ready": Resume.FINALIZE}.get(
        status or "", Resume.DISCARD)


def is_newer(stored_not_after: float, stored_leaf: bytes, current_not_after: float | None,
             current_leaf: bytes | None) -> bool:
    """Is a stored pair one to serve instead of the current one?  Another leaf that lasts at least as long
    (a certificate another edge renewed); never an older one (a stale copy is not a downgrade)."""
    if current_leaf is None or current_not_after is None:
        return True
    return stored_leaf != current_leaf and stored_not_after >= current_not_after
