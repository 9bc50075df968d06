"""
The suite's own promise: nothing left behind (docs/testing.md).  A process
a test started is stopped after it, with whatever it started itself.
"""

from __future__ import annotations

import psutil
import pytest_twisted

from conftest import stop, within
from processes import spawn


@pytest_twisted.ensureDeferred
async def test_a_wrapper_and_what_it_started_are_stopped(tmp_path):
    # As strace around twistd: signalled alone, the wrapper leaves its
    # child running (before the fix: 10 s for each of SIGTERM and SIGKILL,
    # then the child left behind, still holding the output pipe).
    process = spawn(["/bin/sh", "-c", "sleep 600 & echo $!; wait"], str(tmp_path))
    child = int((await within(process.wait_for(rb"(\d+)\n"))).group(1))
    await within(stop(process))
    assert process.ended.called, "the wrapper did not end"
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE, \
        "the wrapper's child was left running"
