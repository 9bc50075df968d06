"""
Pairing codes (PROTOCOL.md A5, B4): the relay hands a PC a 4-character code
for its paired id; phones redeem the code for the id within an hour.

Four characters are guessable, so compares are limited per client address
and in total, and the counts are saved with the codes: a restart (or a
crash an attacker caused) gives no fresh guesses.  Issuing codes is limited
too, and so is the number of live codes.  The odds that follow from the
limits (see L{guess_odds}) are in docs/protocol.md.  Plain Python: time
comes from C{now}; saving is the caller's job (L{PairingBook.snapshot}).
"""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass
from typing import Any, Callable, Optional
from urllib.parse import quote

from ..errors import Rejected, TryLater
from ..identity import PAIRED_ID
from .rate_limits import WindowLimiter

#: No look-alikes: no 0/O, no 1/I/L.
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 4
CODE_LIFETIME = 3600.0
ID_ALPHABET = string.ascii_letters + string.digits
ID_LENGTH = 18

#: Compares that may fail from one client address per window.
FAILURES_PER_ADDRESS = 10
#: Compares that may fail from everyone together per window; past it,
#: every compare answers nomatch until the window has room again.
FAILURES_IN_TOTAL = 100
FAILURE_WINDOW = 3600.0

#: Codes one address may have issued per hour (a clinic pairs a few phones),
#: and all addresses together.
ISSUES_PER_ADDRESS = 30
ISSUES_IN_TOTAL = 1000
#: Codes live at once: far fewer than the 923,521 possible, so a new code is
#: found at once and a guess rarely hits some code or other.
MAX_LIVE_CODES = 1000
#: Longest accepted fields of an issue request.
MAX_GUID = 64
MAX_PROXY_SERVER = 256
MAX_COUNTRY = 64

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


@dataclass
class Compare:
    """
    One compare that the limits let through: already counted as a failure
    (so a crash before the count is saved cannot give a free guess); a
    match is uncounted by L{PairingBook.settle} once the count is saved.
    """

    address: str
    pairing: Optional[Pairing]


class PairingBook:
    """
    Live codes and the limits on issuing and guessing them.  The caller
    saves L{snapshot} durably (and loads it back with L{restore}) before it
    answers anything that changed it.
    """

    def __init__(self, now: Callable[[], float]):
        self.now = now
        self._codes: dict[str, Pairing] = {}
        self.failures = WindowLimiter(now, FAILURES_PER_ADDRESS, FAILURES_IN_TOTAL, FAILURE_WINDOW)
        self.issues = WindowLimiter(now, ISSUES_PER_ADDRESS, ISSUES_IN_TOTAL, CODE_LIFETIME)

    def snapshot(self) -> dict[str, Any]:
        self.purge_expired()
        return {"codes": [vars(p) for p in self._codes.values()],
                "failedCompares": self.failures.snapshot()}

    def restore(self, saved: Any) -> None:
        """
        Take back a L{snapshot}, or the older file shape (a list of codes).
        """
        if isinstance(saved, list):
            saved = {"codes": saved}
        if not isinstance(saved, dict):
            return
        entries = saved.get("codes")
        for entry in entries if isinstance(entries, list) else []:
            try:
                pairing = Pairing(**entry)
            except TypeError:
                continue
            if pairing.expires > self.now():
                self._codes[pairing.code] = pairing
        self.failures.restore(saved.get("failedCompares"))

    def purge_expired(self) -> None:
        now = self.now()
        for code in [code for code, p in self._codes.items() if p.expires <= now]:
            del self._codes[code]

    def live_codes(self) -> int:
        return len(self._codes)

    def issue(self, guid: str, proxy_server: str, country: str, address: str = "") -> Pairing:
        """
        A new code for the PC's id, or for a new id when it has none.

        @raise Rejected: a field too long.
        @raise TryLater: too many codes issued or live.
        """
        if len(guid) > MAX_GUID or len(proxy_server) > MAX_PROXY_SERVER or len(country) > MAX_COUNTRY:
            raise Rejected(f"guid, proxyServer and country may be at most {MAX_GUID}, "
                           f"{MAX_PROXY_SERVER} and {MAX_COUNTRY} characters")
        self.purge_expired()
        if len(self._codes) >= MAX_LIVE_CODES:
            soonest = min(p.expires for p in self._codes.values())
            raise TryLater("Too many pairing codes are live; try again later.",
                           retry_after=max(1, int(soonest - self.now()) + 1), status=429,
                           phrase="Too many pairing codes; try again later")
        if not self.issues.take(address):
            raise TryLater("Too many pairing codes were asked for; try again later.",
                           retry_after=max(1, int(self.issues.retry_after(address)) + 1), status=429,
                           phrase="Too many pairing codes; try again later")
        paired_id = guid if PAIRED_ID.fullmatch(guid or "") else new_id()
        while True:
            code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
            if code not in self._codes:
                break
        pairing = Pairing(code, paired_id, proxy_server, country, self.now() + CODE_LIFETIME)
        self._codes[code] = pairing
        return pairing

    def revoke(self, pairing: Pairing) -> None:
        """
        Forget a code that could not be saved (it was never handed out).
        """
        self._codes.pop(pairing.code, None)

    def compare(self, code: str, address: str) -> Optional[Compare]:
        """
        Count a compare of C{code} as a failure and look the code up; or
        L{None} when the limits allow no more compares (then nothing is
        looked up, nothing changed, and the answer is nomatch).
        """
        if not self.failures.take(address):
            return None
        pairing = self._codes.get(normalise_code(code))
        if pairing is not None and pairing.expires <= self.now():
            pairing = None
        return Compare(address, pairing)

    def settle(self, compare: Compare) -> None:
        """
        After the count was saved: a match does not count as a failure.
        """
        if compare.pairing is not None:
            self.failures.give_back(compare.address)

    def redeem(self, code: str, address: str) -> Optional[Pairing]:
        """
        L{compare} and L{settle} at once, for callers that save nothing.
        """
        compare = self.compare(code, address)
        if compare is None:
            return None
        self.settle(compare)
        return compare.pairing


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
