"""
How many connections the server may hold: the open-file limit raised as far
as the system allows at start, a cap on connections that keeps enough
descriptors free to store photos whatever clients do, and how those
connections are shared between clients (L{ConnectionCaps}).
"""

from __future__ import annotations

import sys
from typing import Optional

from .request_budget import address_key

#: Descriptors kept for everything but client connections: log, config,
#: listening sockets, the thread pool's copies, zeroconf.
RESERVED_DESCRIPTORS = 64
#: Each connection may hold a socket and an upload's temporary file.
DESCRIPTORS_PER_CONNECTION = 2
#: Sockets select() can watch (Windows: 512; elsewhere FD_SETSIZE, 1024).
SELECT_LIMIT = 512 if sys.platform == "win32" else 1024
#: A macOS-style "unlimited" hard limit cannot be the soft limit.
LARGEST_SOFT_LIMIT = 1 << 20


def raise_open_file_limit() -> Optional[int]:
    """
    Raise the soft limit on open files to the hard limit, where the OS
    allows it.  Returns the soft limit in force afterwards, or L{None}
    where there is no such limit to read (Windows).
    """
    try:
        import resource
    except ImportError:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = LARGEST_SOFT_LIMIT if hard == resource.RLIM_INFINITY else hard
    wanted = min(wanted, LARGEST_SOFT_LIMIT)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            pass  # e.g. macOS caps it lower (OPEN_MAX): keep what we have
    return open_file_limit()


def open_file_limit() -> Optional[int]:
    try:
        import resource
    except ImportError:
        return None
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def connection_budget(wanted: int, open_files: Optional[int], select_based: bool) -> int:
    """
    At most C{wanted} connections, and no more than the descriptors left
    after L{RESERVED_DESCRIPTORS} allow (two each), nor than C{select()}
    can watch when the reactor uses it.
    """
    limits = [wanted]
    if open_files is not None:
        limits.append((open_files - RESERVED_DESCRIPTORS) // DESCRIPTORS_PER_CONNECTION)
    if select_based:
        limits.append((SELECT_LIMIT - RESERVED_DESCRIPTORS) // DESCRIPTORS_PER_CONNECTION)
    return max(1, min(limits))


def uses_select(reactor: object) -> bool:
    return "select" in type(reactor).__name__.lower()


#: The share of all connection slots kept for clients holding few
#: connections: a device with many addresses fills the rest, and phones
#: (one or two connections each) still get in.
RESERVED_SHARE = 0.25
#: A client holding fewer connections than this may use the kept slots
#: (a phone opens one or two at a time, a browser at most six).
LIGHT_USE = 6


class ConnectionCaps:
    """
    Connections held at once: at most C{per_address} per client (an IPv4
    address, or an IPv6 /64, as the request budget counts them) and
    C{total} in all.  The last L{reserved} slots (L{RESERVED_SHARE} of the
    total) go only to clients holding fewer than L{LIGHT_USE}, so no one
    device, however many addresses it takes, can hold every slot.
    """

    def __init__(self, per_address: int, total: int):
        self.per_address = per_address
        self.total = total
        self.by_client: dict[str, int] = {}
        self.open = 0

    @property
    def reserved(self) -> int:
        return int(self.total * RESERVED_SHARE)

    def admit(self, host: str) -> bool:
        """
        Count a new connection from C{host}; False (not counted) when a cap
        is reached.
        """
        key = address_key(host)
        held = self.by_client.get(key, 0)
        if self.open >= self.total or held >= self.per_address:
            return False
        if self.open >= self.total - self.reserved and held >= LIGHT_USE:
            return False
        self.by_client[key] = held + 1
        self.open += 1
        return True

    def release(self, host: str) -> None:
        key = address_key(host)
        self.open -= 1
        self.by_client[key] -= 1
        if self.by_client[key] <= 0:
            del self.by_client[key]
