"""
The Makefile's set-up: a .venv made with an unsupported Python is made
again; an unsupported PYTHON is refused with one line.  Run with `make -n`
(and a stand-in `python` that fails the version check) in a copy of the
Makefile, so nothing is installed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


def old_python(path: Path) -> Path:
    # What a Python 3.10 does with the Makefile's version check: exit 1.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 1\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def checkout(tmp_path):
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    (tmp_path / "pyproject.toml").write_text("")
    return tmp_path


def make(checkout: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", *args], cwd=checkout, capture_output=True, text=True, timeout=60)


def test_a_venv_of_an_unsupported_python_is_made_again(checkout):
    old_python(checkout / ".venv" / "bin" / "python")
    (checkout / ".venv" / "installed").touch()  # newer than the sources: would otherwise stick
    planned = make(checkout, "-n", ".venv/installed", f"PYTHON={sys.executable}")
    assert planned.returncode == 0, planned.stderr
    assert ".venv was made with an unsupported Python: making it again" in planned.stdout
    assert not (checkout / ".venv").exists()
    assert f"{sys.executable} -m venv .venv" in planned.stdout


def test_a_supported_venv_is_kept(checkout):
    (checkout / ".venv" / "bin").mkdir(parents=True)
    (checkout / ".venv" / "bin" / "python").symlink_to(sys.executable)
    (checkout / ".venv" / "installed").touch()
    planned = make(checkout, "-n", ".venv/installed")
    assert planned.returncode == 0 and "making it again" not in planned.stdout
    assert (checkout / ".venv" / "installed").exists()


def test_an_unsupported_python_is_refused_with_one_line(checkout, tmp_path):
    python = old_python(tmp_path / "old" / "python3")
    refused = make(checkout, ".venv/installed", f"PYTHON={python}")
    assert refused.returncode != 0
    assert refused.stderr.splitlines()[0] == (
        f"make: {python} is older than Python 3.11; give a newer one, e.g. make PYTHON=python3.11 .venv/installed")
    assert not (checkout / ".venv").exists()


def planned_installs(checkout: Path, target: str) -> list[str]:
    planned = make(checkout, "-n", target, f"PYTHON={sys.executable}")
    assert planned.returncode == 0, planned.stderr
    return [line for line in planned.stdout.splitlines() if "pip install" in line and "--upgrade pip" not in line]


def test_make_run_installs_no_test_only_packages(checkout):
    # Playwright alone was 167 MB of a 296 MB .venv that only runs the server.
    installs = planned_installs(checkout, "run")
    assert installs, "make run installs the package"
    assert not [line for line in installs if "[test]" in line or "[mutate]" in line], installs


def test_make_test_installs_the_test_extras(checkout):
    installs = planned_installs(checkout, "test")
    assert [line for line in installs if "'.[test]'" in line], installs
