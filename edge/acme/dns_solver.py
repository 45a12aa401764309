# -*- test-case-name: tests.unit.acme.test_dns01, tests.e2e.test_dns01 -*-
"""DNS-01 for one order, in the ACME worker thread: write, wait until served, remove; remember removals.

:meth:`Dns01Solver.present` follows each ``_acme-challenge`` CNAME chain,
notes every record in a small journal (``dns-pending.json`` in the ACME
state folder) *before* writing it, has the provider write it, then asks the
authoritative servers until all of them serve every value
(``propagation_timeout``, ``propagation_interval``).  :meth:`cleanup`
removes the records and their journal entries, also after a failed order;
what a stop interrupts stays in the journal and :meth:`sweep` removes it
at the next start.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Callable

from edge.acme import dns_providers
from edge.acme.dns01 import DnsProblem, Propagation, Record, challenge_name, follow_cnames
from edge.config import AcmeDnsConfig


class Journal:
    """Records written (or being written) and not yet removed, kept on disk across restarts."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> list[dict]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return []
        return data if isinstance(data, list) else []

    def _write(self, entries: list[dict]) -> None:
        if not entries:
            self.path.unlink(missing_ok=True)
            return
        temp = self.path.with_suffix(".tmp")
        with open(temp, "w") as f:
            json.dump(entries, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, self.path)

    def add(self, provider: str, record: Record) -> None:
        self._write(self.entries() + [{"provider": provider, **record.__dict__}])

    def remove(self, provider: str, record: Record) -> None:
        entry = {"provider": provider, **record.__dict__}
        entries = self.entries()
        if entry in entries:
            entries.remove(entry)
        self._write(entries)


class Dns01Solver:
    """Publishes an order's DNS-01 values with the configured provider, and takes them away again."""

    def __init__(self, config: AcmeDnsConfig, journal: Path, note: Callable[[str], None],
                 stopping: threading.Event | None = None) -> None:
        self.config = config
        self.provider = dns_providers.provider_for(config)
        self.journal = Journal(journal)
        self.note = note  # one line for the edge's log (called from this thread)
        self.stopping = stopping or threading.Event()
        # CNAMEs are looked up where propagation is checked: resolvers, else the rfc2136 server, else the system's.
        self.lookup_server = config.resolvers[0] if config.resolvers else config.server

    def record(self, identifier: str, value: str) -> Record:
        """Where the value for ``identifier`` goes: ``_acme-challenge.<domain>``, through its CNAMEs."""
        name = challenge_name(identifier)
        target = follow_cnames(name, lambda n: dns_providers.cname_of(self.lookup_server, n))
        return Record(name[len("_acme-challenge."):], name, target, value)

    def present(self, values: list[tuple[str, str]], records: list[Record]) -> None:
        """Write ``(identifier, value)`` pairs and wait until every authoritative server serves them.

        Each record written (or perhaps written) is appended to ``records``,
        which the caller hands to :meth:`cleanup` whatever happens.
        """
        written: list[tuple[Record, str]] = []
        for identifier, value in values:
            record = self.record(identifier, value)
            self.journal.add(self.provider.name, record)
            try:
                written.append((record, self.provider.present(record)))
            except DnsProblem as e:
                if e.definite:  # the server said no: nothing to remove
                    self.journal.remove(self.provider.name, record)
                else:
                    records.append(record)
                raise
            records.append(record)
        self._wait(written)

    def _wait(self, written: list[tuple[Record, str]]) -> None:
        expected: dict[str, set[str]] = {}
        for record, name in written:
            expected.setdefault(name, set()).add(record.value)
        servers = {name: tuple(self.provider.servers(name)) for name in expected}
        check = Propagation(expected, servers)
        deadline = time.monotonic() + self.config.propagation_timeout
        noted = False
        while True:
            for server, name in check.waiting():
                values, said = dns_providers.txt_values(server, name)
                check.answer(server, name, values, said)
            if check.done:
                if noted:
                    self.note(f"DNS-01 ({self.provider.name}): the TXT records are served now")
                return
            if time.monotonic() >= deadline:
                raise DnsProblem(f"{self.provider.name}: the TXT records did not propagate in "
                                 f"{self.config.propagation_timeout:g}s: {check.describe()}")
            if not noted:
                self.note(f"DNS-01 ({self.provider.name}): waiting for the TXT records to propagate: "
                          f"{check.describe()}")
                noted = True
            if self.stopping.wait(self.config.propagation_interval):
                raise DnsProblem(f"{self.provider.name}: stopped while waiting for {', '.join(expected)}")

    def cleanup(self, records: list[Record]) -> None:
        """Remove ``records``; a failure is logged and its journal entry kept for the next start.
        While stopping nothing is removed: the journal keeps it all for the next start."""
        if self.stopping.is_set():
            return
        for record in records:
            try:
                self.provider.cleanup(record)
            except DnsProblem as e:
                self.note(f"DNS-01: could not remove a challenge record, will retry at the next start: {e}")
                continue
            self.journal.remove(self.provider.name, record)

    def sweep(self) -> None:
        """Remove the records a stop or crash left behind (the journal's entries)."""
        for entry in self.journal.entries():
            try:
                record = Record(entry["domain"], entry["name"], entry["target"], entry["value"])
            except (KeyError, TypeError):
                continue
            if entry.get("provider") != self.provider.name:
                self.note(f"DNS-01: TXT {record.target} was written by provider {entry.get('provider')}, not "
                          f"{self.provider.name}: remove it by hand")
                self.journal.remove(entry.get("provider", ""), record)
                continue
            try:
                self.provider.cleanup(record)
            except DnsProblem as e:
                self.note(f"DNS-01: could not remove a leftover challenge record (will retry next start): {e}")
                continue
            self.journal.remove(self.provider.name, record)
            self.note(f"DNS-01 ({self.provider.name}): removed the leftover TXT record at {record.target}")
