"""
`make test` on a machine without the programs some tests drive (Chromium,
PostgreSQL, HAProxy; README "Set up" lists them): those tests are skipped
with a line naming the program and how to install it, never failed or
errored; in CI (CI=true) they fail, because CI must run every test.

The programs are hidden for real: the suite runs in a mount namespace of
its own where they are not installed (PostgreSQL's folder is an empty
tmpfs, the others' files are /dev/null, which is not executable).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from conftest import skip_here_fail_in_ci

REPO = Path(__file__).parent.parent

#: One test per program: (test id, the program its skip must name).
NEEDS = [
    ("tests/test_web_admin_browser.py::test_home_page_says_what_a_clinic_needs", "chromium"),
    ("tests/test_relay_cluster.py::test_behind_haproxy_limits_count_each_clients_own_address", "haproxy"),
    ("tests/test_relay_store_postgres.py::test_schema_is_created_then_left_alone", "postgresql"),
]

HIDE = """
set -e
for program in chromium haproxy; do
  found=$(command -v "$program" || true)
  if [ -n "$found" ]; then mount --bind /dev/null "$(readlink -f "$found")"; fi
done
if [ -d /usr/lib/postgresql ]; then mount -t tmpfs tmpfs /usr/lib/postgresql; fi
exec "$@"
"""


def run_without_programs(tmp_path: Path, ci: bool) -> tuple[dict[str, tuple[str, str]], str]:
    """
    Run L{NEEDS}' tests with the programs hidden; each test's outcome
    (passed, skipped, failed, error) and message, and what pytest printed.
    """
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        skip_here_fail_in_ci("hiding installed programs needs root and unshare")
    report = tmp_path / ("ci.xml" if ci else "here.xml")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    run = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", HIDE, "hide",
         sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={report}",
         f"--basetemp={tmp_path / ('ci' if ci else 'here')}", *[test for test, _ in NEEDS]],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert report.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    outcomes = {}
    for case in ElementTree.parse(report).iter("testcase"):
        name = f"{case.get('classname').replace('.', '/')}.py::{case.get('name')}"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("skipped", "failure", "error"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
                message = child.get("message", "")
                break
        outcomes[name] = (outcome, message)
    return outcomes, run.stdout


def test_missing_programs_skip_their_tests_with_a_line_outside_ci(tmp_path):
    outcomes, printed = run_without_programs(tmp_path, ci=False)
    for test, program in NEEDS:
        outcome, message = outcomes[test]
        assert outcome == "skipped", f"{test}: {outcome}: {message}"
        assert program in message.lower() and "apt-get install" in message, message
        # Said where a person reads it: the summary's line for each skip.
        assert f"{test.split('::')[0]}:" in printed and f"(apt-get install {program})" in printed, printed[-2000:]
    # And first: the header names what is missing.
    assert "not installed here: chromium, haproxy, postgresql" in printed, printed[:2000]


def test_missing_programs_fail_their_tests_in_ci(tmp_path):
    outcomes, _ = run_without_programs(tmp_path, ci=True)
    for test, program in NEEDS:
        outcome, message = outcomes[test]
        assert outcome in ("failed", "error"), f"{test}: {outcome}: {message}"
        assert "must run in CI" in message and program in message.lower(), message
