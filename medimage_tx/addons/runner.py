"""
Running one add-on process: started with C{reactor.spawnProcess} (the
reactor waits for it without blocking and without holding a thread), its
output collected (the last MiB of each stream), stopped with its whole
process tree when it runs past its time limit.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional

import psutil
from twisted.internet import error, protocol
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from .command import Command

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

log = Logger()

#: Runs "$@" in the folder "$1" (the process keeps the shell's id).
IN_FOLDER = ("/bin/sh", "-c", 'cd -- "$1" && shift && exec "$@"')

#: Output kept per stream; the markers are read from its end.
MAX_OUTPUT = 1024 * 1024


@dataclass
class RunResult:
    """
    How a process ended.  C{ok} is a clean exit with status 0.
    """

    stdout: str = ""
    stderr: str = ""
    exit_code: Optional[int] = None
    signal: Optional[int] = None
    timed_out: bool = False
    error: Optional[str] = None  # could not start
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.error is None

    def describe(self) -> str:
        if self.error is not None:
            return f"could not start: {self.error}"
        if self.timed_out:
            return f"stopped after its time limit ({self.seconds:.0f} s)"
        if self.signal is not None:
            return f"crashed (signal {self.signal})"
        return f"exit status {self.exit_code}"


class _Collector(protocol.ProcessProtocol):
    def __init__(self, done: Deferred, started: float):
        self.done = done
        self.started = started
        self.out = bytearray()
        self.err = bytearray()
        self.result: Optional[RunResult] = None

    @staticmethod
    def _keep(buffer: bytearray, data: bytes) -> None:
        buffer += data
        if len(buffer) > MAX_OUTPUT:
            del buffer[:-MAX_OUTPUT]

    def outReceived(self, data: bytes) -> None:
        self._keep(self.out, data)

    def errReceived(self, data: bytes) -> None:
        self._keep(self.err, data)

    def processEnded(self, reason) -> None:
        code = signal = None
        if isinstance(reason.value, error.ProcessTerminated):
            code, signal = reason.value.exitCode, reason.value.signal
        elif isinstance(reason.value, error.ProcessDone):
            code = 0
        self.finish(RunResult(exit_code=code, signal=signal))

    def finish(self, result: RunResult) -> None:
        if self.done.called:
            return
        result.stdout = self.out.decode("utf-8", "replace")
        result.stderr = self.err.decode("utf-8", "replace")
        result.seconds = time.monotonic() - self.started
        self.done.callback(result)


def kill_tree(pid: int) -> None:
    """
    Kill a process and everything it started (a shell's children too).
    """
    try:
        parent = psutil.Process(pid)
        family = parent.children(recursive=True) + [parent]
    except psutil.Error:
        return
    for each in family:
        try:
            each.kill()
        except psutil.Error:
            pass


def lower_priority(pid: int) -> None:
    try:
        process = psutil.Process(pid)
        process.nice(psutil.BELOW_NORMAL_PRIORITY_CLASS if os.name == "nt" else 10)
    except (psutil.Error, OSError):
        pass


def run_process(reactor: Any, command: Command, cwd: str, env: Mapping[str, str],
                timeout: float, clock: Optional[IReactorTime] = None, running: Optional[set] = None) -> Deferred:
    """
    Start C{command} and fire with a L{RunResult} when it ends, or at
    C{timeout} seconds (then the process tree is killed and whatever it
    printed so far is kept).  Never fails.

    @param running: the process id is in this set while it runs.
    """
    clock = clock or reactor
    done: Deferred = Deferred()
    collector = _Collector(done, time.monotonic())
    path: Optional[str]  # None: the shell below changes folder
    argv, path = list(command.argv), cwd
    if os.name == "posix" and os.path.abspath(cwd) != os.path.abspath("."):
        # Twisted forks the whole server to start a process in another
        # folder; a shell that changes folder and execs is started with
        # posix_spawn instead, which costs the reactor less.
        argv, path = [IN_FOLDER[0], IN_FOLDER[1], IN_FOLDER[2], "sh", cwd] + argv, None
    try:
        transport = reactor.spawnProcess(collector, argv[0], argv, env=dict(env), path=path)
    except Exception as e:  # e.g. no such folder, too many processes
        collector.finish(RunResult(error=str(e)))
        return done
    pid = transport.pid
    if command.low_priority and pid:
        lower_priority(pid)
    if running is not None and pid:
        running.add(pid)

        def gone(result: object) -> object:
            running.discard(pid)
            return result

        done.addBoth(gone)

    def too_long() -> None:
        if done.called:
            return
        pid = transport.pid
        if pid:
            kill_tree(pid)
        # Stop listening: a stray child may keep the pipes open.
        for fd in (0, 1, 2):
            try:
                transport.closeChildFD(fd)
            except Exception:
                pass
        collector.finish(RunResult(timed_out=True))

    call = clock.callLater(timeout, too_long)
    done.addBoth(lambda result: (call.cancel() if call.active() else None, result)[1])
    return done
