"""`pip install .` into a fresh venv gives a `twist edge` that Twisted's plugin system finds."""

from __future__ import annotations

import shutil
import subprocess
import sys

from tests.support.edge import ROOT


def test_plain_install_registers_the_twist_plugin(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".hypothesis"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run([venv / "bin" / "pip", "install", "-q", str(source)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr
    site = subprocess.run([venv / "bin" / "python", "-c", "import edge, sys; print(edge.__file__)"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert str(venv) in site.stdout, "edge must come from the venv, not the checkout"
    for forbidden in ("twisted/__init__.py", "twisted/plugins/__init__.py"):
        owned = subprocess.run([venv / "bin" / "pip", "show", "-f", "edge"], capture_output=True, text=True).stdout
        assert forbidden not in owned
    result = subprocess.run([venv / "bin" / "twist", "edge", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--config" in result.stdout


def test_ci_runs_exactly_the_readme_test_command():
    command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert command in (ROOT / "README.md").read_text()
    assert "pytest" in command
