"""
Real processes in tests: output collected as it comes, lines awaited as
Deferreds (never by sleeping), the exit status as a Deferred.
"""

from __future__ import annotations

import os
import re
from typing import Optional

from twisted.internet import defer, protocol


#: Every process started by L{spawn} and not yet ended: conftest stops what
#: a test leaves running, whether it passed or failed.
RUNNING: set["WatchedProcess"] = set()


class WatchedProcess(protocol.ProcessProtocol):
    """
    @ivar ended: fires with the exit code, or minus the signal that ended it.
    """

    def __init__(self):
        self.output = b""
        self.errors = b""  # stderr alone (it is in output too)
        self.ended: defer.Deferred = defer.Deferred()
        self._waiting: list[tuple[re.Pattern, int, defer.Deferred]] = []

    def outReceived(self, data: bytes) -> None:
        self.output += data
        for entry in list(self._waiting):
            pattern, count, d = entry
            matches = list(pattern.finditer(self.output))
            if len(matches) >= count:
                self._waiting.remove(entry)
                d.callback(matches[count - 1])

    def errReceived(self, data: bytes) -> None:
        self.errors += data
        self.outReceived(data)

    def wait_for(self, pattern: bytes, count: int = 1, timeout: float = 60.0) -> defer.Deferred:
        """
        Fires with the C{count}th match of C{pattern} in the output; fails
        if the process ends first, or with L{defer.TimeoutError} (the
        output so far in the message) after C{timeout} seconds.
        """
        from twisted.internet import reactor

        d: defer.Deferred = defer.Deferred()
        entry = (re.compile(pattern), count, d)
        self._waiting.append(entry)
        self.outReceived(b"")

        def timed_out(result, timeout):
            if entry in self._waiting:
                self._waiting.remove(entry)
            raise defer.TimeoutError(
                f"{pattern!r} not seen within {timeout} s; output:\n"
                + self.output.decode(errors="replace")[-3000:])

        return d.addTimeout(timeout, reactor, onTimeoutCancel=timed_out)

    def exited(self, timeout: float = 60.0) -> defer.Deferred:
        """
        L{ended}, bounded: fails with L{defer.TimeoutError} after C{timeout}.
        """
        from twisted.internet import reactor

        d: defer.Deferred = defer.Deferred()
        self.ended.addBoth(lambda result: (d.callback(result) if not d.called else None, result)[1])
        return d.addTimeout(timeout, reactor)

    async def port(self) -> int:
        """
        The port from the server's start-up line.
        """
        return int((await self.wait_for(rb"listening on port (\d+)")).group(1))

    def ended_within(self, seconds: float) -> defer.Deferred:
        """
        The exit status, or a failure (L{defer.TimeoutError}) if the process
        runs longer than C{seconds}.
        """
        from twisted.internet import reactor

        watched: defer.Deferred = defer.Deferred()
        self.ended.addBoth(lambda status: (watched.called or watched.callback(status), status)[1])
        return watched.addTimeout(seconds, reactor)

    def processEnded(self, reason) -> None:
        RUNNING.discard(self)
        waiting, self._waiting = self._waiting, []
        for _, _, d in waiting:
            d.errback(RuntimeError("the process ended first:\n" + self.output.decode(errors="replace")[-3000:]))
        status = reason.value
        self.ended.callback(status.exitCode if status.signal is None else -status.signal)


def spawn(argv: list[str], path: str, env: Optional[dict] = None) -> WatchedProcess:
    from twisted.internet import reactor

    process = WatchedProcess()
    if env is None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    reactor.spawnProcess(process, argv[0], argv, env=env, path=path)
    RUNNING.add(process)
    return process
