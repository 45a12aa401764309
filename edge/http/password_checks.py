# -*- test-case-name: tests.e2e.test_access -*-
"""Password hashing off the reactor: the Twisted shell of :class:`edge.http.policy.PasswordCheck`.

bcrypt at cost 12 takes half a second.  Done in the reactor thread, four clients guessing were enough
to make every other request on the edge wait seconds (a review measured 11 ms become 1.8 s).  Here a
small thread pool hashes (bcrypt and argon2 release the GIL), at most ``MAX_WAITING`` checks wait for
it (past that, 503: fail closed), and the answer comes back to the reactor, which alone touches the
verification caches and the failure counts.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from edge.http.policy import Answer, PasswordCheck, Passed, Refusal

THREADS = 2  # hashing threads: the other core keeps serving
MAX_WAITING = 64  # checks queued or running; more is a flood, answered 503 without hashing

_POOL: list[ThreadPool] = []
_RUNNING = [0]


def _pool(reactor: Any) -> ThreadPool:
    if not _POOL:
        pool = ThreadPool(minthreads=0, maxthreads=THREADS, name="edge-passwords")
        pool.start()
        reactor.addSystemEventTrigger("during", "shutdown", pool.stop)
        _POOL.append(pool)
    return _POOL[0]


class PasswordJob:
    """One password being hashed; ``done`` gets :class:`Passed`, a 401/429 :class:`Refusal`, or None
    (too many waiting: the caller answers 503).  ``cancel()``: the client went away, say nothing."""

    def __init__(self, reactor: Any, check: PasswordCheck, done: Callable[[Passed | Refusal | None], None]) -> None:
        self.reactor = reactor
        self.check = check
        self.done: Callable[..., None] | None = done
        if _RUNNING[0] >= MAX_WAITING:
            reactor.callLater(0, self._finish, None)
            return
        _RUNNING[0] += 1
        d = deferToThreadPool(reactor, _pool(reactor), check.users.compute, check.user, check.password)
        d.addBoth(self._hashed)

    def _hashed(self, right: Any) -> None:
        _RUNNING[0] -= 1
        check = self.check
        if not isinstance(right, bool):  # the hashing failed (a malformed hash): a no
            right = False
        check.users.remember(check.user, check.password, right)
        verdict = check.guard.judged(check.key, check.user, right, self.reactor.seconds())
        if isinstance(verdict, Answer):
            body = f"{verdict.text}\n".encode("utf-8")
            fields = [(b"content-type", b"text/plain; charset=utf-8")]
            fields += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in verdict.headers]
            self._finish(Refusal(verdict.status, fields, body))
        else:
            self._finish(Passed(verdict.add, verdict.user))

    def _finish(self, result: Passed | Refusal | None) -> None:
        done, self.done = self.done, None
        if done is not None:
            done(result)

    def cancel(self) -> None:
        self.done = None
