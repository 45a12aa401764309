"""The code's own rules: import-linter's contracts (.importlinter), ruff's checks (pyproject.toml), mypy's
(setup.cfg's [mypy]), and a ``test-case-name`` header on every edge module naming test modules that exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HEADER = re.compile(r"# -\*- test-case-name: (.+) -\*-\n")


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_import_contracts() -> None:
    """``lint-imports`` keeps every contract in .importlinter (importlinter.cli has no ``__main__``: run its script)."""
    done = run(sys.executable, str(BIN / "lint-imports"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff() -> None:
    done = run(sys.executable, "-m", "ruff", "check", "edge", "twisted")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy() -> None:
    """edge/ type-checks under setup.cfg's [mypy] (with the mypy-zope plugin for Twisted's interfaces)."""
    done = run(sys.executable, "-m", "mypy", "edge")
    assert done.returncode == 0, done.stdout + done.stderr


def edge_modules() -> list[Path]:
    """Every module of the edge package but an empty ``__init__.py``."""
    return sorted(p for p in (ROOT / "edge").rglob("*.py") if p.stat().st_size)


def test_test_case_names() -> None:
    """Each edge module starts with ``# -*- test-case-name: tests.a, tests.b.c -*-``, as Twisted's do, naming
    test modules that exist under tests/."""
    problems = []
    modules = edge_modules()
    assert len(modules) > 50
    for path in modules:
        name = path.relative_to(ROOT)
        with path.open(encoding="utf-8") as f:
            first = f.readline()
        header = HEADER.fullmatch(first)
        if header is None:
            problems.append(f"{name}: first line is not a test-case-name header: {first!r}")
            continue
        for test in header.group(1).split(","):
            test = test.strip()
            if not test.startswith("tests.") or not (ROOT / (test.replace(".", "/") + ".py")).is_file():
                problems.append(f"{name}: {test!r} is not a module under tests/")
    assert not problems, "\n".join(problems)
