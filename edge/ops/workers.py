# -*- test-case-name: tests.e2e.test_workers -*-
"""``[edge] workers = N``: N processes accept on the same ports (SO_REUSEPORT).

The process started by ``twist edge`` is worker 0: it runs ACME, the admin
listener and the supervisor below, which starts workers 1..N-1 as
``twist edge --worker I`` with the same arguments, passes SIGHUP on to them
(reload, and whenever ACME stored a new certificate, which they read from
``state_dir``), and on stop sends SIGTERM and waits for them to drain.
Each worker runs its own health checks.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

log = Logger()


class _Worker(ProcessProtocol):
    def __init__(self, supervisor: "WorkerSupervisor", number: int) -> None:
        self.supervisor = supervisor
        self.number = number
        self.ended: Deferred = Deferred()

    def processEnded(self, reason) -> None:
        code = getattr(reason.value, "exitCode", None)
        self.ended.callback(None)
        self.supervisor.ended(self, code)


def worker_argv(number: int) -> list[str]:
    """This process's own command line, as worker ``number``."""
    args = [a for a in sys.argv[1:]]
    if "--worker" in args:
        i = args.index("--worker")
        del args[i:i + 2]
    return [sys.executable, "-m", "twisted", *args, "--worker", str(number)]


class WorkerSupervisor(Service):
    name = "workers"

    def __init__(self, reactor: Any, count: int, drain: float) -> None:
        self.reactor = reactor
        self.count = count
        self.drain = drain
        self.workers: dict[int, tuple[_Worker, Any]] = {}
        self.stopping = False

    def startService(self) -> None:
        super().startService()
        for number in range(1, self.count):
            self.spawn(number)

    def spawn(self, number: int) -> None:
        protocol = _Worker(self, number)
        process = self.reactor.spawnProcess(protocol, sys.executable, worker_argv(number), env=dict(os.environ),
                                            childFDs={0: "w", 1: 1, 2: 2})
        self.workers[number] = (protocol, process)
        log.info("started worker {number} (pid {pid})", number=number, pid=process.pid)

    def ended(self, protocol: _Worker, code: int | None) -> None:
        if self.workers.get(protocol.number, (None,))[0] is protocol:
            del self.workers[protocol.number]
        if not self.stopping:
            log.warn("worker {number} exited ({code}); starting it again", number=protocol.number, code=code)
            self.reactor.callLater(1.0, self.spawn, protocol.number)

    def signal(self, signum: int) -> None:
        for _, process in self.workers.values():
            try:
                process.signalProcess(signum)
            except Exception:  # already gone
                pass

    def stopService(self):
        super().stopService()
        self.stopping = True
        waiting = [protocol.ended for protocol, _ in self.workers.values()]
        self.signal(signal.SIGTERM)
        done = DeferredList(waiting)
        timer = self.reactor.callLater(self.drain + 5, lambda: self.signal(signal.SIGKILL))
        return done.addBoth(lambda _: timer.cancel() if timer.active() else None)
