"""
What the home page says about the server's health, found out from the
disk each time the page is shown (so it recovers by itself): would an
upload be refused now, can config.json be used, what in it looks like a
typo.  Plain Python doing file-system calls: run L{check_health} in a
thread.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ...config import Config, config_file_problem, config_warnings

#: Less free space than this where uploads are written, and the disk is
#: full for a phone whatever the floor in config.json: its photo (a
#: megabyte or more) would be refused with "try later" (507).
FULL_BELOW = 256 * 1024


@dataclass(frozen=True)
class Health:
    #: Why a phone's upload would be refused now, or "".
    upload_problem: str = ""
    #: Why config.json on disk cannot be used now, or "".
    config_problem: str = ""
    #: Likely typos in a config.json that can be used (config.config_warnings).
    warnings: tuple[str, ...] = field(default_factory=tuple)


def upload_problem(temp: Path, photos: Path, min_free: int = FULL_BELOW, floor_key: str = "") -> str:
    """
    Why an upload would fail now, or C{""}: it is written into C{temp},
    then linked into C{photos}.  Both must have C{min_free} bytes free and
    take a new file: in C{temp} one is really created and removed (so
    permissions, read-only file systems and full inode tables show as
    they would to an upload); C{photos} is only asked (access(2), which
    sees read-only file systems too), because the retries and add-ons
    take any file that appears there for a photo.
    """
    for folder in dict.fromkeys((temp, photos)):
        try:
            free = shutil.disk_usage(folder).free
        except OSError as e:
            return f"this server cannot use {folder}: {e.strerror or e}"
        if free < FULL_BELOW:
            return (f"the disk is full ({free // 1024} KB free where photos are written, {folder}): "
                    "make room on it")
        if free < min_free:
            return (f"the disk is nearly full ({free // 1_000_000} MB free where photos are written, "
                    f"{folder}; {floor_key} keeps {min_free // 1_000_000} MB free): "
                    f"make room on it, or lower {floor_key} in config.json")
    try:
        fd, probe = tempfile.mkstemp(dir=temp, prefix=".medimage-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return f"this server cannot write in {temp}: {e.strerror or e}"
    if not os.access(photos, os.W_OK | os.X_OK):
        return f"this server cannot write in {photos} (its permissions, or a read-only drive)"
    return ""


def check_health(config: Config, temp: Path, photos: Path) -> Health:
    """
    The server's health with C{config} running, uploads written into
    C{temp} and filed in C{photos}.  Uploads are refused below the free
    space floor: C{relayMinFreeBytes} on a relay, C{minFreeBytes} on a
    PC (L{medimage_tx.pc.room}).
    """
    floor_key = "relayMinFreeBytes" if config.role == "relay" else "minFreeBytes"
    min_free = max(FULL_BELOW, getattr(config, floor_key))
    return Health(upload_problem(temp, photos, min_free, floor_key), config_file_problem(config.path),
                  tuple(config_warnings(config)))
