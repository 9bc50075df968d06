"""
Where the server's log goes and what it leaves out.

twistd builds the log observer from C{--logger}; L{tap.Options} points that
at L{make_observer} so C{twistd medimage} and C{medimage-tx serve} both get:
the console (foreground) or a file rotated at L{ROTATE_BYTES} with
L{KEEP_FILES} old ones (C{--logfile}, a daemon's default), Twisted's
routine chatter left out, and debug lines only with C{--verbose}.
"""

from __future__ import annotations

import re
import sys
from typing import Callable, Optional, TextIO

from twisted.logger import (
    FilteringLogObserver, ILogObserver, LogLevel, LogLevelFilterPredicate, PredicateResult, formatEvent,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile

from .errors import StartupFailed

ROTATE_BYTES = 10_000_000
KEEP_FILES = 5

#: Twisted's routine lines: every listener and client connection starting
#: and stopping, object addresses included, and a plugin cache a service
#: user may not write (harmless: the plugin is found without it).
_CHATTER = re.compile(
    r"(Starting|Stopping) (factory|protocol) "
    r"|\S+ starting on \d+$"
    r"|\((TCP|UDP) Port \d+ Closed\)$"
    r"|Unable to write to plugin cache "
)


def is_chatter(event: dict) -> bool:
    if event.get("log_level", LogLevel.info) > LogLevel.info:
        return False
    return bool(_CHATTER.match(formatEvent(event)))


def _drop_chatter(event: dict) -> PredicateResult:
    return PredicateResult.no if is_chatter(event) else PredicateResult.maybe


class LogFileTrouble(Exception):
    pass


def open_log_file(path: str) -> LogFile:
    """
    @raise LogFileTrouble: the file cannot be opened for writing.
    """
    try:
        log_file = LogFile.fromFullPath(path, rotateLength=ROTATE_BYTES, maxRotatedFiles=KEEP_FILES)
    except OSError as e:
        raise LogFileTrouble(f"cannot write the log file {path}: {e.strerror or e}") from None
    _rotate_on_sigusr1(log_file)
    return log_file


def _rotate_on_sigusr1(log_file: LogFile) -> None:
    # As twistd does for its own log files, where the OS has the signal.
    import signal

    if not hasattr(signal, "SIGUSR1"):
        return

    def rotate(signum, frame):
        from twisted.internet import reactor

        reactor.callFromThread(log_file.rotate)

    signal.signal(signal.SIGUSR1, rotate)


def make_observer(log_path: Optional[str], verbose: bool = False, stream=None) -> ILogObserver:
    """
    The server's log observer: to C{log_path} ("-" or None: C{stream}, the
    console by default), info and up (debug too when C{verbose}), without
    Twisted's routine chatter unless C{verbose}.

    @raise LogFileTrouble: C{log_path} cannot be written.
    """
    out: LogFile | TextIO
    if log_path and log_path != "-":
        out = open_log_file(log_path)
    else:
        out = stream if stream is not None else sys.stdout
    level = LogLevel.debug if verbose else LogLevel.info
    predicates: list[Callable[[dict], PredicateResult]] = [LogLevelFilterPredicate(defaultLogLevel=level)]
    if not verbose:
        predicates.append(_drop_chatter)
    # Twisted's types want an IO (a LogFile writes and flushes: twistd gives
    # it one too) and predicates that declare their interface (any callable does).
    observer = textFileLogObserver(out)  # type: ignore[arg-type]
    return FilteringLogObserver(observer, predicates)  # type: ignore[arg-type]


#: Set by L{tap.Options} for L{twistd_observer} (twistd calls it with no arguments).
for_twistd: dict = {"log_path": None, "verbose": False}


def twistd_observer() -> ILogObserver:
    """
    twistd's C{--logger} for the server.  Runs before twistd daemonizes, so a
    log file it cannot write ends the start at once, with one line.
    """
    try:
        return make_observer(for_twistd["log_path"], verbose=for_twistd["verbose"])
    except LogFileTrouble as e:
        raise StartupFailed(f"medimage: {e}") from None
