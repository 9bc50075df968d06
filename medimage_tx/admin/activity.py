"""
What the home page says about recent photos: how many today, and the last
few with their time and folder only (a file name can hold a patient's
name; the folder is what the doctor chose to show).  Plain Python.

Today's count survives a restart: at start it is counted from the files
filed today (L{count_filed_today}), then each new photo adds one.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

#: Photos listed on the home page.
RECENT = 5


@dataclass(frozen=True)
class RecentPhoto:
    time: float
    folder: str  # "" for the photos folder itself
    source: str  # "phone" (LAN) or "relay"


@dataclass
class Activity:
    now: Callable[[], float] = time.time
    recent: deque = field(default_factory=lambda: deque(maxlen=RECENT))
    _day: str = ""
    today: int = 0
    total: int = 0  # since the server started
    last_from_relay: float = 0.0

    def note(self, relative: str, source: str) -> None:
        """
        A new photo (not a retry of one already stored) at C{relative},
        a path under the photos folder.
        """
        moment = self.now()
        day = time.strftime("%Y-%m-%d", time.localtime(moment))
        if day != self._day:
            self._day, self.today = day, 0
        self.today += 1
        self.total += 1
        if source == "relay":
            self.last_from_relay = moment
        folder = relative.replace("\\", "/").rpartition("/")[0]
        self.recent.appendleft(RecentPhoto(moment, folder, source))

    def add_earlier(self, count: int, day: str) -> None:
        """
        Add C{count} photos filed on C{day} (C{%Y-%m-%d}, local) before
        the server started, unless the day has changed since.
        """
        if not self._day:
            self._day = day
        if day == self._day:
            self.today += count

    def photos_today(self) -> int:
        day = time.strftime("%Y-%m-%d", time.localtime(self.now()))
        return self.today if day == self._day else 0


def day_of(moment: float) -> str:
    return time.strftime("%Y-%m-%d", time.localtime(moment))


def count_filed_today(folders: Iterable[Path], before: float) -> int:
    """
    Files under C{folders} last written on the local day of C{before} and
    before that moment (later ones are counted as they arrive).  Hidden
    files and folders (copies being written, checks) are not photos.
    A file in two of the folders counts once (by its path inside them).
    """
    day = day_of(before)
    seen: set[str] = set()
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if name.startswith("."):
                    continue
                path = os.path.join(root, name)
                try:
                    written = os.stat(path).st_mtime
                except OSError:
                    continue  # moved away meanwhile
                if written < before and day_of(written) == day:
                    seen.add(os.path.relpath(path, folder))
    return len(seen)
