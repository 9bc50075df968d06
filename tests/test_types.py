"""
The package type-checks (issue 18): mypy, with pyproject's [tool.mypy]
settings (mypy-zope for Twisted's interfaces), finds no error in
medimage_tx/. It runs here so `make test`, the README's one test command
and what CI runs, fails on a type error like on any other failing test.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_finds_no_error_in_the_package(tmp_path_factory):
    # Its own cache folder: no .mypy_cache left in the work tree, and no
    # cache shared between two runs of the suite at once.
    cache = tmp_path_factory.mktemp("mypy-cache")
    run = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(cache)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    errors = [line for line in run.stdout.splitlines() if ": error:" in line]
    assert run.returncode == 0 and errors == [], (
        f"mypy found {len(errors)} errors (exit {run.returncode}):\n{run.stdout}{run.stderr}")
    # Every module was checked: the settings name the whole package.
    checked = re.search(r"no issues found in (\d+) source files", run.stdout)
    modules = len(list((ROOT / "medimage_tx").rglob("*.py")))
    assert checked and int(checked.group(1)) == modules, run.stdout
