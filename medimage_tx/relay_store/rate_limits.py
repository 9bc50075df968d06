"""
Limits of the form "at most N per address and M in total per hour", counted
in fixed time buckets: memory is a few counters per bucket whatever the
rate, never one record per attempt.  Plain Python: time comes from C{now}
(wall-clock seconds, so counts saved to disk mean the same after a restart).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional


class WindowLimiter:
    """
    Allows at most C{per_key} events per key and C{in_total} events in all
    within any C{window} seconds.

    Events are counted in buckets of C{window / buckets} seconds.  A check
    sums the current bucket and the C{buckets} before it, a span at least
    C{window} long, so any interval of C{window} seconds lies inside the span
    summed when its last event was allowed: the limits hold exactly, never
    "about".  Only allowed events are counted, so at most C{in_total} keys
    are remembered, whoever asks and however often.
    """

    def __init__(self, now: Callable[[], float], per_key: int, in_total: int,
                 window: float = 3600.0, buckets: int = 60):
        self.now = now
        self.per_key = per_key
        self.in_total = in_total
        self.window = window
        self.buckets = buckets
        self.bucket_seconds = window / buckets
        self._total: dict[int, int] = {}
        self._by_key: dict[str, dict[int, int]] = {}
        self._forgotten_at: Optional[int] = None  # old buckets go once per new bucket
        #: How many events were refused (a figure for logs, not a record).
        self.refused = 0

    def _current(self) -> int:
        return math.floor(self.now() / self.bucket_seconds)

    def _forget_old(self, current: int) -> None:
        if current == self._forgotten_at:
            return
        self._forgotten_at = current
        oldest = current - self.buckets
        # Buckets far in the future (a clock set back) are dropped too.
        newest = current + self.buckets
        for bucket in [b for b in self._total if not oldest <= b <= newest]:
            del self._total[bucket]
        for key in list(self._by_key):
            counts = self._by_key[key]
            for bucket in [b for b in counts if not oldest <= b <= newest]:
                del counts[bucket]
            if not counts:
                del self._by_key[key]

    def allows(self, key: str) -> bool:
        self._forget_old(self._current())
        return (sum(self._by_key.get(key, {}).values()) < self.per_key
                and sum(self._total.values()) < self.in_total)

    def take(self, key: str) -> bool:
        """
        Count one event for C{key} if the limits allow it; C{False} (and
        nothing counted) if they do not.
        """
        if not self.allows(key):
            self.refused += 1
            return False
        current = self._current()
        self._total[current] = self._total.get(current, 0) + 1
        counts = self._by_key.setdefault(key, {})
        counts[current] = counts.get(current, 0) + 1
        return True

    def give_back(self, key: str) -> None:
        """
        Uncount the latest event of C{key} (one that turned out not to count).
        """
        counts = self._by_key.get(key)
        if not counts:
            return
        bucket = max(counts)
        for table in (counts, self._total):
            if table.get(bucket, 0) > 0:
                table[bucket] -= 1
                if table[bucket] == 0:
                    del table[bucket]
        if not counts:
            del self._by_key[key]

    def retry_after(self, key: str) -> float:
        """
        Seconds until C{key} may have another event (0 if it may now).
        """
        current = self._current()
        self._forget_old(current)
        waits = []
        for table, limit in ((self._by_key.get(key, {}), self.per_key), (self._total, self.in_total)):
            excess = sum(table.values()) - limit + 1
            # The oldest buckets leave the span first.
            for bucket in sorted(table):
                if excess <= 0:
                    break
                excess -= table[bucket]
                waits.append((bucket + self.buckets + 1) * self.bucket_seconds - self.now())
        return max([0.0] + waits)

    def keys(self) -> int:
        return len(self._by_key)

    def snapshot(self) -> dict[str, Any]:
        self._forget_old(self._current())
        return {
            "bucketSeconds": self.bucket_seconds,
            "total": {str(b): n for b, n in self._total.items()},
            "byKey": {key: {str(b): n for b, n in counts.items()} for key, counts in self._by_key.items()},
        }

    def restore(self, saved: Optional[dict[str, Any]]) -> None:
        """
        Take back counts from L{snapshot}.  Counts saved with another bucket
        size all go into the current bucket: never fewer than were saved.
        """
        if not isinstance(saved, dict):
            return
        same_size = saved.get("bucketSeconds") == self.bucket_seconds
        current = self._current()

        def counts(table: Any) -> dict[int, int]:
            result: dict[int, int] = {}
            for bucket, count in (table.items() if isinstance(table, dict) else ()):
                try:
                    bucket, count = (int(bucket) if same_size else current), int(count)
                except (TypeError, ValueError):
                    continue
                if count > 0:
                    result[bucket] = result.get(bucket, 0) + count
            return result

        self._forgotten_at = None
        self._total = counts(saved.get("total"))
        by_key = saved.get("byKey")
        self._by_key = {str(k): c for k, v in (by_key.items() if isinstance(by_key, dict) else ())
                        if (c := counts(v))}
        self._forget_old(current)
