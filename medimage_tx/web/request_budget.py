"""
How many requests each client address, and all addresses together, may have
answered per second.  A request over budget is not refused (an answer costs
CPU, and a refusal is one): it waits, and its connection stops being read,
until its address's turn comes.  Waiting requests are served round-robin
across addresses, so many busy addresses cannot starve one quiet one.

Plain Python: time comes from C{clock} (C{seconds()} and C{callLater()}, the
reactor or a L{twisted.internet.task.Clock} in tests).  docs/security.md
says why the numbers are what they are.
"""

from __future__ import annotations

import heapq
import ipaddress
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: One address: 20 requests a second sustained, 100 at once.  The busiest
#: clinic behind one NAT address (30 phones and its PC) sends about 7 a
#: second; an app restarting with 20 unsent photos sends about 60 at once.
PER_ADDRESS_RATE = 20.0
PER_ADDRESS_BURST = 100.0
#: All addresses together, well under what one process can answer (about
#: 1,000 cheap requests a second on a loaded 2-core machine), so uploads keep
#: the CPU they need to be stored.
RELAY_TOTAL_RATE = 500.0
RELAY_TOTAL_BURST = 1000.0
PC_TOTAL_RATE = 200.0
PC_TOTAL_BURST = 400.0
#: IPv6 clients are counted by /64: one household or phone gets a whole one.
IPV6_PREFIX = 64


def address_key(host: str) -> str:
    """
    What one client is counted as: its IPv4 address (an IPv4-mapped IPv6
    address counts as the IPv4 one), or its IPv6 /64.
    """
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))
    return str(address)


class TokenBucket:
    """
    C{rate} tokens a second, at most C{burst} kept; starts full.
    """

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float):
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def has_token(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= 1

    def take(self, now: float) -> None:
        self._refill(now)
        self.tokens -= 1

    def seconds_to_token(self, now: float) -> float:
        self._refill(now)
        return max(0.0, (1 - self.tokens) / self.rate)

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst


@dataclass(eq=False)
class Ticket:
    """
    A request waiting for its turn; L{RequestBudget.cancel} it if its
    connection goes.
    """

    key: str
    go: Callable[[], None]
    cancelled: bool = False


class RequestBudget:
    """
    Token buckets per address (C{rate}/s, C{burst}) and for all addresses
    together (C{total_rate}/s, C{total_burst}), with a fair queue for the
    requests over budget.
    """

    def __init__(self, clock: IReactorTime, rate: float = PER_ADDRESS_RATE, burst: float = PER_ADDRESS_BURST,
                 total_rate: float = RELAY_TOTAL_RATE, total_burst: float = RELAY_TOTAL_BURST):
        self.clock = clock
        self.rate, self.burst = rate, burst
        self.total = TokenBucket(total_rate, total_burst, clock.seconds())
        self._buckets: dict[str, TokenBucket] = {}
        self._waiting: dict[str, deque[Ticket]] = {}  # per address, in arrival order
        self._ready: deque[str] = deque()  # addresses with a token, waiting for the total's
        self._later: list[tuple[float, str]] = []  # (when it has a token, address)
        self._timer: Optional[IDelayedCall] = None
        self._swept_at = clock.seconds()
        #: How many requests had to wait, and how many of those had their
        #: turn (figures for logs and tests).
        self.delayed = 0
        self.served = 0

    def _bucket(self, key: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        return bucket

    def request(self, key: str, go: Callable[[], None]) -> Optional[Ticket]:
        """
        A request from C{key} is ready to be answered.  Within budget (and
        nobody waiting before it): counted, and L{None} returned, so the
        caller answers it now.  Otherwise a L{Ticket}: C{go} is called when
        its turn comes.
        """
        now = self.clock.seconds()
        self._sweep(now)
        bucket = self._bucket(key, now)
        if (key not in self._waiting and not self._ready and bucket.has_token(now)
                and self.total.has_token(now)):
            bucket.take(now)
            self.total.take(now)
            return None
        ticket = Ticket(key, go)
        self.delayed += 1
        queue = self._waiting.get(key)
        if queue is None:
            queue = self._waiting[key] = deque()
            self._schedule_address(key, now)
        queue.append(ticket)
        self._arm(now)
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        ticket.cancelled = True  # skipped when its turn comes

    def waiting(self, key: Optional[str] = None) -> int:
        """
        Requests waiting (from C{key}, or from everyone).
        """
        queues = [self._waiting.get(key, ())] if key is not None else self._waiting.values()
        return sum(1 for queue in queues for t in queue if not t.cancelled)

    def _schedule_address(self, key: str, now: float) -> None:
        wait = self._buckets[key].seconds_to_token(now)
        if wait <= 0:
            self._ready.append(key)
        else:
            heapq.heappush(self._later, (now + wait, key))

    def _pump(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        while self._later and self._later[0][0] <= now:
            self._ready.append(heapq.heappop(self._later)[1])
        while self._ready and self.total.has_token(now):
            key = self._ready.popleft()
            queue = self._waiting[key]
            while queue and queue[0].cancelled:
                queue.popleft()
            if not queue:
                del self._waiting[key]
                continue
            ticket = queue.popleft()
            self._buckets[key].take(now)
            self.total.take(now)
            if queue:
                self._schedule_address(key, now)  # behind the others: round-robin
            else:
                del self._waiting[key]
            self.served += 1
            ticket.go()
        self._arm(now)

    def _arm(self, now: float) -> None:
        """
        Make sure L{_pump} runs when the next waiting request may go.
        """
        if self._timer is not None:
            return
        if self._ready:
            delay = self.total.seconds_to_token(now)
        elif self._later:
            delay = max(0.0, self._later[0][0] - now)
        else:
            return
        self._timer = self.clock.callLater(delay, self._pump)

    def _sweep(self, now: float) -> None:
        """
        Forget, once a second, addresses whose buckets are full again.
        """
        if now - self._swept_at < 1.0:
            return
        self._swept_at = now
        for key in [k for k, b in self._buckets.items() if k not in self._waiting and b.full(now)]:
            del self._buckets[key]

    def addresses(self) -> int:
        return len(self._buckets)

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
