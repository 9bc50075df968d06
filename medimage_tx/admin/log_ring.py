"""
The latest log lines, kept in the server for the logs page: a
twisted.logger observer on the global publisher, so it sees the same
events whether the log goes to the console, a file or the journal.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Optional

from twisted.application.service import Service
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from ..logs import is_chatter

#: Lines kept: about a day of a busy clinic's uploads.
KEEP_LINES = 1000
#: The longest line kept (a traceback is cut, not kept whole).
MAX_LINE = 2000

LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
          "error": LogLevel.error, "critical": LogLevel.critical}


@dataclass(frozen=True)
class LogLine:
    time: float
    level: str  # LogLevel name: info, warn, error, critical
    text: str


class LogRing:
    """
    The last L{KEEP_LINES} lines at info level and above, without
    Twisted's routine chatter (as the log itself).
    """

    def __init__(self, keep: int = KEEP_LINES):
        self._lines: deque[LogLine] = deque(maxlen=keep)

    def __call__(self, event: dict) -> None:
        level = event.get("log_level", LogLevel.info)
        if level < LogLevel.info or is_chatter(event):
            return
        try:
            text = formatEvent(event)
        except Exception:
            return  # never let a bad event break logging
        failure = event.get("log_failure")
        if failure is not None:
            text += f" ({failure.type.__name__}: {failure.getErrorMessage()})"
        self._lines.append(LogLine(event.get("log_time") or time.time(), level.name,
                                   " ".join(text.split())[:MAX_LINE]))

    def lines(self, at_least: Optional[str] = None, limit: int = 200) -> list[LogLine]:
        """
        The newest C{limit} lines at level C{at_least} or above, newest first.
        """
        floor = LEVELS.get(at_least or "info", LogLevel.info)
        chosen: list[LogLine] = []
        for line in reversed(self._lines):
            if LEVELS[line.level] >= floor:
                chosen.append(line)
                if len(chosen) >= limit:
                    break
        return chosen


class LogRingService(Service):
    """
    Listens to the log while the server runs.
    """

    def __init__(self, ring: LogRing, publisher=globalLogPublisher):
        self.ring = ring
        self.publisher = publisher

    def startService(self) -> None:
        super().startService()
        self.publisher.addObserver(self.ring)

    def stopService(self):
        self.publisher.removeObserver(self.ring)
        return super().stopService()


def level_names() -> Iterable[str]:
    return ("info", "warn", "error")
