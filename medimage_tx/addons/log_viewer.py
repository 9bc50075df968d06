"""
The original's log-viewer add-on (C{addons/log-viewer/view-log.js}) shows
the last 100 lines of C{$HOME/.pm2/logs/medimage-error.log}: where pm2 kept
the original server's log on Linux and macOS.  This server's log goes
elsewhere (the console, the journal or its own file), so for that add-on
only, the server's latest lines are written to such a file in a folder of
the server's data, and the add-on runs with C{HOME} set to that folder.
Nothing is written in the user's own home (a pm2 log there is the
original's).

Plain Python.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Iterable

from ..config import write_bytes_atomically

#: A registry entry that runs a file of the log-viewer add-on.
LOG_VIEWER = re.compile(r"(^|[\s/\\])addons[/\\]log-viewer[/\\]", re.IGNORECASE)
#: Where the add-on reads, below C{HOME}.
PM2_LOG = Path(".pm2") / "logs" / "medimage-error.log"
#: Lines written (the add-on shows the last 100).
LINES = 200
#: The folder, in the server's data folder, that the add-on gets as C{HOME}.
HOME_FOLDER = "log-viewer-home"


def is_log_viewer(run_process: str) -> bool:
    return bool(LOG_VIEWER.search(run_process or ""))


def write_log_for_viewer(home: Path, newest_first: Iterable) -> Path:
    """
    Write the log lines (L{LogLine}s, newest first, as the log ring gives
    them) oldest first to C{home/.pm2/logs/medimage-error.log}; returns
    C{home}.  Private to the server's user, as its log is.
    """
    path = home / PM2_LOG
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = "".join(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(line.time))} "
                   f"[{line.level}] {line.text}\n" for line in reversed(list(newest_first)))
    write_bytes_atomically(path, text.encode("utf-8"))
    os.chmod(path, 0o600)
    return home
