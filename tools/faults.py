"""
Put each of issue 11's deliberate faults into the code, one at a time, run
the tests that must catch it, and put the code back: `make faults`.

Prints one line per fault: the tests that failed (good: the fault was
caught) or "NOT CAUGHT".  A fault whose code has moved on prints "cannot
apply" and needs its patch below brought up to date.

    .venv/bin/python tools/faults.py [NUMBER...]
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFENCES = "tests/security/test_defences.py"


@dataclass
class Fault:
    number: int
    what: str
    file: str
    old: str
    new: str
    tests: list[str]
    #: The tests run the installed package in a real twistd: reinstall first.
    installed: bool = False


FAULTS = [
    Fault(1, "the upload is not fsynced before it is linked into place", "medimage_tx/photos/store.py",
          "                    os.fsync(fd)\n                finally:\n                    os.close(fd)",
          "                    pass\n                finally:\n                    os.close(fd)",
          [DEFENCES + "::test_upload_and_backup_copy_are_fsynced_before_they_are_linked"], installed=True),
    Fault(2, "the up-front refusal from Content-Length is skipped", "medimage_tx/photos/multipart.py",
          "if declared_length is not None and declared_length > max_file_size + ENVELOPE_ALLOWANCE:",
          "if False:",
          [DEFENCES, "tests/test_upload_http.py"]),
    Fault(3, "11 failed compares per address instead of 10", "medimage_tx/relay_store/pairing_codes.py",
          "FAILURES_PER_ADDRESS = 10", "FAILURES_PER_ADDRESS = 11",
          [DEFENCES, "tests/test_pairing.py", "tests/test_documented.py"]),
    Fault(4, "/ \\ : NUL only filtered by allowedChars", "medimage_tx/photos/naming.py",
          "        cleaned = \"\".join(c for c in cleaned if c not in _NEVER)\n", "",
          [DEFENCES, "tests/test_naming.py"]),
    Fault(5, "paths.inside() checks nothing", "medimage_tx/photos/paths.py",
          "    parts = PurePosixPath(relative).parts\n",
          "    return base / relative\n    parts = PurePosixPath(relative).parts\n",
          [DEFENCES, "tests/test_naming.py"]),
    Fault(6, "COM1-9 / LPT1-9 not defused", "medimage_tx/photos/naming.py",
          '_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL"} | {',
          '_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL"} or {',
          [DEFENCES, "tests/test_naming.py"]),
    Fault(7, "the PC never checks the relay's Digest", "medimage_tx/pc/puller.py",
          "            download.check()\n", "",
          [DEFENCES, "tests/test_relay.py"]),
    Fault(8, "a plain GET /read/ whose sending fails does not put the photo back", "medimage_tx/relay.py",
          "                relay.store.release(delivery)\n", "                pass\n",
          [DEFENCES, "tests/test_relay.py"]),
    Fault(9, "a JSONP read consumes the photo", "medimage_tx/relay.py",
          "            text = photo.file_name if photo is not None else NOTHING.decode()\n",
          "            text = photo.file_name if photo is not None else NOTHING.decode()\n"
          "            if photo is not None:\n                relay.queue.take(paired_id)\n",
          [DEFENCES, "tests/test_relay.py"]),
    Fault(10, "a long poll ignores wait=N and never answers none", "medimage_tx/relay.py",
          "await relay.wait(paired_id, wait)", "await relay.wait(paired_id, 10 ** 9)",
          [DEFENCES, "tests/test_relay.py"]),
    Fault(11, "the access log is switched back on", "medimage_tx/http_resource.py",
          "    def log(self, request):", "    def _no_access_log(self, request):",
          [DEFENCES + "::test_relay_log_never_holds_ids_folders_or_names", "tests/test_relay.py"], installed=True),
    Fault(12, "the relay's per-address connection cap is removed", "medimage_tx/http_resource.py",
          "(RELAY_CONNECTIONS_PER_ADDRESS if relay", "(10 ** 9 if relay",
          [DEFENCES + "::test_relay_caps_connections_per_address_at_the_documented_number"]),
    Fault(13, "500 UDP replies per sender per second instead of 5", "medimage_tx/lan/rules.py",
          "per_sender: int = 5,", "per_sender: int = 500,",
          [DEFENCES, "tests/test_lan.py", "tests/test_documented.py"]),
    Fault(14, "the backupTo copy is written in place", "medimage_tx/photos/store.py",
          "                    self._copy_durably(staged, target, dest)",
          "                    shutil.copyfile(staged, dest)",
          [DEFENCES]),
    Fault(15, "the lease is 30 s instead of 5 minutes", "medimage_tx/relay_store/queue.py",
          "DEFAULT_LEASE_SECONDS = 300.0", "DEFAULT_LEASE_SECONDS = 30.0",
          [DEFENCES, "tests/test_relay.py", "tests/test_documented.py"]),
]


def reinstall() -> None:
    subprocess.run(["make", "-s", ".venv/installed"], cwd=ROOT, check=True, capture_output=True)


def run(fault: Fault) -> str:
    path = ROOT / fault.file
    original = path.read_text()
    if original.count(fault.old) != 1:
        return "cannot apply: the code has changed"
    try:
        path.write_text(original.replace(fault.old, fault.new))
        if fault.installed:
            reinstall()
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", "-x", *fault.tests],
            cwd=ROOT, capture_output=True, text=True, timeout=900)
    finally:
        path.write_text(original)
        if fault.installed:
            reinstall()
    failed = re.findall(r"^FAILED (\S+)", result.stdout, re.MULTILINE)
    return "caught by " + ", ".join(failed) if failed else "NOT CAUGHT"


def main(numbers: list[int]) -> int:
    missed = 0
    for fault in FAULTS:
        if numbers and fault.number not in numbers:
            continue
        outcome = run(fault)
        missed += not outcome.startswith("caught")
        print(f"{fault.number:2d}. {fault.what}: {outcome}", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main([int(n) for n in sys.argv[1:]]))
