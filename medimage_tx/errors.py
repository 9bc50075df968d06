"""
The two ways a request can fail that a phone understands (docs/protocol.md,
"Answers the apps understand").  Domain code raises these; web/answers.py turns them
into answers in one place, for the app family that sent the request.
"""

from __future__ import annotations

import errno


class Rejected(Exception):
    """
    Permanent: the upload will never be stored as it is.  C{str(error)} is
    the one-line reason.
    """


class TryLater(Exception):
    """
    Transient trouble on our side: the phone keeps its photo and retries.

    @ivar status: the HTTP status for clients that read it (never C{503}:
        the browser app takes that for "invalid URL").
    @ivar phrase: a short reason phrase a doctor can read (the browser app
        shows only that).
    """

    def __init__(self, reason: str, retry_after: int = 30, status: int = 500,
                 phrase: str = "The server cannot store the photo now; the photo stays on the phone"):
        super().__init__(reason)
        self.retry_after = retry_after
        self.status = status
        self.phrase = phrase


def disk_trouble(error: OSError) -> TryLater:
    """
    Any trouble writing on the server's side (disk full, permissions, a
    vanished folder) is the server's, not the photo's: the phone retries.
    """
    reason = f"The server cannot store the photo right now: {error.strerror}"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return TryLater(reason, status=507,
                        phrase="The clinic computer's disk is full; the photo stays on the phone")
    # Never 503 (the browser app reads it as "invalid URL"): 500, with a
    # phrase IT can act on (the browser app shows only the phrase).
    for numbers, what in DISK_TROUBLE:
        if error.errno in numbers:
            return TryLater(reason, phrase=f"{what}; the photo stays on the phone")
    return TryLater(reason)


#: Reason phrases for disk trouble other than a full disk (issue 19 item 3).
DISK_TROUBLE = (
    ((errno.EACCES, errno.EPERM, errno.EROFS), "The clinic computer may not write to its photo folder"),
    ((errno.ENOENT, errno.ENOTDIR), "The clinic computer's photo folder is missing"),
    ((errno.EIO,), "The clinic computer's disk reports an error"),
)


class StartupFailed(SystemExit, Exception):
    """
    The server cannot start: one line for stderr, exit status 1.

    A L{SystemExit} so the foreground process ends with just the line; an
    L{Exception} too, because twistd reports only those from a daemon's
    start to the launching process (anything else leaves it waiting forever).
    """
