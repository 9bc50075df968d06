"""
Keeping the backup targets filled: recovery at start, a periodic retry of
photos whose copies failed, and one log line when a target starts failing
or recovers (not one per photo or per try).
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ..durable import InThread, reactor_threads
from ..photos.store import PhotoStore, RecoveryReport

RETRY_INTERVAL = 30.0


class BackupService(Service):
    """
    @ivar failing: target folder -> reason, for the targets failing now.
    """

    log = Logger()

    def __init__(self, store: PhotoStore, reactor, interval: float = RETRY_INTERVAL,
                 in_thread: Optional[InThread] = None):
        self.store = store
        self.reactor = reactor
        self.in_thread = in_thread or reactor_threads(reactor)
        self.interval = interval
        self.failing: dict[str, str] = {}
        #: Called with the staged photos whose add-ons had not finished
        #: before a restart (the add-on service runs them again); without
        #: it they are just copied.
        self.on_unfinished_addons: Optional[Callable[[Sequence[str]], None]] = None
        self._loop = LoopingCall(self._retry)
        self._loop.clock = reactor

    def startService(self) -> None:
        super().startService()
        # Here, before the server takes uploads (local and quick); the rest in
        # a thread.  In the thread, it raced the first uploads and removed
        # their temporary files.
        removed = self.store.remove_unfinished_uploads()
        d = self.in_thread(self.store.recover, True)
        d.addCallback(self._count_removed, removed)
        d.addCallback(self._recovered)
        d.addErrback(lambda f: self.log.failure("Recovery of staged photos failed", f))
        d.addBoth(lambda _: self._start_loop())
        #: Fires once recovery is done (tests wait for it).
        self.recovered = d

    @staticmethod
    def _count_removed(report: RecoveryReport, removed: int) -> RecoveryReport:
        report.temp_files_removed += removed
        return report

    def _start_loop(self) -> None:
        if self.running and not self._loop.running:
            self._loop.start(self.interval, now=False)

    def stopService(self):
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def _recovered(self, report: RecoveryReport) -> None:
        if report.temp_files_removed or report.photos_backed_up:
            self.log.info(
                "Recovered after restart: removed {removed} unfinished temporary "
                "file(s), copied {copied} staged photo(s) to the target folders",
                removed=report.temp_files_removed, copied=report.photos_backed_up,
            )
        else:
            self.log.info("Start-up check done: nothing left over from before")
        self._note_report(report)
        if report.unfinished_addons:
            if self.on_unfinished_addons is not None:
                self.on_unfinished_addons(report.unfinished_addons)
            else:
                for relative in report.unfinished_addons:
                    d = self.in_thread(self.store.finish, relative, [relative])
                    d.addCallback(self.note)
                    d.addErrback(lambda f: self.log.failure("Copying a staged photo failed", f))

    def _note_report(self, report: RecoveryReport) -> None:
        # Only a photo actually copied proves a target works again.
        worked = self.store.backup_to if report.photos_backed_up else ()
        self.note(report.failures, succeeded=worked)

    def retry_now(self):
        """
        Copy the photos waiting for a target now (the targets just changed):
        a Deferred firing with the L{RecoveryReport}.
        """
        return self._retry()

    def _retry(self):
        d = self.in_thread(self.store.retry_pending)
        d.addCallback(self._noted)
        # Never let the loop die: a LoopingCall stops for good on an error.
        d.addErrback(lambda f: self.log.failure("Retrying backups failed", f))
        return d

    def _noted(self, report: RecoveryReport) -> RecoveryReport:
        self._note_report(report)
        return report

    def note(self, failures: Iterable[tuple[str, str]], succeeded: Iterable = ()) -> None:
        """
        Record the outcome of copying to the targets; log changes only.
        """
        failed = dict(failures)
        for target, reason in failed.items():
            if self.failing.get(target) != reason:
                self.log.warn(
                    "Cannot copy photos to the target folder {target}: {reason}. "
                    "They stay in {photos} and will be copied when it works again.",
                    target=target, reason=reason, photos=self.store.photos,
                )
            self.failing[target] = reason
        for target in map(str, succeeded):
            if target in self.failing and target not in failed:
                del self.failing[target]
                self.log.info("The target folder {target} works again", target=target)
