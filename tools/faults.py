"""
Put each of issue 11's (and issue 19's) deliberate faults into the code, one at a time, run
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
ROUND3 = "tests/security/test_round3.py"


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
          "woken = relay.wait(paired_id, remaining)", "woken = relay.wait(paired_id, 10 ** 9)",
          [DEFENCES, "tests/test_relay.py"]),
    Fault(11, "the access log is switched back on", "medimage_tx/http_resource.py",
          "    def log(self, request):", "    def _no_access_log(self, request):",
          [DEFENCES + "::test_relay_log_never_holds_ids_folders_or_names", "tests/test_relay.py"], installed=True),
    Fault(12, "the relay's per-address connection cap is removed", "medimage_tx/http_resource.py",
          "connections_per_address=RELAY_CONNECTIONS_PER_ADDRESS,", "connections_per_address=10 ** 9,",
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
    # Issue 19: defences no test pinned, and the round's fixes.
    Fault(16, "the CSRF check is skipped for a POST body that is not a form", "medimage_tx/admin/access.py",
          "if csrf and (form is None or not self.csrf_ok(", "if csrf and (form is not None and not self.csrf_ok(",
          [ROUND3 + "::test_a_post_that_is_not_a_urlencoded_form_still_needs_the_token"], installed=True),
    Fault(17, "Origin/Referer are compared without the port", "medimage_tx/admin/access.py",
          "                    and _port(theirs) == _port(ours))", "                    )",
          [ROUND3 + "::test_a_page_on_another_port_of_the_pc_is_another_origin",
           ROUND3 + "::test_a_browser_page_on_another_port_runs_no_add_on"], installed=True),
    Fault(18, "the 12-hour maximum session age is not checked", "medimage_tx/admin/sessions.py",
          "if (now - session.last_used >= IDLE_SECONDS or now - session.created >= MAX_AGE_SECONDS",
          "if (now - session.last_used >= IDLE_SECONDS",
          [ROUND3 + "::test_a_session_ends_after_twelve_hours_however_often_it_is_used",
           ROUND3 + "::test_the_admin_pages_end_a_session_at_twelve_hours"]),
    Fault(19, "connections are capped per exact address, not per IPv6 /64", "medimage_tx/web/connection_limits.py",
          "        key = address_key(host)\n        held", "        key = host\n        held",
          [ROUND3 + "::test_ipv6_addresses_count_by_their_64",
           ROUND3 + "::test_a_device_with_many_ipv6_addresses_is_one_client"], installed=True),
    Fault(20, "no connection slots are kept for clients holding few", "medimage_tx/web/connection_limits.py",
          "return int(self.total * RESERVED_SHARE)", "return 0",
          [ROUND3 + "::test_a_device_with_many_addresses_cannot_take_every_connection"], installed=True),
    Fault(21, "the PROXY header is read from anyone", "medimage_tx/web/proxy_protocol.py",
          "if not listed(peer, self.factory.sources()):", "if False:",
          [ROUND3 + "::test_a_forged_proxy_header_gets_no_admin_page_and_locks_no_one_out"], installed=True),
    Fault(22, "a client a balancer passed on can be the admin", "medimage_tx/admin/access.py",
          "        if relayed(request):\n            return False\n", "",
          [ROUND3 + "::test_proxy_protocol_is_taken_from_loopback_only_by_default",
           ROUND3 + "::test_a_request_a_local_reverse_proxy_relayed_is_not_the_admin"], installed=True),
    Fault(23, "no wrong passwords are kept for addresses' first tries", "medimage_tx/admin/sessions.py",
          "FAILURES_KEPT_FOR_FIRST_TRIES = 25", "FAILURES_KEPT_FOR_FIRST_TRIES = 0",
          [ROUND3 + "::test_guessers_on_eleven_addresses_do_not_lock_out_the_right_password",
           "tests/test_documented.py"], installed=True),
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
