"""
Small state files written durably without blocking the reactor: the write
(temp file, fsync, rename) runs in a thread, and saves asked for while one
is under way share the next write, so a flood of changes costs at most one
write at a time and never delays other requests.

Also the one way blocking calls leave the reactor thread (L{reactor_threads}):
the server's parts are given it, so tests can give them another runner.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

from .config import write_json_atomically

#: Runs C{f(*args)} off the reactor thread: a Deferred of its result.
InThread = Callable[..., Deferred]


def reactor_threads(reactor: Any) -> InThread:
    """
    Blocking calls in C{reactor}'s thread pool: the production runner.
    Tests with a fake reactor give the server a runner of their own.
    """
    return lambda f, *args: deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)


def read_json(path: Path) -> Any:
    """
    The JSON in C{path}, or L{None} if it is missing or unreadable.
    """
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class BackgroundJSONWriter:
    """
    Saves C{snapshot()} to C{path}.

    @param in_thread: runs a blocking call in a thread, returning a Deferred.
    """

    def __init__(self, path: Path, snapshot: Callable[[], Any],
                 in_thread: Callable[..., Deferred]):
        self.path = path
        self.snapshot = snapshot
        self.in_thread = in_thread
        self.writes = 0
        self._writing = False
        self._waiting: list[Deferred] = []

    def save(self) -> Deferred:
        """
        Fires once a write that began after this call has finished (or
        fails with its error): everything changed before the call is on disk.
        """
        d: Deferred = Deferred()
        self._waiting.append(d)
        if not self._writing:
            self._write()
        return d

    def _write(self) -> None:
        waiters, self._waiting = self._waiting, []
        self._writing = True
        # The snapshot is taken here, on the reactor thread, so it is
        # consistent and holds every change made before these saves.
        data = self.snapshot()
        self.writes += 1
        written = self.in_thread(write_json_atomically, self.path, data)

        def done(result: object) -> None:
            self._writing = False
            for waiter in waiters:
                if waiter.called:
                    continue  # cancelled: its request went away
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(None)
            if self._waiting:
                self._write()

        written.addBoth(done)
