"""
`medimage-tx service install --dry-run`: the systemd unit it would install,
checked by systemd-analyze where the tool exists, and its ExecStart run for
real.  (The install itself, which creates a user and enables the unit, is
not run here: it changes the machine.)
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted

from processes import spawn

COMMAND = Path(sys.executable).parent / "medimage-tx"
pytestmark = pytest.mark.skipif(not COMMAND.exists(), reason="no medimage-tx installed: use `make test`")


def dry_run(*args: str) -> str:
    done = subprocess.run([str(COMMAND), "service", "install", "--dry-run", *args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def unit_values(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(key + "=")]


def test_the_unit_runs_as_a_dedicated_user_and_restarts_on_failure(tmp_path):
    unit = dry_run("--user", "medimage", "--data", str(tmp_path / "data"), "--", "--port", "5567")
    assert unit_values(unit, "User") == ["medimage"] and unit_values(unit, "Group") == ["medimage"]
    assert unit_values(unit, "Restart") == ["on-failure"]
    assert unit_values(unit, "WantedBy") == ["multi-user.target"]
    [exec_start] = unit_values(unit, "ExecStart")
    assert shlex.split(exec_start) == [str(COMMAND), "serve", "--data", str(tmp_path / "data"), "--port", "5567"]


def test_systemd_analyze_accepts_the_unit(tmp_path):
    if shutil.which("systemd-analyze") is None:
        if os.environ.get("CI"):
            pytest.fail("CI installs systemd (.ci/run): systemd-analyze must be there")
        pytest.skip("no systemd-analyze on this machine")
    unit = tmp_path / "medimage-tx.service"
    unit.write_text(dry_run("--data", str(tmp_path / "data")))
    checked = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stderr
    assert "medimage-tx.service" not in checked.stderr  # no warning about our unit


@pytest_twisted.ensureDeferred
async def test_the_units_exec_start_runs_the_server(tmp_path):
    data = tmp_path / "data"
    unit = dry_run("--data", str(data), "--", "--port", "0", "--no-lan", "--interface", "127.0.0.1")
    [exec_start] = unit_values(unit, "ExecStart")
    process = spawn(shlex.split(exec_start), str(tmp_path))
    try:
        await process.port()
        await process.wait_for(rb"Start-up check done")  # the reactor runs: SIGTERM is handled
        assert (data / "twistd.pid").exists()
    finally:
        if not process.ended.called:
            process.transport.signalProcess(signal.SIGTERM)
    assert await process.ended_within(60) == -signal.SIGTERM
    assert not (data / "twistd.pid").exists(), process.output.decode()
