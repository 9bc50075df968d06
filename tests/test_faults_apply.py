"""
`make faults` (tools/faults.py) puts each deliberate fault into the code by
replacing one exact piece of it.  When the code moves on, a fault stops
applying and `make faults` says "cannot apply" instead of checking the
defence: each piece must still be there, once.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import faults  # noqa: E402


@pytest.mark.parametrize("fault", faults.FAULTS, ids=lambda f: f"fault-{f.number}")
def test_each_deliberate_fault_still_applies(fault):
    code = (ROOT / fault.file).read_text()
    assert code.count(fault.old) == 1, f"fault {fault.number} ({fault.what}) no longer applies to {fault.file}"
    for test in fault.tests:
        assert (ROOT / test.split("::")[0]).exists(), test
