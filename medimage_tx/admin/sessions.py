"""
Password sessions for the PC's admin pages: the C{basicAuthent} password
from config.json (the original's basic-authentication add-on) gives a
session id; the id then stands for the password until it expires or its
holder signs out.

Wrong passwords are throttled in fixed time buckets, per client address and
in total, so guessing is slow and the bookkeeping stays small however many
addresses guess; the last part of the total is kept for clients that have
not guessed wrong yet (an IPv4 address, or an IPv6 /64 as the connection
caps count: a device takes any number of addresses of its /64), so the
admin's own address still gets its try.
Plain Python: time comes from C{now}.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Callable, Optional

from ..web.request_budget import address_key

#: The original's shipped password: never accepted.
SHIPPED_PASSWORD = "changeme"
MIN_PASSWORD_LENGTH = 8

#: A session ends after this long without use, and after MAX_AGE in any case.
IDLE_SECONDS = 3600.0
MAX_AGE_SECONDS = 12 * 3600.0
MAX_SESSIONS = 64

#: Wrong passwords allowed per bucket: per client address, and in total.
THROTTLE_BUCKET_SECONDS = 900.0
FAILURES_PER_ADDRESS = 5
FAILURES_IN_TOTAL = 50
#: The last of those kept for clients (IPv4 addresses, IPv6 /64s) that have
#: not guessed wrong in the bucket, so guessers on a few addresses cannot
#: lock out the admin signing in from another.
FAILURES_KEPT_FOR_FIRST_TRIES = 25


class PasswordNotSet(Exception):
    """
    C{basicAuthent} is empty, the shipped default, or too short.
    """

    def __init__(self):
        super().__init__(
            f"Signing in with a password is off: set \"basicAuthent\" in config.json to a password "
            f"of at least {MIN_PASSWORD_LENGTH} characters (not \"{SHIPPED_PASSWORD}\"), or use this "
            "page on the PC itself.")


class WrongPassword(Exception):
    def __init__(self):
        super().__init__("Sorry, that is the wrong password.")


class TooManyAttempts(Exception):
    def __init__(self, retry_after: float):
        super().__init__(f"Too many wrong passwords: try again in {max(1, round(retry_after / 60))} minutes.")
        self.retry_after = retry_after


def usable_password(password: str) -> bool:
    return len(password) >= MIN_PASSWORD_LENGTH and password != SHIPPED_PASSWORD


@dataclass
class _Session:
    created: float
    last_used: float
    password_tag: bytes  # which password opened it: a changed password ends it


class SessionStore:
    """
    Sessions in memory (a restart signs everyone out).

    @param password: returns the current C{basicAuthent} (config can change
        while the server runs).
    """

    def __init__(self, password: Callable[[], str], now: Callable[[], float]):
        self.password = password
        self.now = now
        self._sessions: dict[str, _Session] = {}
        self._bucket: Optional[int] = None
        self._failures_by_address: dict[str, int] = {}
        self._clients_failed: set[str] = set()  # IPv4 addresses, IPv6 /64s
        self._failures = 0

    def login(self, password: str, address: str) -> str:
        """
        A new session id for the right password.

        @raise PasswordNotSet: password sessions are off.
        @raise TooManyAttempts: this address, or everyone, guessed wrong too often.
        @raise WrongPassword: the password is wrong (and counted).
        """
        current = self.password()
        if not usable_password(current):
            raise PasswordNotSet()
        now = self.now()
        self._roll_bucket(now)
        failed = self._failures_by_address.get(address, 0)
        client = address_key(address)
        if (failed >= FAILURES_PER_ADDRESS or self._failures >= FAILURES_IN_TOTAL
                or (client in self._clients_failed
                    and self._failures >= FAILURES_IN_TOTAL - FAILURES_KEPT_FOR_FIRST_TRIES)):
            # Refused even with the right password: no guessing past the limit.
            raise TooManyAttempts(self._bucket_ends(now) - now)
        if not hmac.compare_digest(password.encode("utf-8"), current.encode("utf-8")):
            self._failures += 1
            self._failures_by_address[address] = failed + 1
            self._clients_failed.add(client)
            raise WrongPassword()
        self._expire(now)
        if len(self._sessions) >= MAX_SESSIONS:
            oldest = min(self._sessions, key=lambda key: self._sessions[key].last_used)
            del self._sessions[oldest]
        session_id = secrets.token_urlsafe(32)
        self._sessions[session_id] = _Session(now, now, _tag(current))
        return session_id

    def valid(self, session_id: Optional[str]) -> bool:
        """
        True if C{session_id} is a live session; using it keeps it alive.
        """
        if not session_id:
            return False
        session = self._sessions.get(session_id)
        if session is None:
            return False
        now = self.now()
        current = self.password()
        if (now - session.last_used >= IDLE_SECONDS or now - session.created >= MAX_AGE_SECONDS
                or not usable_password(current)
                or not hmac.compare_digest(session.password_tag, _tag(current))):
            del self._sessions[session_id]
            return False
        session.last_used = now
        return True

    def live_digests(self) -> list[str]:
        """
        SHA-256 (hex) of each live session id, for add-on scripts that
        check a session (basic-authentication/session.js); using nothing.
        """
        now, current = self.now(), self.password()
        return [hashlib.sha256(key.encode("ascii")).hexdigest() for key, session in self._sessions.items()
                if now - session.last_used < IDLE_SECONDS and now - session.created < MAX_AGE_SECONDS
                and usable_password(current) and hmac.compare_digest(session.password_tag, _tag(current))]

    def logout(self, session_id: Optional[str]) -> bool:
        """
        End a session; True if it was live.
        """
        live = self.valid(session_id)
        if live and session_id is not None:  # (valid() is False for None)
            del self._sessions[session_id]
        return live

    def _expire(self, now: float) -> None:
        for key, session in list(self._sessions.items()):
            if now - session.last_used >= IDLE_SECONDS or now - session.created >= MAX_AGE_SECONDS:
                del self._sessions[key]

    def _roll_bucket(self, now: float) -> None:
        bucket = int(now // THROTTLE_BUCKET_SECONDS)
        if bucket != self._bucket:
            self._bucket = bucket
            self._failures_by_address = {}
            self._clients_failed = set()
            self._failures = 0

    def _bucket_ends(self, now: float) -> float:
        return (int(now // THROTTLE_BUCKET_SECONDS) + 1) * THROTTLE_BUCKET_SECONDS


def _tag(password: str) -> bytes:
    return hashlib.sha256(b"medimage-session:" + password.encode("utf-8")).digest()
