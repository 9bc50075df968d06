"""
The numbers the docs promise, in one place.  Behaviour tests use these
values (never the code's own constants, which a fault would change along
with the behaviour); `test_documented.py` checks that each one still reads
so in the docs and that the code's constant agrees.
"""

from __future__ import annotations

#: docs/protocol.md, Pairing: failed compares per client address per hour.
GUESSES_PER_ADDRESS = 10
#: docs/protocol.md, Pairing: failed compares in total per hour.
GUESSES_IN_TOTAL = 100
#: docs/protocol.md, Pairing: the limits' rolling window, and a code's life.
GUESS_WINDOW_SECONDS = 3600
CODE_LIFETIME_SECONDS = 3600
#: docs/protocol.md, B4: a leased photo is hidden for 5 minutes.
LEASE_SECONDS = 5 * 60
#: docs/protocol.md, LAN discovery: a sender gets at most 5 replies a second.
UDP_REPLIES_PER_SENDER_PER_SECOND = 5
#: docs/security.md: 32 connections at once per client address (both roles).
CONNECTIONS_PER_ADDRESS = 32
#: docs/protocol.md: `?wait=N`, N from 0 to 60.
LONGEST_WAIT_SECONDS = 60
#: docs/security.md: Retry-After of a relay pairing over its quota.
QUOTA_RETRY_AFTER_SECONDS = 120
#: docs/security.md, the PC's own pages: wrong passwords per client address
#: and in total per 15-minute bucket, and a session's life unused.
SIGNIN_FAILURES_PER_ADDRESS = 5
SIGNIN_FAILURES_IN_TOTAL = 50
#: ... of which the last 25 only for addresses that have not guessed wrong.
SIGNIN_FAILURES_KEPT_FOR_FIRST_TRIES = 25
SIGNIN_BUCKET_SECONDS = 15 * 60
SESSION_IDLE_SECONDS = 3600
#: docs/security.md: a session's longest life, however often it is used.
SESSION_MAX_AGE_SECONDS = 12 * 3600
#: docs/protocol.md, Issuing: codes issued per address and in total per
#: hour, codes live at once, and the longest issue fields.
ISSUES_PER_ADDRESS = 30
ISSUES_IN_TOTAL = 1000
MAX_LIVE_CODES = 1000
LONGEST_GUID, LONGEST_PROXY_SERVER, LONGEST_COUNTRY = 64, 256, 64
