"""
The held folder, C{DATA/held/}: files the relay delivered that this PC will
not file (a type not in C{allowedTypes}, a name it cannot use).  They are
kept here durably, then confirmed to the relay, so nothing sent is lost;
the home page lists them with what to do.  Plain blocking Python.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..config import fsync_folder
from .naming import clean_text, safe_component

HELD = "held"
#: What the home page tells the clinic to do with a held file.
WHAT_TO_DO = (
    "These came through the relay, but this PC does not file them itself (their type is "
    "not allowed here, or their name cannot be used); nothing was thrown away. Open each "
    "one from that folder; if it belongs to a patient, file it by hand, then delete it "
    "here. To file such files from now on, allow their type in Settings (allowedTypes)."
)


@dataclass(frozen=True)
class HeldFile:
    name: str  # in the held folder
    size: int
    reason: str
    sent_as: str  # the relay's file-name header


def hold(data_dir: Path, temp_path: Path, fd: Optional[int], sent_as: str, reason: str) -> Path:
    """
    Move the complete temporary file into the held folder, durably, under a
    new name (never overwriting), with a note of where it came from and
    why.  The temporary file is gone afterwards.
    """
    folder = data_dir / HELD
    folder.mkdir(parents=True, exist_ok=True)
    if fd is not None:
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    base = safe_component(clean_text(sent_as.replace("\\", "/").rsplit("/", 1)[-1], "a-zA-Z0-9._-")) or "file"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        for number in range(1000):
            name = f"{stamp}-{number}-{base}" if number else f"{stamp}-{base}"
            try:
                os.link(temp_path, folder / name)
            except FileExistsError:
                continue
            note = folder / f".{name}.json"
            note.write_text(json.dumps({"reason": reason, "sent_as": sent_as}))
            fsync_folder(folder)
            return folder / name
        raise FileExistsError(folder / base)
    finally:
        try:
            os.unlink(temp_path)
        except OSError:
            pass


@dataclass(frozen=True)
class HeldSummary:
    """
    The held folder at one moment: how many files and bytes, and the oldest
    (at most the number asked for, with their notes).
    """

    count: int
    bytes: int
    oldest: tuple[HeldFile, ...]


def held_usage(data_dir: Path) -> tuple[int, int]:
    """
    How many files the held folder holds, and their bytes.  Lists the
    folder: in a thread (finding 19.2: 40,000 held files listed on the
    reactor thread froze the server 4.4 s).
    """
    count = size = 0
    try:
        with os.scandir(data_dir / HELD) as entries:
            for entry in entries:
                if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False):
                    count += 1
                    try:
                        size += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        pass
    except OSError:
        pass
    return count, size


def held_summary(data_dir: Path, shown: int = 100) -> HeldSummary:
    """
    L{held_usage} and the C{shown} oldest files with their notes; in a
    thread.
    """
    count, size = held_usage(data_dir)
    return HeldSummary(count, size, tuple(held_files(data_dir, shown)))


def held_files(data_dir: Path, limit: Optional[int] = None) -> list[HeldFile]:
    """
    The files waiting in the held folder, oldest first.
    """
    folder = data_dir / HELD
    found = []
    try:
        entries = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError:
        return []
    for path in entries[:limit]:
        try:
            note = json.loads((folder / f".{path.name}.json").read_text())
        except (OSError, ValueError):
            note = {}
        try:
            size = path.stat().st_size
        except OSError:
            continue  # taken away meanwhile
        found.append(HeldFile(path.name, size, str(note.get("reason", "")), str(note.get("sent_as", ""))))
    return found
