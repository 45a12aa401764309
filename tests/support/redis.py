"""Debian's redis-server on a free loopback port, nothing kept on disk."""

from __future__ import annotations

from pathlib import Path

from tests.support.procs import Program, free_port, wait_listening


class RedisServer(Program):
    def __init__(self, tmp: Path, password: str | None = None) -> None:
        self.port = free_port()
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(tmp)]
        if password is not None:
            argv += ["--requirepass", password]
        super().__init__(argv, tmp / f"redis-{self.port}.log")
        wait_listening(self.port, proc=self.proc)
        self.url = f"redis://127.0.0.1:{self.port}/0"
