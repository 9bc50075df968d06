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
MEMORY = "tests/test_http_memory.py"


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
          [DEFENCES, "tests/test_upload_http.py", MEMORY]),
    Fault(3, "11 failed compares per address instead of 10", "medimage_tx/relay_store/pairing_codes.py",
          "FAILURES_PER_ADDRESS = 10", "FAILURES_PER_ADDRESS = 11",
          [DEFENCES, "tests/test_pairing.py", "tests/test_documented.py", MEMORY]),
    Fault(4, "/ \\ : NUL only filtered by allowedChars", "medimage_tx/photos/naming.py",
          "        cleaned = \"\".join(c for c in cleaned if c not in _NEVER)\n", "",
          [DEFENCES, "tests/test_naming.py", MEMORY]),
    Fault(5, "paths.inside() checks nothing", "medimage_tx/photos/paths.py",
          "    parts = PurePosixPath(relative).parts\n",
          "    return base / relative\n    parts = PurePosixPath(relative).parts\n",
          [DEFENCES, "tests/test_naming.py"]),
    Fault(6, "COM1-9 / LPT1-9 not defused", "medimage_tx/photos/naming.py",
          '_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL"} | {',
          '_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL"} or {',
          [DEFENCES, "tests/test_naming.py", MEMORY]),
    Fault(7, "the PC never checks the relay's Digest", "medimage_tx/pc/puller.py",
          "            download.check()\n", "",
          [DEFENCES, "tests/test_relay.py"]),
    Fault(8, "a plain GET /read/ whose sending fails does not put the photo back", "medimage_tx/relay.py",
          "                relay.store.release(delivery).addErrback(", "                (lambda d: d)(",
          [DEFENCES, "tests/test_relay.py", MEMORY]),
    Fault(9, "a JSONP read consumes the photo", "medimage_tx/relay.py",
          "            text = photo.file_name if photo is not None else NOTHING.decode()\n",
          "            text = photo.file_name if photo is not None else NOTHING.decode()\n"
          "            if photo is not None:\n                relay.queue.take(paired_id)\n",
          [DEFENCES, "tests/test_relay.py", MEMORY]),
    Fault(10, "a long poll ignores wait=N and never answers none", "medimage_tx/relay.py",
          "woken = relay.wait(paired_id, remaining)", "woken = relay.wait(paired_id, 10 ** 9)",
          [DEFENCES, "tests/test_relay.py", MEMORY]),
    Fault(11, "the access log is switched back on", "medimage_tx/http_resource.py",
          "    def log(self, request):", "    def _no_access_log(self, request):",
          [DEFENCES + "::test_relay_log_never_holds_ids_folders_or_names", "tests/test_relay.py",
           MEMORY + "::test_the_relay_never_logs_ids_folders_or_names"], installed=True),
    Fault(12, "the relay's per-address connection cap is removed", "medimage_tx/http_resource.py",
          "connections_per_address=RELAY_CONNECTIONS_PER_ADDRESS,", "connections_per_address=10 ** 9,",
          [DEFENCES + "::test_relay_caps_connections_per_address_at_the_documented_number",
           MEMORY + "::test_connections_are_capped_per_address"]),
    Fault(13, "500 UDP replies per sender per second instead of 5", "medimage_tx/lan/rules.py",
          "per_sender: int = 5,", "per_sender: int = 500,",
          [DEFENCES, "tests/test_lan.py", "tests/test_documented.py"]),
    Fault(14, "the backupTo copy is written in place", "medimage_tx/photos/store.py",
          "                    self._copy_durably(staged, target, dest)",
          "                    shutil.copyfile(staged, dest)",
          [DEFENCES]),
    Fault(15, "the lease is 30 s instead of 5 minutes", "medimage_tx/relay_store/queue.py",
          "DEFAULT_LEASE_SECONDS = 300.0", "DEFAULT_LEASE_SECONDS = 30.0",
          [DEFENCES, "tests/test_relay.py", "tests/test_documented.py", MEMORY]),
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
           ROUND3 + "::test_the_admin_pages_end_a_session_at_twelve_hours",
           MEMORY + "::test_an_admin_session_ends_at_twelve_hours"]),
    Fault(19, "connections are capped per exact address, not per IPv6 /64", "medimage_tx/web/connection_limits.py",
          "        key = address_key(host)\n        held", "        key = host\n        held",
          [ROUND3 + "::test_ipv6_addresses_count_by_their_64",
           ROUND3 + "::test_a_device_with_many_ipv6_addresses_is_one_client",
           MEMORY + "::test_ipv6_clients_count_by_their_64"], installed=True),
    Fault(20, "no connection slots are kept for clients holding few", "medimage_tx/web/connection_limits.py",
          "return int(self.total * RESERVED_SHARE)", "return 0",
          [ROUND3 + "::test_a_device_with_many_addresses_cannot_take_every_connection",
           MEMORY + "::test_a_device_with_many_addresses_cannot_take_every_connection"], installed=True),
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
    # Issue 18: the HTTP-level defences, each caught by its in-memory test
    # (tests/test_http_memory.py); each test names its real-server counterpart.
    Fault(24, "the header deadline is never started", "medimage_tx/http_resource.py",
          "    def _start_header_deadline(self) -> None:\n        self._stop_header_deadline()\n",
          "    def _start_header_deadline(self) -> None:\n        return\n",
          [MEMORY + "::test_the_header_deadline_runs_from_connect"]),
    Fault(25, "a kept-alive connection's next request gets no header deadline", "medimage_tx/http_resource.py",
          "            self._awaiting_request = False\n            self._start_header_deadline()\n",
          "            self._awaiting_request = False\n",
          [MEMORY + "::test_a_kept_alive_request_has_its_own_header_deadline"]),
    Fault(26, "no body deadline", "medimage_tx/http_resource.py",
          "        self._set_deadline(limits.body_base_seconds + expected / limits.min_body_rate)\n",
          "        pass\n",
          [MEMORY + "::test_a_body_that_stops_coming_is_cut_off_at_its_deadline"]),
    Fault(27, "the body deadline follows the declared length, uncapped", "medimage_tx/http_resource.py",
          "        expected = min(length if length is not None else largest, largest)\n",
          "        expected = length if length is not None else largest\n",
          [MEMORY + "::test_a_huge_declared_body_gets_no_more_time_than_the_largest_upload"]),
    Fault(28, "no per-address connection cap", "medimage_tx/web/connection_limits.py",
          "        if self.open >= self.total or held >= self.per_address:\n",
          "        if self.open >= self.total:\n",
          [MEMORY + "::test_connections_are_capped_per_address"]),
    Fault(29, "no cap on connections in total", "medimage_tx/http_resource.py",
          "        self.caps.total = limits.connections_in_total\n", "        self.caps.total = 10 ** 9\n",
          [MEMORY + "::test_connections_in_total_are_capped"]),
    Fault(30, "no request budget", "medimage_tx/http_resource.py",
          "        ticket = channel.site.budget.request(\n"
          "            channel.budget_key, lambda: self._take_turn(command, path, version))\n",
          "        ticket = None\n",
          [MEMORY + "::test_a_flooding_address_is_paused_while_another_uploads"]),
    Fault(31, "a request over budget waits, but its connection is still read", "medimage_tx/http_resource.py",
          "        self._budget_ticket = ticket\n        channel.pause_reading()\n",
          "        self._budget_ticket = ticket\n",
          [MEMORY + "::test_a_flooding_address_is_paused_while_another_uploads"]),
    Fault(32, "a multipart body past its bound is read to the end", "medimage_tx/http_resource.py",
          "            if self.receiver.refuse_now and self.receiver.error is not None:", "            if False:",
          [MEMORY + "::test_endless_chunked_bodies_are_refused_at_their_bound"]),
    Fault(33, "the PC answers 200 before the photo is stored", "medimage_tx/http_resource.py",
          "        stored = await self.filing.file(received.temp_path, received.fd, parts, received.size, \"phone\")\n",
          "        ensureDeferred(self.filing.file(received.temp_path, received.fd, parts, received.size, \"phone\"))\n"
          "        return Answer(200, RECEIVED)\n",
          [MEMORY + "::test_200_only_once_the_photo_is_on_disk"]),
    Fault(34, "the relay answers 200 before the photo is stored", "medimage_tx/http_resource.py",
          "        _, duplicate = await detached(ensureDeferred(self.relay.store.put(\n"
          "            paired_id, parts, received.temp_path, received.fd, received.size, config)))\n",
          "        ensureDeferred(self.relay.store.put(\n"
          "            paired_id, parts, received.temp_path, received.fd, received.size, config))\n"
          "        duplicate = False\n",
          [MEMORY + "::test_200_only_once_the_photo_is_on_disk"]),
    Fault(35, "a full disk answers 503", "medimage_tx/errors.py",
          "return TryLater(reason, status=507,", "return TryLater(reason, status=503,",
          [MEMORY + "::test_a_full_disk_is_never_a_503"]),
    Fault(36, "CORS headers on every route", "medimage_tx/http_resource.py",
          "    return segment in APP_ROUTES or segment.startswith(b\"check=\")\n", "    return True\n",
          [MEMORY + "::test_cors_headers_only_on_the_routes_the_apps_call"]),
    Fault(37, "no Host check on the PC's own pages", "medimage_tx/admin/access.py",
          "        return host is not None and self.names.allows(host.decode(\"latin-1\"))\n",
          "        return True\n",
          [MEMORY + "::test_a_rebound_dns_name_gets_no_admin_page"]),
    Fault(38, "a GET with fields is handled as a POST", "medimage_tx/admin/access.py",
          "        if request.method == b\"POST\":\n            if not hasattr(self, \"render_POST\"):\n",
          "        if request.method == b\"GET\" and request.args and hasattr(self, \"render_POST\"):\n"
          "            return self.render_POST(request, {k.decode(): v[0].decode() for k, v in request.args.items()})\n"
          "        if request.method == b\"POST\":\n            if not hasattr(self, \"render_POST\"):\n",
          [MEMORY + "::test_no_get_changes_anything"]),
    Fault(39, "HEAD of a POST-only route answers 500", "medimage_tx/http_resource.py",
          "        if self.method == b\"HEAD\" and hasattr(resrc, \"render_POST\")",
          "        if False and hasattr(resrc, \"render_POST\")",
          [MEMORY + "::test_no_get_changes_anything"]),
    Fault(40, "the relay logs an upload's file name", "medimage_tx/http_resource.py",
          "        log.info(\"Relay: queued a photo for {fp} ({size} bytes) in {ms:.0f} ms\",\n",
          "        log.info(\"Relay: queued a photo for {fp} ({size} bytes) in {ms:.0f} ms \" + received.filename,\n",
          [MEMORY + "::test_the_relay_never_logs_ids_folders_or_names"]),
    Fault(41, "idle keep-alive connections are never closed", "medimage_tx/http_resource.py",
          "parsePOSTFormSubmission=False, timeout=75,", "parsePOSTFormSubmission=False, timeout=None,",
          [MEMORY + "::test_an_idle_connection_is_closed_on_the_servers_clock"]),
    Fault(42, "1,000 headers allowed instead of 64", "medimage_tx/http_resource.py",
          "    maxHeaders = 64\n", "    maxHeaders = 1000\n",
          [MEMORY + "::test_oversized_request_heads_are_refused"]),
    Fault(43, "a 64 KiB request line allowed instead of 8 KiB", "medimage_tx/http_resource.py",
          "    MAX_LENGTH = 8192\n", "    MAX_LENGTH = 65536\n",
          [MEMORY + "::test_oversized_request_heads_are_refused"]),
    Fault(44, "no cap on the headers' total size", "medimage_tx/http_resource.py",
          "    totalHeadersSize = 16384\n", "    totalHeadersSize = 10 ** 6\n",
          [MEMORY + "::test_oversized_request_heads_are_refused"]),
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
