"""The unit and forwarding tests on the lowest Twisted setup.cfg admits (``twisted>=X`` means Twisted X).

A second virtualenv, ``.venv-twisted-min`` in the checkout (git ignores it), holds edge's
dependencies with Twisted pinned to that lower bound, the others as pip resolves them
against it.  It is built once (about 15 s with the package index at hand) and kept while
the requirements it was built from are the same; the tests then run in it: the sans-IO
and fast-path unit tests, TCP/TLS passthrough and TLS termination (about 1.5 minutes).
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys

from tests.support.suites import ROOT, UNIT, run_pytest

VENV = ROOT / ".venv-twisted-min"
STAMP = VENV / "edge-requirements.txt"  # what it was built from, written last
TEST_NEEDS = ("pytest", "pytest-twisted", "pytest-timeout", "trustme", "hypothesis", "websockets")


def lowest_twisted_requirements() -> list[str]:
    """setup.cfg's install_requires with Twisted at its lower bound, and the test tools the suites import."""
    options = configparser.ConfigParser()
    options.read(ROOT / "setup.cfg")
    requires = [line.strip() for line in options["options"]["install_requires"].splitlines() if line.strip()]
    tests = [line.strip() for line in options["options.extras_require"]["test"].splitlines()
             if re.split(r"[<>=!\[ ]", line.strip())[0] in TEST_NEEDS]
    pinned = []
    for requirement in requires:
        found = re.fullmatch(r"(twisted(?:\[[^\]]*\])?)\s*>=\s*([0-9.]+)\s*(?:,.*)?", requirement, re.IGNORECASE)
        pinned.append(f"{found.group(1)}=={found.group(2)}" if found else requirement)
    assert any(r.lower().startswith("twisted") and "==" in r for r in pinned), requires
    return pinned + tests


def lowest_twisted_python() -> str:
    """The Python of the virtualenv, built (again) if it is missing or was built from other requirements."""
    requirements = "\n".join(lowest_twisted_requirements()) + "\n"
    python = VENV / "bin" / "python"
    if python.exists() and STAMP.exists() and STAMP.read_text() == requirements:
        return str(python)
    shutil.rmtree(VENV, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=120)
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           *requirements.split()], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"installing the lowest Twisted's requirements failed:\n{done.stdout}{done.stderr}"
    STAMP.write_text(requirements)
    return str(python)


def test_unit_and_forwarding_tests_pass_on_the_lowest_supported_twisted():
    python = lowest_twisted_python()
    pin = next(r for r in lowest_twisted_requirements() if r.lower().startswith("twisted"))
    version = subprocess.run([python, "-c", "import twisted; print(twisted.__version__)"], capture_output=True,
                             text=True, timeout=60, check=True).stdout.strip()
    assert tuple(map(int, version.split(".")))[:2] == tuple(map(int, pin.split("==")[1].split(".")))[:2], version
    run_pytest([*UNIT, "tests/e2e/test_passthrough.py", "tests/e2e/test_terminate.py"], python=python)
