"""
Durable, idempotent photo storage (PROTOCOL.md A2 and B2).

A photo arrives as a complete temporary file in C{<data>/tmp}.  L{PhotoStore}
flushes it, links it into C{<data>/photos/<folders>/<name>} without ever
overwriting, then copies it to every C{backupTo} folder (the first is the
clinic's target folder) the same way: temporary file in the target's own
file system, flush, link into place.  A reader never sees a partial file.

Plain blocking Python: the Twisted side runs these calls in a thread.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

from ..config import fsync_folder
from ..errors import Rejected, TryLater, disk_trouble
from .name_index import MAX_NUMBER, NameFamilies, NameFamily, file_digest, digest_or_none
from .naming import with_suffix_number
from .paths import inside

#: Hidden folder inside each backup target for copies still being written.
INCOMING = ".medimage-incoming"


def process_umask() -> int:
    """
    This process's umask, without changing it where the OS can tell
    (changing it, even for a moment, races other threads creating files).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def folder_mode_for(file_mode: int) -> int:
    """
    A folder mode that lets in whoever may read the files: x beside each r.
    """
    return file_mode | (file_mode & 0o444) >> 2



@dataclass(frozen=True)
class Stored:
    """
    Where a photo was stored, relative to the photos folder, and whether it
    was already there with the same bytes (a retried upload).
    """

    relative: str
    duplicate: bool
    backup_failures: tuple[tuple[str, str], ...] = ()


@dataclass
class RecoveryReport:
    temp_files_removed: int = 0
    photos_backed_up: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    #: Staged photos whose add-ons had not finished (marked busy until
    #: someone runs them, or copies them with L{PhotoStore.finish}).
    unfinished_addons: list[str] = field(default_factory=list)


def same_content(path: Path, other: Path) -> bool:
    """
    Whether two files hold the same bytes.  Only needed when a name is
    taken, so nothing is hashed on the common path.
    """
    try:
        return filecmp.cmp(path, other, shallow=False)
    except OSError:
        return False


def link_no_overwrite(source: Path, dest: Path) -> None:
    """
    Put C{source}'s file at C{dest} atomically, failing with
    L{FileExistsError} if C{dest} exists.  C{source} stays.
    """
    try:
        os.link(source, dest)
    except FileExistsError:
        raise
    except OSError:
        # File systems without hard links (some network shares): copy
        # instead; the existence check and the copy are not atomic there.
        if dest.exists():
            raise FileExistsError(dest) from None
        shutil.copyfile(source, dest)
        _fsync_file(dest)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _split_name(name: str) -> tuple[str, str]:
    stem, dot, extension = name.rpartition(".")
    return (stem, "." + extension) if dot and stem else (name, "")


