"""
Which pairing ids a relay knows a clinic behind (issue 19 finding 1).

Ids are issued by AtomJump's pairing service, not by the relay, and the
app uploads under its id with no registration first (PROTOCOL.md A5); so
the relay learns an id from what it sees: a C{/read/<id>} (a PC polling
it), or a pairing code redeemed here that names it.  A known id stays
known while it is read at least once every L{KNOWN_DAYS}.

Ids nobody is known to read share a small pool (C{relayUnknownBytes}):
junk uploaded under made-up ids cannot take the room a clinic's photos
need.  So that reading made-up ids does not buy that room wholesale, each
client address (an IPv4 address, or an IPv6 /64 as
L{medimage_tx.request_budget.address_key} counts it) may make at most
L{IDS_PER_ADDRESS} ids known, and at most L{MAX_KNOWN_IDS} are known at
once (what the book, or its table, holds).  docs/security.md says why the
numbers are what they are.

Plain Python: the local store keeps a L{KnownIds} (saved to
C{DATA/relay-known.json}); the PostgreSQL store keeps the same rules in a
table.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from ..identity import PAIRED_ID

#: An id nobody read for this long is forgotten (its photos count in the
#: pool again).  A clinic PC polls every minute while it is on; a month
#: covers holidays, and is four times what the relay keeps photos for.
KNOWN_DAYS = 30
KNOWN_SECONDS = KNOWN_DAYS * 86400
#: Ids one client address may make known: a clinic PC reads one id; a few
#: clinics behind one address (a hospital's NAT) read a few.
IDS_PER_ADDRESS = 4
#: Ids known at once, over all addresses: about 120 bytes each here.
MAX_KNOWN_IDS = 100_000
#: A known id's time is saved again once it is this old (so a PC's polls
#: do not rewrite the file or the row every minute).
RESTAMP_SECONDS = 86400


class KnownIds:
    """
    @param now: the clock, as a function returning seconds.
    @param on_known: called with an id when it becomes known, and
        C{on_forgotten} when it stops being known.
    """

    def __init__(self, now: Callable[[], float], on_known: Callable[[str], None] = lambda paired_id: None,
                 on_forgotten: Callable[[str], None] = lambda paired_id: None):
        self.now = now
        self.on_known = on_known
        self.on_forgotten = on_forgotten
        # id -> [last read, the address that made it known, last saved]
        self._ids: dict[str, list] = {}
        self._per_address: dict[str, int] = {}

    def __contains__(self, paired_id: str) -> bool:
        return paired_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def note(self, paired_id: str, address: str) -> Optional[str]:
        """
        An id read (or redeemed) by a client at C{address} (as
        C{address_key} counts it).  Returns C{"new"}: it is known from now
        on; C{"restamped"}: known already, and its time last saved is over
        L{RESTAMP_SECONDS} old; C{"known"}: known already (its time moved
        on in memory only); None: not known, as the limits allow no more
        ids for that address or in all.
        """
        now = self.now()
        entry = self._ids.get(paired_id)
        if entry is not None:
            if now - entry[2] >= RESTAMP_SECONDS:
                entry[0] = entry[2] = now
                return "restamped"
            entry[0] = now
            return "known"
        if self._per_address.get(address, 0) >= IDS_PER_ADDRESS or len(self._ids) >= MAX_KNOWN_IDS:
            return None
        self._ids[paired_id] = [now, address, now]
        self._per_address[address] = self._per_address.get(address, 0) + 1
        self.on_known(paired_id)
        return "new"

    def forget_unread(self, cutoff: float) -> list[str]:
        """
        Forget the ids last read before C{cutoff}; returns them.
        """
        gone = [paired_id for paired_id, (last, _, _) in self._ids.items() if last < cutoff]
        for paired_id in gone:
            self._forget(paired_id)
        return gone

    def _forget(self, paired_id: str) -> None:
        _, address, _ = self._ids.pop(paired_id)
        left = self._per_address[address] - 1
        if left:
            self._per_address[address] = left
        else:
            del self._per_address[address]
        self.on_forgotten(paired_id)

    def snapshot(self) -> dict[str, Any]:
        return {"known": [[paired_id, last, address] for paired_id, (last, address, _) in self._ids.items()]}

    def restore(self, saved: Any) -> None:
        """
        Take back a L{snapshot}; entries that are not well formed, or
        already too old, are left out.
        """
        entries = saved.get("known") if isinstance(saved, dict) else None
        cutoff = self.now() - KNOWN_SECONDS
        for entry in entries if isinstance(entries, list) else []:
            if not (isinstance(entry, list) and len(entry) == 3):
                continue
            paired_id, last, address = entry
            if (not isinstance(paired_id, str) or not PAIRED_ID.fullmatch(paired_id) or paired_id in self._ids
                    or not isinstance(last, (int, float)) or last < cutoff or not isinstance(address, str)
                    or len(self._ids) >= MAX_KNOWN_IDS):
                continue
            self._ids[paired_id] = [float(last), address, float(last)]
            self._per_address[address] = self._per_address.get(address, 0) + 1
            self.on_known(paired_id)
