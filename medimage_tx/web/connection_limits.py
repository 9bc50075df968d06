"""
How many connections the server may hold: the open-file limit raised as far
as the system allows at start, and a cap on connections that keeps enough
descriptors free to store photos whatever clients do.
"""

from __future__ import annotations

import sys
from typing import Optional

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
