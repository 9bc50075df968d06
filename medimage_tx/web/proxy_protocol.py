"""
The PROXY protocol (HAProxy's C{send-proxy}) from the balancers listed in
C{proxyProtocolFrom} only.  The header says who the client is, so whoever
may send it may claim any address: a relay node reachable directly would
otherwise let anyone pass as 127.0.0.1 (the admin) or as a clinic's
address (and use up that clinic's sign-in attempts).  A connection from
anywhere else is dropped before its first byte is read.

Every connection that came through a balancer is marked C{via_proxy}: the
client it names is never this machine (docs/security.md).
"""

from __future__ import annotations

import ipaddress
import time
from typing import Callable, Iterable, Optional

from twisted.internet import interfaces
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols import policies
from twisted.protocols.haproxy import proxyEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

from ..config import Network

log = Logger()


def listed(host: str, sources: Iterable[Network]) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address.version == network.version and address in network for network in sources)


class BalancerOnly(policies.ProtocolWrapper):
    """
    Lets a connection from a listed balancer through (marked C{via_proxy});
    drops any other unread.
    """

    via_proxy = True
    _dropped = False

    def makeConnection(self, transport) -> None:
        peer = getattr(transport.getPeer(), "host", "")
        if not listed(peer, self.factory.sources()):
            self._dropped = True
            self.factory.note_dropped(peer)
            transport.abortConnection()
            return
        super().makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        if not self._dropped:
            super().dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self._dropped:
            super().connectionLost(reason)


class BalancerOnlyFactory(policies.WrappingFactory):
    protocol = BalancerOnly

    def __init__(self, wrapped: interfaces.IProtocolFactory, sources: Callable[[], tuple[Network, ...]]):
        super().__init__(wrapped)
        self.sources = sources
        self._logged_at: Optional[float] = None

    def note_dropped(self, peer: str) -> None:
        now = time.monotonic()
        if self._logged_at is None or now - self._logged_at >= 60:
            self._logged_at = now
            log.warn("Dropped a connection from {peer}: it is not a balancer listed in "
                     "proxyProtocolFrom, so its PROXY header would not be true (more are "
                     "dropped without a line for a minute)", peer=peer)


@implementer(interfaces.IStreamServerEndpoint)
class BalancerOnlyEndpoint:
    """
    C{wrapped}, accepting connections from the balancers C{sources()} names only.
    """

    def __init__(self, wrapped: interfaces.IStreamServerEndpoint, sources: Callable[[], tuple[Network, ...]]):
        self.wrapped = wrapped
        self.sources = sources

    def listen(self, factory):
        return self.wrapped.listen(BalancerOnlyFactory(factory, self.sources))


def trusted_proxy_endpoint(wrapped: interfaces.IStreamServerEndpoint, sources: Callable[[], tuple[Network, ...]]):
    """
    A PROXY-protocol listener on C{wrapped} that reads the header only from
    the balancers C{sources()} names (read at each connection: a config
    reload applies at once).
    """
    return proxyEndpoint(BalancerOnlyEndpoint(wrapped, sources))
