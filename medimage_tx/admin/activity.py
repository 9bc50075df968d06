"""
What the home page says about recent photos: how many today, and the last
few with their time and folder only (a file name can hold a patient's
name; the folder is what the doctor chose to show).  Plain Python.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

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

    def photos_today(self) -> int:
        day = time.strftime("%Y-%m-%d", time.localtime(self.now()))
        return self.today if day == self._day else 0
