"""
Pairing codes (PROTOCOL.md A5, B4): the relay hands a PC a 4-character code
for its paired id; phones redeem the code for the id within an hour.

Four characters are guessable, so failed redemptions are limited per client
address and in total.  The odds that follow from the limits (see
L{guess_odds}) are in the README.  Plain Python: time comes from C{now}.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import quote

from .config import write_json_atomically
from .identity import PAIRED_ID

#: No look-alikes: no 0/O, no 1/I/L.
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 4
CODE_LIFETIME = 3600.0
ID_ALPHABET = string.ascii_letters + string.digits
ID_LENGTH = 18

#: Failed redemptions allowed from one client address per window.
FAILURES_PER_ADDRESS = 10
#: Failed redemptions allowed from everyone together per window; past it,
#: every redemption fails until the window has room again.
FAILURES_IN_TOTAL = 100
FAILURE_WINDOW = 3600.0

NOMATCH = "nomatch"
#: A code as a pairing service may issue it (AtomJump's are mixed case).
PAIRING_CODE = re.compile(r"[A-Za-z0-9]{2,12}")


def guess_odds(total_failures: int = FAILURES_IN_TOTAL) -> float:
    """
    The chance that an attacker finds one given live code: a code lives at
    most one C{FAILURE_WINDOW}, in which at most C{total_failures} wrong
    guesses are answered, out of C{len(CODE_ALPHABET) ** CODE_LENGTH} codes.
    """
    return total_failures / len(CODE_ALPHABET) ** CODE_LENGTH


@dataclass
class Pairing:
    code: str
    paired_id: str
    proxy_server: str
    country: str
    expires: float


class PairingBook:
    """
    Live codes, stored in a JSON file so they survive a restart.
    """

    def __init__(self, path: Path, now: Callable[[], float]):
        self.path = path
        self.now = now
        self._codes: dict[str, Pairing] = {}
        self._failures_by_address: dict[str, deque[float]] = {}
        self._failures: deque[float] = deque()
        self._load()

    def _load(self) -> None:
        try:
            entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            entries = []
        for entry in entries if isinstance(entries, list) else []:
            try:
                pairing = Pairing(**entry)
            except TypeError:
                continue
            if pairing.expires > self.now():
                self._codes[pairing.code] = pairing
        self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(self.path, [vars(p) for p in self._codes.values()])

    def purge_expired(self) -> None:
        now = self.now()
        expired = [code for code, p in self._codes.items() if p.expires <= now]
        for code in expired:
            del self._codes[code]
        if expired:
            self._save()

    def issue(self, guid: str, proxy_server: str, country: str) -> Pairing:
        """
        A new code for the PC's id, or for a new id when it has none.
        """
        self.purge_expired()
        paired_id = guid if PAIRED_ID.fullmatch(guid or "") else new_id()
        while True:
            code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
            if code not in self._codes:
                break
        pairing = Pairing(code, paired_id, proxy_server, country, self.now() + CODE_LIFETIME)
        self._codes[code] = pairing
        self._save()
        return pairing

    def redeem(self, code: str, address: str) -> Optional[Pairing]:
        """
        The pairing for C{code}, or L{None}.  Every way of failing takes the
        same path and counts against the limits.
        """
        now = self.now()
        self._forget_old_failures(now)
        by_address = self._failures_by_address.setdefault(address, deque())
        allowed = len(by_address) < FAILURES_PER_ADDRESS and len(self._failures) < FAILURES_IN_TOTAL
        pairing = self._codes.get(normalise_code(code))
        if allowed and pairing is not None and pairing.expires > now:
            return pairing
        by_address.append(now)
        self._failures.append(now)
        return None

    def _forget_old_failures(self, now: float) -> None:
        cutoff = now - FAILURE_WINDOW
        while self._failures and self._failures[0] <= cutoff:
            self._failures.popleft()
        for address in list(self._failures_by_address):
            failures = self._failures_by_address[address]
            while failures and failures[0] <= cutoff:
                failures.popleft()
            if not failures:
                del self._failures_by_address[address]


def new_id() -> str:
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(ID_LENGTH))


def normalise_code(code: str) -> str:
    return code.strip().upper()


def issue_answer(pairing: Pairing) -> str:
    """
    A5: C{<CODE> <id> <proxyServer> <url-encoded country>}.
    """
    return f"{pairing.code} {pairing.paired_id} {pairing.proxy_server} {quote(pairing.country)}"


def redeem_answer(pairing: Optional[Pairing]) -> str:
    """
    A5: C{<proxyServer>/write/<id>}, or C{nomatch}.
    """
    if pairing is None:
        return NOMATCH
    return f"{pairing.proxy_server.rstrip('/')}/write/{pairing.paired_id}"


@dataclass(frozen=True)
class IssuedCode:
    """
    What a PC makes of the pairing service's answer.
    """

    code: str
    paired_id: str
    proxy_server: str

    @property
    def read_proxy(self) -> str:
        return f"{self.proxy_server.rstrip('/')}/read/{self.paired_id}"


class BadPairingAnswer(Exception):
    pass


def parse_issue_answer(text: str) -> IssuedCode:
    """
    Parse C{<code> <id> <proxyServer> <country>}, strictly: a PC stores
    what it gets, so nothing odd gets into config.json.  The code is kept
    as given (AtomJump's central service compares mixed-case codes as they
    are).  Messages never repeat the answer.
    """
    words = text.strip().split()
    if len(words) < 3:
        raise BadPairingAnswer("expected '<code> <id> <relay>'")
    code, paired_id, proxy_server = words[:3]
    if not PAIRING_CODE.fullmatch(code):
        raise BadPairingAnswer("the code in the answer is not a pairing code")
    if not PAIRED_ID.fullmatch(paired_id):
        raise BadPairingAnswer("the id in the answer is not a valid id")
    if not proxy_server.startswith(("http://", "https://")):
        raise BadPairingAnswer("the relay address in the answer is not an http(s) address")
    return IssuedCode(code, paired_id, proxy_server.rstrip("/"))
