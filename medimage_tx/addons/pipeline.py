"""
The add-on service: photoWritten and fileWritten after a photo or file is
stored (straight from a phone or pulled from the relay), before its copies
to the target folders, so that what add-ons print (C{backupFiles:},
C{backupFileRenamed:}) changes what is copied.

The phone's answer: with no active add-on for the file's event, nothing
changes (the copies are made before the 200).  With one, the photo is made
durable in the staging folder and durably marked, the phone gets its 200,
and the add-ons then run one after the other (as the original runs them)
followed by the copies.  A failing, hanging or crashing add-on is logged
with its output and the photo is copied all the same.  After a crash the
add-ons of an unfinished photo run again before its copies.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore, TimeoutError
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..config import ConfigError, load_config
from ..photos.paths import inside
from ..errors import Rejected
from ..photos.store import Stored
from .command import CannotRun, build_command
from .output import AddonOutput, parse_output
from .log_viewer import HOME_FOLDER, LINES as LOG_VIEWER_LINES, is_log_viewer, write_log_for_viewer
from .python_api import PythonAddon, Result, StoredFile
from .registry import DEFAULT_TIMEOUT, Entry, Registry
from .runner import RunResult, kill_tree, run_process

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from ..state import ServerState

log = Logger()

PHOTO_EXTENSIONS = (".jpg",)
#: Photos whose add-ons run at the same time; the rest wait their turn.
CONCURRENT_PHOTOS = 4
#: Add-on output quoted in the log, at most.
LOGGED_OUTPUT = 4000


def event_for(name: str) -> str:
    """
    photoWritten for a C{.jpg} (the original's test), fileWritten for
    anything else.
    """
    return "photoWritten" if name.lower().endswith(PHOTO_EXTENSIONS) else "fileWritten"


def photos_relative(photos: Path, named: str) -> Optional[str]:
    """
    A path an add-on printed (absolute, or relative to the photos folder)
    as a path below the photos folder, or L{None} when it is outside.
    """
    path = Path(named)
    if not path.is_absolute():
        path = photos / path
    try:
        relative = Path(os.path.normpath(path)).relative_to(os.path.normpath(photos)).as_posix()
        inside(photos, relative)
    except (ValueError, Rejected):
        return None
    return relative


def in_daemon_thread(reactor: Any, f, *args) -> Deferred:
    """
    Run C{f} in a thread of its own that never holds up shutdown (a hung
    Python add-on cannot be stopped, only abandoned).
    """
    d: Deferred = Deferred()

    def fire(settle: Callable[[Any], None], outcome: object) -> None:
        if not d.called:
            settle(outcome)

    def work() -> None:
        try:
            result = f(*args)
        except BaseException:
            reactor.callFromThread(fire, d.errback, Failure())
        else:
            reactor.callFromThread(fire, d.callback, result)

    threading.Thread(target=work, name="medimage-python-addon", daemon=True).start()
    return d


def quoted(text: str) -> str:
    text = text.strip()
    return text if len(text) <= LOGGED_OUTPUT else "..." + text[-LOGGED_OUTPUT:]


class AddonService(Service):
    """
    Runs the add-ons of one PC server.

    @ivar parent_dir: the folder with config.json and C{addons/} (the
        original's C{parentdir}).
    """

    def __init__(self, state: ServerState, reactor: Any, registry: Registry,
                 python_addons: Sequence[PythonAddon] = (), clock: Optional[IReactorTime] = None,
                 concurrency: int = CONCURRENT_PHOTOS):
        self.state = state
        self.reactor = reactor
        self.clock = clock or reactor
        self.registry = registry
        self.python_addons = tuple(python_addons)
        self._turns = DeferredSemaphore(concurrency)
        self._in_flight: set[Deferred] = set()
        #: Ids of the add-on processes running now.
        self.processes: set[int] = set()

    def stopService(self):
        super().stopService()
        # Add-ons still running are stopped; their photos stay marked, so
        # they run again (and are then copied) at the next start.
        for pid in list(self.processes):
            kill_tree(pid)
        return self.idle()

    @property
    def parent_dir(self) -> Path:
        return self.state.config.path.parent

    @property
    def pages(self) -> Path:
        """
        Where add-ons put their pages (the original's C{public/pages}).
        """
        return self.parent_dir / "public" / "pages"

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["MEDIMAGE_PARENT_DIR"] = str(self.parent_dir)
        env["MEDIMAGE_PHOTOS"] = str(self.state.store.photos)
        env["MEDIMAGE_CONFIG"] = str(self.state.config.path)
        return env

    # Storing

    def wants(self, name: str) -> bool:
        event = event_for(name)
        return bool(self.registry.active(event)) or any(a.handler(event) for a in self.python_addons)

    async def store(self, temp_path: Path, fd: Optional[int], parts: Sequence[str]) -> Stored:
        """
        Store a complete temporary file (see L{PhotoStore.store}) and run
        its add-ons; what the phone's answer may say once this returns.
        """
        store = self.state.store
        if not self.wants(parts[-1]):
            stored = await self.state.in_thread(store.store, temp_path, fd, parts)
            self._note(stored.backup_failures)
            return stored
        stored = await self.state.in_thread(store.stage, temp_path, fd, parts)
        if not stored.duplicate:
            self.start(stored.relative)
        return stored

    def start(self, relative: str) -> Deferred:
        """
        Run the add-ons of a staged photo, then copy it (in the background).
        """
        d = self._turns.run(lambda: Deferred.fromCoroutine(self._process(relative)))
        self._in_flight.add(d)

        def done(result):
            self._in_flight.discard(d)
            if isinstance(result, Failure):
                log.failure("Running the add-ons of {path} failed", result, path=relative)
            return None
        return d.addBoth(done)

    def resume(self, relatives: Sequence[str]) -> None:
        """
        After a restart: photos whose add-ons had not finished.
        """
        if relatives:
            log.info("Running the add-ons again for {count} photo(s) they had not finished "
                     "before the server stopped", count=len(relatives))
        for relative in relatives:
            self.start(relative)

    def idle(self) -> Deferred:
        """
        Fires when every add-on run started so far is done (tests, shutdown).
        """
        return DeferredList(list(self._in_flight), consumeErrors=True)

    def _note(self, failures) -> None:
        backups = self.state.backups
        if backups is not None:
            backups.note(failures, succeeded=self.state.store.backup_to)

    async def _process(self, relative: str) -> None:
        store = self.state.store
        photos = store.photos
        event = event_for(relative)
        staged = photos / relative
        current = relative  # where the photo is now (an add-on may rename it)
        extra: list[str] = []
        try:
            for entry in self.registry.active(event):
                param1 = str(photos / current)
                if entry.use_target_folder_file:
                    copy = await self.state.in_thread(store.first_copy, current)
                    if copy is not None:
                        param1 = str(copy)
                values = {"parentdir": str(self.parent_dir), "param1": param1,
                          # The original passes nothing more to these events.
                          "param2": "undefined", "param3": "undefined"}
                result = await self.run_entry(entry, values, describe=current)
                current = await self._apply(parse_output(result.stdout), entry.addon, current, extra)
            for addon in self.python_addons:
                handler = addon.handler(event)
                if handler is None:
                    continue
                current = await self._run_python(addon, handler, event, current, extra)
        finally:
            if not self.running:
                # Stopped meanwhile: the photo stays staged and marked, its
                # add-ons run again at the next start, then it is copied.
                return
            if not (photos / current).is_file() and current == relative:
                log.error("An add-on removed {path} from the photos folder without saying what it "
                          "became (backupFileRenamed:); it cannot be copied to the target folders",
                          path=relative)
            failures = await self.state.in_thread(store.finish, relative, [current] + extra)
            self._note(failures)
        if staged != photos / current:
            log.info("Add-ons renamed {old} to {new}; copied the new name", old=relative, new=current)

    async def _apply(self, out: AddonOutput, addon: str, current: str, extra: list[str]) -> str:
        photos = self.state.store.photos
        for named in out.backup_files:
            relative = photos_relative(photos, named)
            if relative is None:
                log.warn("Add-on {addon} asked to copy {named}, which is not in the photos folder "
                         "{photos}: not copied", addon=addon, named=named, photos=photos)
            elif relative not in extra:
                extra.append(relative)
        if out.renamed:
            relative = photos_relative(photos, out.renamed)
            if relative is None or not (photos / relative).is_file():
                log.warn("Add-on {addon} says the photo is now {named}, which is not a file in the "
                         "photos folder: copying {current} as it is", addon=addon,
                         named=out.renamed, current=current)
            else:
                current = relative
        if out.reload_config:
            await self.reload_config()
        return current

    async def _run_python(self, addon: PythonAddon, handler, event: str, current: str,
                          extra: list[str]) -> str:
        store, state = self.state.store, self.state
        stored = StoredFile(path=store.photos / current, relative=current, event=event,
                            photos=store.photos, targets=store.backup_to,
                            parent_dir=self.parent_dir, config=state.config)
        d = in_daemon_thread(self.reactor, handler, stored)
        d.addTimeout(DEFAULT_TIMEOUT, self.clock)
        try:
            result = await d
        except TimeoutError:
            log.error("Python add-on {name} on {path}: stopped waiting after its time limit "
                      "({seconds:.0f} s); copying the photo anyway", name=addon.name, path=current,
                      seconds=DEFAULT_TIMEOUT)
            return current
        except Exception:
            log.failure("Python add-on {name} failed on {path}; copying the photo anyway",
                        name=addon.name, path=current)
            return current
        if isinstance(result, Result):
            out = AddonOutput(backup_files=list(result.backup_files), renamed=result.renamed,
                              reload_config=result.reload_config)
            return await self._apply(out, addon.name, current, extra)
        return current

    # Running one entry (photo events and URL requests)

    async def run_entry(self, entry: Entry, values: dict[str, str], describe: str,
                        more_env: Optional[dict[str, str]] = None) -> RunResult:
        """
        Run an entry's command (C{more_env} added to its environment); log
        how it went.  Never raises.
        """
        try:
            command = build_command(entry.run_process, entry.priority, values)
        except CannotRun as e:
            result = RunResult(error=str(e))
        else:
            env = self.environment()
            if is_log_viewer(entry.run_process) and self.state.log_ring is not None:
                env["HOME"] = str(await self._log_for_viewer())
            result = await run_process(self.reactor, command, str(self.parent_dir),
                                       {**env, **(more_env or {})}, entry.timeout,
                                       self.clock, self.processes)
        if result.ok:
            log.info("Add-on {addon} ({event}) on {what}: done in {ms:.0f} ms{output}",
                     addon=entry.addon, event=entry.event, what=describe, ms=result.seconds * 1000,
                     output=(": " + quoted(result.stdout)) if result.stdout.strip() else "")
        else:
            log.error("Add-on {addon} ({event}) on {what} failed: {how}. Output: {stdout} "
                      "Errors: {stderr}", addon=entry.addon, event=entry.event, what=describe,
                      how=result.describe(), stdout=quoted(result.stdout) or "(none)",
                      stderr=quoted(result.stderr) or "(none)")
        return result

    async def _log_for_viewer(self) -> Path:
        """
        The server's latest log lines where the original's log-viewer
        add-on reads them (L{log_viewer}); returns the C{HOME} it gets.
        """
        home = self.state.store.temp.parent / HOME_FOLDER
        lines = self.state.log_ring.lines(limit=LOG_VIEWER_LINES)
        try:
            await self.state.in_thread(write_log_for_viewer, home, lines)
        except OSError as e:
            log.warn("Cannot write the log for the log-viewer add-on in {home}: {reason}",
                     home=home, reason=e.strerror or str(e))
        return home

    async def reload_config(self) -> None:
        """
        An add-on printed C{reloadConfig:true}: use config.json as it is now.
        """
        try:
            config = await self.state.in_thread(load_config, self.state.config.path)
        except ConfigError as e:
            log.warn("An add-on asked to reload config.json, which cannot be used: {error}",
                     error=str(e))
            return
        self.state.replace_config(config)