class PhotoStore:
    """
    The staging folder, the backup targets, and the rules between them.

    @param data_dir: holds C{photos/}, C{tmp/} and C{pending/}.
    @param backup_to: target folders in order; the first is the clinic's.
    @param keep_master: keep the staged copy once all copies are made.
    @param file_mode: the mode of stored photos and copies (config's
        C{fileMode}); None gives what the umask gives a new file (0644 under
        022), as the original did, so practice software running as another
        user, or a share, can read them.  Folders the store creates then
        get the matching mode; with None, the umask's.
    """

    def __init__(self, data_dir: Path, backup_to: Sequence[Path], keep_master: bool,
                 file_mode: Optional[int] = None):
        self.data_dir = data_dir
        self.photos = data_dir / "photos"
        self.temp = data_dir / "tmp"
        self.pending = data_dir / "pending"
        self.backup_to = tuple(backup_to)
        self.keep_master = keep_master
        self.file_mode = file_mode if file_mode is not None else 0o666 & ~process_umask()
        self.folder_mode = None if file_mode is None else folder_mode_for(file_mode)
        #: Staged photos that add-ons are working on: the retries leave
        #: them (and, with keepMaster off, every unmarked staged file) alone.
        self._busy: set[str] = set()
        self._busy_lock = threading.Lock()
        #: What is known of the photos under names already taken.
        self._names = NameFamilies()
        self._names_lock = threading.Lock()

    def _make_folders(self, folder: Path) -> None:
        """
        C{mkdir -p}, giving the folders it creates L{folder_mode}.
        """
        missing = []
        while not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:
                continue  # made meanwhile by another thread: theirs to set
            if self.folder_mode is not None:
                os.chmod(folder, self.folder_mode)

    def prepare(self) -> None:
        for folder in (self.photos, self.temp, self.pending):
            folder.mkdir(parents=True, exist_ok=True)

    # Storing

    def store(self, temp_path: Path, fd: Optional[int], parts: Sequence[str]) -> Stored:
        """
        Make the complete temporary file at C{temp_path} durable under
        C{photos/<parts>}, then copy it to the backup targets.  The
        temporary file is gone afterwards, whatever happens.

        @param fd: an open descriptor of the temporary file to flush and
            close, or L{None} if it is already flushed and closed.
        @raise TryLater: the photo could not be made durable.
        """
        relative, duplicate = self._make_durable(temp_path, fd, parts, addons=False)
        failures = self.ensure_backups(relative) if self.backup_to else []
        return Stored(relative, duplicate, tuple(failures))

    def stage(self, temp_path: Path, fd: Optional[int], parts: Sequence[str]) -> Stored:
        """
        Like L{store}, but without the copies: the photo is made durable
        under C{photos/<parts>}, marked (durably) as waiting for its
        add-ons and copies, and left busy for L{finish}.
        """
        return Stored(*self._make_durable(temp_path, fd, parts, addons=True))

    def _make_durable(self, temp_path: Path, fd: Optional[int], parts: Sequence[str],
                      addons: bool) -> tuple[str, bool]:
        try:
            if fd is not None:
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            # Temporary files are private (mkstemp: 0600); the photo is not.
            os.chmod(temp_path, self.file_mode)
            return self._link_into_photos(temp_path, parts, addons)
        except OSError as e:
            raise disk_trouble(e) from None
        finally:
            _unlink_quietly(temp_path)

    def finish(self, relative: str, copy: Sequence[str]) -> list[tuple[str, str]]:
        """
        Add-ons are done with C{relative}: copy each of C{copy} (paths in
        the photos folder, normally C{relative} itself, or what add-ons
        renamed it to and the files they asked for) to every target, then
        drop C{relative}'s add-on mark.  Returns the failed targets.
        """
        failures = []
        try:
            for each in dict.fromkeys(copy):
                if not self.backup_to or not (self.photos / each).is_file():
                    continue
                if each != relative:
                    self.mark_pending(each)
                failures.extend(self.ensure_backups(each))
            if self._marker_addons(relative):
                # Not copied under this name (renamed, removed, or no targets):
                # a failed copy would have rewritten the mark without add-ons.
                _unlink_quietly(self._marker(relative))
        finally:
            # Whatever happened, the retries may take it from here.
            self.release(relative)
        return failures

    def copy_files(self, relatives: Sequence[str]) -> list[tuple[str, str]]:
        """
        Copy files an add-on made in the photos folder to every target.
        """
        failures = []
        for relative in dict.fromkeys(relatives):
            if self.backup_to and (self.photos / relative).is_file():
                self.mark_pending(relative)
                failures.extend(self.ensure_backups(relative))
        return failures

    def first_copy(self, relative: str) -> Optional[Path]:
        """
        Copy C{relative} to the targets now and return its copy in the
        first (the clinic's) folder, for add-ons that work on the target
        file (C{useTargetFolderFile}).
        """
        if not self.backup_to:
            return None
        self.ensure_backups(relative, keep_marker=True)
        return self._find_copy(relative, self.backup_to[0])

    # Busy photos

    def hold(self, relative: str) -> bool:
        """
        Mark C{relative} busy; returns whether it was not busy already.
        """
        with self._busy_lock:
            new = relative not in self._busy
            self._busy.add(relative)
            return new

    def release(self, relative: str) -> None:
        with self._busy_lock:
            self._busy.discard(relative)

    def busy(self) -> frozenset[str]:
        with self._busy_lock:
            return frozenset(self._busy)

    def _name(self, folder: tuple[str, ...], stem: str, extension: str, number: int) -> str:
        return "/".join(folder + (with_suffix_number(stem, number) + extension,))

    def _places(self, relative: str) -> list[Path]:
        places = [inside(self.photos, relative)]
        if self.backup_to and not self.keep_master:
            # The staged copy moves on; the target keeps the name.
            places.append(inside(self.backup_to[0], relative))
        return places

    def _link_into_photos(self, temp_path: Path, parts: Sequence[str],
                          addons: bool = False) -> tuple[str, bool]:
        stem, extension = _split_name(parts[-1])
        folder = tuple(parts[:-1])
        self._make_folders(self.photos.joinpath(*folder))
        first = self._name(folder, stem, extension, 0)
        # The common case: the name is free, and nothing is read or hashed.
        if not any(p.exists() for p in self._places(first)) and self._link(temp_path, first, addons):
            with self._names_lock:
                family = self._names.get(first)
                if family is not None:
                    family.taken(0, None)  # its digest is read if the name is taken again
            return first, False
        # The name is taken: find these bytes among the photos under it by
        # their digest (finding 19.1: comparing with each of them made
        # every upload of a flooded name read them all).
        digest = file_digest(temp_path)
        with self._names_lock:
            family = self._names.get(first)
            if family is None:
                family = self._names.add(first, self._scan(folder, stem, extension))
            return self._place_under_taken_name(temp_path, digest, family, folder, stem,
                                                extension, addons)

    def _digest_at(self, relative: str) -> tuple[bool, Optional[bytes]]:
        """
        Whether a photo is under C{relative} (in photos/, or moved on to the
        first target), and its digest (None if its copies differ or
        cannot be read).
        """
        existing = [p for p in self._places(relative) if p.exists()]
        digests = {digest_or_none(p) for p in existing}
        return bool(existing), (digests.pop() if len(digests) == 1 else None)

    def _scan(self, folder: tuple[str, ...], stem: str, extension: str) -> NameFamily:
        """
        Read the photos under a name once (the first collision since start):
        C{name}, C{name-1}, ... up to the first free number.
        """
        family = NameFamily()
        for number in range(MAX_NUMBER):
            exists, digest = self._digest_at(self._name(folder, stem, extension, number))
            if not exists:
                break
            family.taken(number, digest)
        return family

    def _place_under_taken_name(self, temp_path: Path, digest: bytes, family: NameFamily,
                                folder: tuple[str, ...], stem: str, extension: str,
                                addons: bool) -> tuple[str, bool]:
        # Photos linked under the first name while nothing was hashed: read
        # once each, then known.
        for unknown in family.unknown():
            exists, found = self._digest_at(self._name(folder, stem, extension, unknown))
            family.taken(unknown, found) if exists else family.forget(unknown)
        number = family.number_of(digest)
        if number is not None:
            relative = self._name(folder, stem, extension, number)
            existing = [p for p in self._places(relative) if p.exists()]
            if existing and all(same_content(p, temp_path) for p in existing):
                return relative, True  # sent again: the photo is already here
            family.forget(number)  # moved away, or changed by someone else
        number = 0
        while True:
            number = family.free_from(number)
            if number >= MAX_NUMBER:
                raise TryLater("Too many different photos with this name")
            relative = self._name(folder, stem, extension, number)
            exists, found = self._digest_at(relative)
            if exists:
                # A photo the index did not know of (another name's numbered
                # one, or put there meanwhile): read once, then known.
                family.taken(number, found)
                if found == digest:
                    return relative, True
                continue
            if self._link(temp_path, relative, addons):
                family.taken(number, digest)
                return relative, False
            # Someone got there first: look at the same number again.

    def _link(self, temp_path: Path, relative: str, addons: bool) -> bool:
        """
        Link the photo into place under C{relative}; False if the name was
        taken meanwhile.
        """
        dest = inside(self.photos, relative)
        # Busy before it appears: a retry must not copy it (or move it
        # away) before its add-ons have run.
        held = addons and self.hold(relative)
        for attempt in range(3):
            try:
                link_no_overwrite(temp_path, dest)
                break
            except FileExistsError:
                if held:
                    self.release(relative)
                return False
            except FileNotFoundError:
                if dest.parent.is_dir() or attempt == 2:
                    if held:
                        self.release(relative)
                    raise
                # The folder was emptied and removed meanwhile (a relay
                # removes a collected photo's folders in another thread).
                self._make_folders(dest.parent)
            except BaseException:
                if held:
                    self.release(relative)
                raise
        if addons:
            # The phone's 200 comes before the add-ons and copies: the mark
            # must survive a crash.
            self.mark_pending(relative, addons=True)
            _fsync_quietly(self._marker(relative))
        else:
            self.mark_pending(relative)
        fsync_folder(dest.parent)
        return True

    # Backups

    def _marker(self, relative: str) -> Path:
        return self.pending / (hashlib.sha256(relative.encode()).hexdigest()[:32] + ".json")

    def mark_pending(self, relative: str, addons: bool = False) -> None:
        """
        Note that C{photos/<relative>} still has copies to be made (and,
        with C{addons}, add-ons to run first).
        """
        if not self.backup_to and not addons:
            return
        # Not flushed here: until the phone gets 200 it retries anyway, and a
        # retry runs the backups again.  Flushed below if a backup fails.
        record = {"path": relative, "addons": True} if addons else {"path": relative}
        self._marker(relative).write_text(json.dumps(record))

    def _marker_addons(self, relative: str) -> bool:
        try:
            return bool(json.loads(self._marker(relative).read_text()).get("addons"))
        except (OSError, ValueError, AttributeError):
            return False

    def ensure_backups(self, relative: str, keep_marker: bool = False) -> list[tuple[str, str]]:
        """
        Copy C{photos/<relative>} to every backup target that lacks it.
        Returns the targets that failed, with the reason; the photo then
        stays staged and marked pending, to be tried again.
        """
        staged = inside(self.photos, relative)
        failures = []
        for index, target in enumerate(self.backup_to):
            try:
                if not staged.exists():
                    break  # already moved to the first target: done
                self._copy_to_target(staged, target, relative, move=(index == 0 and not self.keep_master))
            except OSError as e:
                failures.append((str(target), e.strerror or str(e)))
        marker = self._marker(relative)
        if failures:
            self.mark_pending(relative)
            _fsync_quietly(marker)
            return failures
        if keep_marker:
            return failures
        if not self.keep_master and staged.exists():
            _unlink_quietly(staged)
        _unlink_quietly(marker)
        return failures

    def _find_copy(self, relative: str, target: Path) -> Optional[Path]:
        """
        The copy of C{photos/<relative>} in C{target} (the name may have a
        number added where another photo had it).
        """
        staged = inside(self.photos, relative)
        folders, _, name = relative.rpartition("/")
        stem, extension = _split_name(name)
        dest_folder = target / folders if folders else target
        for number in range(100000):
            dest = dest_folder / (with_suffix_number(stem, number) + extension)
            if not dest.exists():
                return None
            if not staged.exists() or same_content(dest, staged):
                return dest
        return None

    def _copy_to_target(self, staged: Path, target: Path, relative: str, move: bool) -> None:
        if not target.is_dir():
            # Never create the target itself: a missing drive or share must
            # not turn into a local folder that nobody reads.
            raise FileNotFoundError(2, "the folder does not exist (is the drive or share connected?)")
        folders, name = relative.rpartition("/")[0], relative.rpartition("/")[2]
        stem, extension = _split_name(name)
        dest_folder = target / folders if folders else target
        self._make_folders(dest_folder)
        same_fs = move and os.stat(target).st_dev == os.stat(self.photos).st_dev
        for number in range(100000):
            dest = dest_folder / (with_suffix_number(stem, number) + extension)
            if dest.exists():
                if same_content(dest, staged):
                    return
                continue
            try:
                if same_fs:
                    link_no_overwrite(staged, dest)
                else:
                    self._copy_durably(staged, target, dest)
            except FileExistsError:
                if same_content(dest, staged):
                    return
                continue
            fsync_folder(dest_folder)
            return

    def _copy_durably(self, source: Path, target: Path, dest: Path) -> None:
        incoming = target / INCOMING
        incoming.mkdir(exist_ok=True)
        fd, name = tempfile.mkstemp(dir=incoming, suffix=".part")
        os.close(fd)
        temp = Path(name)
        try:
            shutil.copyfile(source, temp)
            os.chmod(temp, self.file_mode)
            _fsync_file(temp)
            link_no_overwrite(temp, dest)
        finally:
            _unlink_quietly(temp)

    # Start-up and retries

    def pending_photos(self) -> list[str]:
        """
        Staged photos whose backups are not all made yet, and no add-on
        is working on.
        """
        return sorted(relative for relative, addons in self._pending().items() if not addons)

    def _pending(self) -> dict[str, bool]:
        """
        Staged photos still to be copied -> whether add-ons must run first.
        """
        busy = self.busy()
        found: dict[str, bool] = {}
        for marker in self.pending.glob("*.json"):
            try:
                record = json.loads(marker.read_text())
                relative = record["path"]
            except (OSError, ValueError, KeyError, TypeError):
                _unlink_quietly(marker)
                continue
            if relative in busy:
                continue
            if isinstance(relative, str) and _is_inside(self.photos, relative) \
                    and (self.photos / relative).is_file():
                found[relative] = bool(record.get("addons"))
            else:
                _unlink_quietly(marker)
        if self.backup_to and not self.keep_master and not busy:
            # Every staged photo left here is one whose copies are not done
            # (checked only while no add-on may be writing a new file).
            for path in self.photos.rglob("*"):
                if path.is_file():
                    found.setdefault(path.relative_to(self.photos).as_posix(), False)
        return found

    def retry_pending(self, report: Optional[RecoveryReport] = None) -> RecoveryReport:
        report = report or RecoveryReport()
        for relative, addons in sorted(self._pending().items()):
            if addons:
                # Left by a crash while add-ons ran: they run again first.
                self.hold(relative)
                report.unfinished_addons.append(relative)
                continue
            failures = self.ensure_backups(relative)
            if failures:
                report.failures.extend(failures)
            else:
                report.photos_backed_up += 1
        return report

    def remove_unfinished_uploads(self) -> int:
        """
        Remove the temporary files a crash left in C{tmp/}.  Only before the
        server takes uploads: later, they would be uploads under way.
        """
        return _remove_files_in([self.temp])

    def recover(self, uploads_done: bool = False) -> RecoveryReport:
        """
        After a crash: remove temporary files (those in C{tmp/} too unless
        C{uploads_done}), then finish backups.
        """
        removed = 0 if uploads_done else self.remove_unfinished_uploads()
        removed += _remove_files_in([t / INCOMING for t in self.backup_to])
        report = self.retry_pending(RecoveryReport(temp_files_removed=removed))
        return report


def _remove_files_in(folders: list[Path]) -> int:
    removed = 0
    for folder in folders:
        if folder.is_dir():
            for leftover in folder.iterdir():
                if leftover.is_file():
                    _unlink_quietly(leftover)
                    removed += 1
    return removed


def _is_inside(base: Path, relative: str) -> bool:
    try:
        inside(base, relative)
    except Rejected:
        return False
    return True


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_quietly(path: Path) -> None:
    try:
        _fsync_file(path)
        fsync_folder(path.parent)
    except OSError:
        pass
