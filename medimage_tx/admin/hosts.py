"""
Which names and addresses are this server's own, and whether a request's
C{Host} is one of them.  A page that a browser reached under any other name
was reached through DNS rebinding (an attacker's name pointed at this PC),
so it must not be answered as the PC's own page.

Plain Python: the machine's addresses come from a function given in.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Callable, Iterable, Optional

#: Names that always mean this machine.
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def split_host(host: str) -> Optional[str]:
    """
    The name or address part of a C{Host} header value (no port, no
    brackets, lower case, no trailing dot), or L{None} if it is malformed.
    """
    host = host.strip()
    if not host or any(c.isspace() or c in "/\\@?#" for c in host):
        return None
    if host.startswith("["):
        end = host.find("]")
        if end < 0 or (host[end + 1:] and not _is_port(host[end + 1:])):
            return None
        name = host[1:end]
    elif host.count(":") == 1:
        name, port = host.split(":")
        if not _is_port(":" + port):
            return None
    elif ":" in host:
        return None  # a bare IPv6 address must be in brackets
    else:
        name = host
    name = name.rstrip(".").lower()
    return name or None


def _is_port(text: str) -> bool:
    return text.startswith(":") and text[1:].isdigit() and len(text) <= 6


def is_loopback(address: str) -> bool:
    """
    True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (C{::ffff:127.0.0.1}).
    """
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def interface_addresses() -> list[str]:
    """
    Every address of every interface of this machine (psutil), IPv4 and IPv6.
    """
    import psutil

    addresses = []
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                addresses.append(entry.address.split("%")[0])
    return addresses


def host_names() -> list[str]:
    """
    This machine's host name, its fully qualified name, and their mDNS
    (C{.local}) forms.
    """
    names = []
    for name in (socket.gethostname(), socket.getfqdn()):
        if name:
            names.append(name)
            short = name.split(".")[0]
            names += [short, short + ".local"]
    return names


class OwnNames:
    """
    The set of names and addresses a request may use to reach this server:
    loopback names and addresses, the machine's interface addresses, its
    host name, C{serverName}, and the address it listens on.  Interface
    addresses are looked up again at most every C{refresh} seconds (a
    laptop changes networks).
    """

    def __init__(self, now: Callable[[], float], server_name: Callable[[], str],
                 listen_address: Optional[str] = None,
                 addresses: Callable[[], Iterable[str]] = interface_addresses,
                 names: Callable[[], Iterable[str]] = host_names, refresh: float = 5.0):
        self.now = now
        self.server_name = server_name
        self.listen_address = listen_address
        self.addresses = addresses
        self.names = names
        self.refresh = refresh
        self._known: frozenset[str] = frozenset()
        self._looked_up: Optional[float] = None

    def known(self) -> frozenset[str]:
        now = self.now()
        if self._looked_up is None or now - self._looked_up >= self.refresh or now < self._looked_up:
            found = set(LOOPBACK_NAMES)
            found.update(self.addresses())
            found.update(self.names())
            if self.listen_address:
                found.add(self.listen_address)
            self._known = frozenset(_canonical(name) for name in found if name)
            self._looked_up = now
        server_name = _canonical(self.server_name())
        if server_name:
            return self._known | {server_name, server_name + ".local"}
        return self._known

    def is_own_address(self, address: str) -> bool:
        """
        C{address} (a peer's IP) is one of this machine's own.
        """
        try:
            ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return False
        return _canonical(address) in self.known()

    def allows(self, host_header: Optional[str]) -> bool:
        """
        True if C{host_header} (a C{Host} value, port allowed) names this
        server.  A missing header is refused.
        """
        if host_header is None:
            return False
        name = split_host(host_header)
        if name is None:
            return False
        return is_loopback(name) or _canonical(name) in self.known()


def _canonical(name: str) -> str:
    """
    One spelling per name: lower case, no trailing dot, no IPv6 scope,
    addresses in their short form.
    """
    name = name.strip().rstrip(".").lower().split("%")[0]
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name
