"""
Each number the docs promise (tests/documented.py) is still what the docs
say, and still what the code uses: a change to either side is seen here,
and the behaviour tests that use the documented value catch the rest.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import documented

DOCS = Path(__file__).parent.parent / "docs"


def doc_text(name: str) -> str:
    return " ".join((DOCS / name).read_text().split())


def code_value(name: str):
    from medimage_tx import http_resource, relay, tap
    from medimage_tx.lan import rules as lan
    from medimage_tx.relay_store import pairing_codes as pairing, queue as relay_queue
    from medimage_tx.admin import sessions

    values = {
        "GUESSES_PER_ADDRESS": lambda: pairing.FAILURES_PER_ADDRESS,
        "GUESSES_IN_TOTAL": lambda: pairing.FAILURES_IN_TOTAL,
        "GUESS_WINDOW_SECONDS": lambda: pairing.FAILURE_WINDOW,
        "CODE_LIFETIME_SECONDS": lambda: pairing.CODE_LIFETIME,
        "LEASE_SECONDS": lambda: (relay_queue.DEFAULT_LEASE_SECONDS,
                                  inspect.signature(tap.build_service).parameters["lease_seconds"].default),
        "UDP_REPLIES_PER_SENDER_PER_SECOND": lambda: (
            inspect.signature(lan.ReplyLimiter).parameters["per_sender"].default
            / inspect.signature(lan.ReplyLimiter).parameters["window"].default),
        "CONNECTIONS_PER_ADDRESS": lambda: (http_resource.RELAY_CONNECTIONS_PER_ADDRESS,
                                            http_resource.PC_CONNECTIONS_PER_ADDRESS),
        "LONGEST_WAIT_SECONDS": lambda: relay.MAX_WAIT,
        "ISSUES_PER_ADDRESS": lambda: pairing.ISSUES_PER_ADDRESS,
        "ISSUES_IN_TOTAL": lambda: pairing.ISSUES_IN_TOTAL,
        "MAX_LIVE_CODES": lambda: pairing.MAX_LIVE_CODES,
        "LONGEST_GUID": lambda: pairing.MAX_GUID,
        "LONGEST_PROXY_SERVER": lambda: pairing.MAX_PROXY_SERVER,
        "LONGEST_COUNTRY": lambda: pairing.MAX_COUNTRY,
        "SIGNIN_FAILURES_PER_ADDRESS": lambda: sessions.FAILURES_PER_ADDRESS,
        "SIGNIN_FAILURES_IN_TOTAL": lambda: sessions.FAILURES_IN_TOTAL,
        "SIGNIN_BUCKET_SECONDS": lambda: sessions.THROTTLE_BUCKET_SECONDS,
        "SESSION_IDLE_SECONDS": lambda: sessions.IDLE_SECONDS,
        "SESSION_MAX_AGE_SECONDS": lambda: sessions.MAX_AGE_SECONDS,
        "SIGNIN_FAILURES_KEPT_FOR_FIRST_TRIES": lambda: sessions.FAILURES_KEPT_FOR_FIRST_TRIES,
    }
    return values[name]()


PROMISES = [
    ("GUESSES_PER_ADDRESS", "protocol.md", r"(\d+) failed compares per client address"),
    ("GUESSES_IN_TOTAL", "protocol.md", r"and (\d+) failed compares in total"),
    ("GUESS_WINDOW_SECONDS", "protocol.md", r"Limits, per (hour): \d+ failed"),
    ("CODE_LIFETIME_SECONDS", "protocol.md", r"case-insensitive, valid for one (hour)"),
    ("LEASE_SECONDS", "protocol.md", r"until confirmed, or for (\d+) minutes"),
    ("UDP_REPLIES_PER_SENDER_PER_SECOND", "protocol.md", r"a sender gets at most (\d+) replies a second"),
    ("CONNECTIONS_PER_ADDRESS", "security.md", r"connections at once: at most (\d+) per client address on both roles"),
    ("LONGEST_WAIT_SECONDS", "protocol.md", r"`\?wait=N` \(0-(\d+)\)"),
    ("SIGNIN_FAILURES_PER_ADDRESS", "security.md", r"buckets: (\d+) per client address"),
    ("SIGNIN_FAILURES_IN_TOTAL", "security.md", r"per client address and (\d+) in total per bucket"),
    ("SIGNIN_BUCKET_SECONDS", "security.md", r"counted in fixed (\d+)-minute buckets"),
    ("SESSION_IDLE_SECONDS", "security.md", r"they end after 1 (hour) unused"),
    ("SESSION_MAX_AGE_SECONDS", "security.md", r"unused, (\d+) hours in all"),
    ("SIGNIN_FAILURES_KEPT_FOR_FIRST_TRIES", "security.md", r"Of the \d+, the last (\d+) go only to"),
    ("ISSUES_PER_ADDRESS", "protocol.md", r"One client address may have (\d+) codes issued per hour"),
    ("ISSUES_IN_TOTAL", "protocol.md", r"all together ([\d,]+) per hour"),
    ("MAX_LIVE_CODES", "protocol.md", r"at most ([\d,]+) codes are live at once"),
    ("LONGEST_GUID", "protocol.md", r"`guid` may be at most (\d+) characters"),
    ("LONGEST_PROXY_SERVER", "protocol.md", r"`proxyServer` (\d+) and"),
    ("LONGEST_COUNTRY", "protocol.md", r"`country` (\d+), else `400`"),
    ("QUOTA_RETRY_AFTER_SECONDS", "security.md", r"uploads get `\d+` with `Retry-After: (\d+)`"),
]

UNITS = {"hour": 3600}


@pytest.mark.parametrize("name, doc, pattern", PROMISES, ids=[p[0] for p in PROMISES])
def test_documented_value_is_in_the_docs_and_the_code(name, doc, pattern):
    value = getattr(documented, name)
    found = re.search(pattern, doc_text(doc))
    assert found, f"{doc} no longer says {pattern!r}"
    said = found.group(1)
    said = UNITS[said] if said in UNITS else int(said.replace(",", ""))
    if name in ("LEASE_SECONDS", "SIGNIN_BUCKET_SECONDS"):
        said *= 60
    if name == "SESSION_MAX_AGE_SECONDS":
        said *= 3600
    assert said == value, f"{doc} says {said}, tests/documented.py says {value}"
    if name == "QUOTA_RETRY_AFTER_SECONDS":
        return  # an answer's header: test_faults.py checks it on the wire
    code = code_value(name)
    for actual in code if isinstance(code, tuple) else (code,):
        assert actual == value, f"the code uses {actual} for {name}; the docs promise {value}"


#: Numbers README.md promises a clinic: (what, the README's words, what the
#: code uses).  The behaviour behind each has its own test; this one sees a
#: change to either side.
README_PROMISES = [
    ("log file rotation size", r"log files are rotated at (\d+) MB", lambda: logs_value("ROTATE_BYTES") // 1_000_000),
    ("rotated log files kept", r"rotated at \d+ MB, (\d+) old ones kept", lambda: logs_value("KEEP_FILES")),
    ("busy UDP scan port retry", r"A busy UDP scan port is tried again every (\d+) seconds",
     lambda: discovery_value("CHECK_INTERVAL")),
    ("busy UDP scan port retry (troubleshooting)", r"tried again every (\d+) s\)", lambda: discovery_value("CHECK_INTERVAL")),
    ("relay expiry sweep", r"relay: photos nobody collected .*? \(checked (hourly)",
     lambda: relay_expiry_interval()),
]


def logs_value(name: str):
    from medimage_tx import logs

    return getattr(logs, name)


def discovery_value(name: str):
    from medimage_tx import discovery

    return getattr(discovery, name)


def relay_expiry_interval():
    from medimage_tx.relay import RelayExpiry

    return RelayExpiry.interval


@pytest.mark.parametrize("what, pattern, code", README_PROMISES, ids=[p[0] for p in README_PROMISES])
def test_readme_number_is_the_codes(what, pattern, code):
    readme = " ".join((DOCS.parent / "README.md").read_text().split())
    found = re.search(pattern, readme)
    assert found, f"README.md no longer says {pattern!r}"
    said = {"hourly": 3600}.get(found.group(1)) or int(found.group(1))
    assert code() == said, f"README.md says {said} for the {what}; the code uses {code()}"


def test_protocol_says_which_config_edits_apply_at_once_and_which_wait_for_a_restart():
    from medimage_tx.config_watch import NEEDS_RESTART

    said = re.search(r"it checks the file every \d+ s; (.*?) apply at once, while (.*?) need a restart",
                     doc_text("protocol.md"))
    assert said, "protocol.md no longer says which edits apply at once"
    at_once, restart = (set(re.findall(r"`(\w+)`", part)) for part in said.groups())
    assert restart == NEEDS_RESTART, f"protocol.md: {sorted(restart)}; the code: {sorted(NEEDS_RESTART)}"
    assert "backupTo" in at_once and not at_once & NEEDS_RESTART


def test_protocol_says_what_a_full_relay_answers():
    from medimage_tx.relay_store.base import quota_exceeded, relay_full

    text = doc_text("protocol.md")
    relay = text[text.index("## Internet relay and sync"):]
    relay = relay[:relay.index("Reading, ")]
    assert "503" not in relay.replace("never `503`", ""), "the relay section says 503: the code never answers it"
    for what, error in (("a pairing over its quota", quota_exceeded()), ("a full relay", relay_full())):
        promise = f"`{error.status}` with `Retry-After: {error.retry_after}` for {what}"
        assert promise in relay, f"protocol.md should say {promise!r}"

