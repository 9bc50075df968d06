"""
Take over an original MedImage installation (the folder holding its
C{config.json}, C{photos/} and C{addons/}): its config copied byte for byte
to this server's config location, its add-ons beside it (the add-on
service runs the original's add-ons unchanged), and the photos still
waiting in its C{photos/} filed as if just received: the same durable
store path, then the C{backupTo} copies; a photo that has add-ons to run
is staged for them, and the server runs its add-ons and copies when it
starts, as after a restart.

Plain blocking Python, run with no server running; the caller prints the
report.  It follows no links in the original's folder (run as root, a link
would file whatever it points at), takes no folder that is this server's
own, and, run as root, writes as the service user (pc/service_user.py).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional

from ..config import DEFAULTS, Config, ConfigError, fsync_folder, load_config, parse_config, write_bytes_atomically
from ..errors import Rejected, TryLater
from ..photos.paths import inside
from ..photos.store import PhotoStore
from ..addons import registry_path
from ..addons.node_modules import bring_addon_needs
from ..addons.pipeline import event_for
from ..addons.python_api import discover
from ..addons.registry import DEFAULT_REGISTRY, Registry
from .filing import photo_store
from .original_folder import copy_folder, files_below, is_link, links_below, open_folder, read_no_link
from .service_user import ServiceUser, as_root, give_tree, make_folder_for, writing_as

#: What a replaced config.json of ours is renamed to (never deleted).
BEFORE_MIGRATION = ".before-migration"

#: What migrate reads in the original's folder: none of it may be a link.
READ = ("config.json", "photos", "addons")

#: Read too (the add-ons' modules and pages): these folders may not be
#: links; links inside them are copied as links or left out, never read.
READ_TOP_ONLY = ("node_modules", "public")

#: This server's own folders the add-ons' needs are copied into as root.
WRITTEN_AS_ROOT = ("node_modules", "public")

#: The note the original ships in its photos folder: no photo a phone sent.
ORIGINALS_NOTE = "README.md"


class MigrationError(Exception):
    """
    The migration cannot start; C{str(error)} is one line saying why.
    """


@dataclass
class MigrationReport:
    original: Path
    config_from: Path
    config_to: Path
    config_copied: bool = False  # False: ours already had these exact bytes
    config_kept_as: Optional[Path] = None  # where our previous config.json went
    role: str = "pc"
    filed: list[str] = field(default_factory=list)  # new in this server's store
    already_there: list[str] = field(default_factory=list)  # same bytes already stored
    not_filed: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (path, why): hidden files, the original's note
    copies_waiting: list[tuple[str, str]] = field(default_factory=list)  # (target, why)
    addons: list[str] = field(default_factory=list)  # add-on folders found in the original
    addons_to: Optional[Path] = None  # where they were copied; None: not taken over
    addons_kept_as: Optional[Path] = None  # where our previous addons folder went
    filed_into: list[str] = field(default_factory=list)  # the store's target folders, in order
    staged_for_addons: list[str] = field(default_factory=list)  # the server runs add-ons, then copies
    addon_needs: Any = None  # addons.node_modules.AddonNeeds: their Node.js modules and pages
    owner: Optional[ServiceUser] = None  # who the written files belong to; None: who ran it
    written: list[Path] = field(default_factory=list)  # what the chown hint names: this server's own

    def lines(self) -> list[str]:
        """
        What was done, for people: one line per fact, paths in full.
        """
        out = []
        if self.config_copied:
            out.append(f"Copied {self.config_from} to {self.config_to} unchanged.")
        else:
            out.append(f"{self.config_to} already holds {self.config_from} unchanged.")
        if self.config_kept_as is not None:
            out.append(f"The config.json that was there is kept as {self.config_kept_as}.")
        what = "queued for the paired PCs (relay)" if self.role == "relay" else "filed"
        out.append(f"Photos waiting in {self.original / 'photos'}: {len(self.filed)} {what}, "
                   f"{len(self.staged_for_addons)} staged for add-ons, "
                   f"{len(self.already_there)} already here, {len(self.not_filed)} not taken over.")
        if self.filed and self.filed_into:
            out.append(f"Filed into {', '.join(self.filed_into)}, as if just received.")
        for relative in self.filed:
            out.append(f"  {what}: {relative}")
        for relative in self.staged_for_addons:
            out.append(f"  staged for its add-ons: {relative}: the server runs them, then makes the "
                       f"copies, when it starts")
        for relative, why in self.not_filed:
            out.append(f"  not taken over: {relative}: {why}")
        for relative, why in self.ignored:
            out.append(f"  ignored ({why}): {relative}")
        for target, why in self.copies_waiting:
            out.append(f"  copy to {target} not made yet ({why}): the server retries it when it runs")
        if self.addons_to is not None:
            out.append(f"Add-ons ({', '.join(self.addons) or 'none'}): the original's addons "
                       f"folder is now {self.addons_to}, where this server runs them.")
        elif self.addons:
            out.append(f"Add-ons in {self.original / 'addons'} ({', '.join(self.addons)}) are not "
                       f"taken over: this server has other add-ons; run again with --replace to use "
                       f"the original's.")
        if self.addon_needs is not None and self.addons_to is not None:
            out += self.addon_needs.lines(self.addons_to.parent)
        if self.addons_kept_as is not None:
            out.append(f"The addons folder that was there is kept as {self.addons_kept_as}.")
        if self.owner is not None:
            out.append(f"Everything written here is owned by {self.owner.describe()}, the user the "
                       f"server runs as.")
        elif _is_root():
            folders = " ".join(str(p) for p in self.written)
            out.append(f"Everything written here is owned by root: if the server runs as another user, "
                       f"give it the files (e.g. chown -R medimage: {folders}) or run again with --user.")
        out.append("The original's files are left as they were: stop the original server for good "
                   "(rename its config.json) before starting this one.")
        return out


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def migrate(original: Path, config_path: Path, data_dir: Path, replace: bool = False,
            owner: Optional[ServiceUser] = None) -> MigrationReport:
    """
    Copy the original's config.json to C{config_path} and file the photos
    waiting in C{original/photos} into C{data_dir} as the server would.

    @param replace: when C{config_path} holds another config, keep it as
        C{config.json.before-migration} and go on; otherwise refuse.
    @param owner: run as root, the user whose files this server's are
        (written as that user); None: whoever runs it.
    @raise MigrationError: the migration cannot start (nothing was
        changed), or this server's data folder cannot be used.
    """
    original = original.expanduser().absolute()
    source = original / "config.json"
    _refuse_links(original)
    if not source.is_file():
        raise MigrationError(f"{original}: no config.json here; give the folder of the original "
                             f"MedImage server (the one holding config.json, photos and addons)")
    config_path = config_path.expanduser().absolute()
    data_dir = data_dir.expanduser().absolute()
    _refuse_own_folder(original, config_path, data_dir)
    _refuse_links_where_root_writes(config_path.parent)
    try:
        source_bytes = read_no_link(source)
        # Usable at its new place (relative paths there), before anything is touched.
        parse_config(load_config(source).raw, config_path)
    except ConfigError as e:
        raise MigrationError(f"the original's config cannot be used: {e}") from None
    except OSError as e:
        raise MigrationError(f"{source}: cannot read: {e.strerror}") from None
    report = MigrationReport(original=original, config_from=source, config_to=config_path, owner=owner)
    # The config's folder may be a shared one (/etc): the hint names only
    # what belongs to this server.
    report.written = [data_dir] if config_path.parent == data_dir else [data_dir, config_path,
                                                                         config_path.parent / "addons"]
    make_folder_for(owner, config_path.parent)
    make_folder_for(owner, data_dir)
    with writing_as(owner):
        try:
            _copy_config(source_bytes, config_path, replace, report)
        except OSError as e:
            who = f" as {owner.describe()}" if owner is not None else ""
            raise MigrationError(f"{config_path}: cannot write it{who}: {e.strerror}") from None
        config = load_config(config_path)
        report.role = config.role
        addons = original / "addons"
        if addons.is_dir():
            _copy_addons(addons, config_path.parent / "addons", replace, report)
            if report.addons_to is not None:
                # Their Node.js modules and pages, or they are made inactive.
                report.addon_needs = _bring_addon_needs(original, config_path.parent, owner)
        photos = original / "photos"
        if photos.is_dir():
            wants_addons = _addons_wanted(config) if config.role == "pc" else (lambda name: False)
            _take_over_photos(photos, _store_for(config, data_dir), wants_addons, report)
    return report


def _refuse_links(original: Path) -> None:
    """
    Stop, changing nothing, at the first link among what migrate reads
    (config.json, photos/, addons/ and all below): run as root, following
    one would take in whatever it points at (a root-only folder's files
    filed as photos any user can read).
    """
    found = [path for name in READ for path in links_below(original / name)]
    found += [original / name for name in READ_TOP_ONLY if is_link(original / name)]
    if found:
        raise MigrationError(f"{found[0]}: a link; migrate follows no links (it would take in whatever "
                             f"the link points at): put the real file or folder there, or remove "
                             f"the link, and run again. Nothing was changed.")


def _refuse_links_where_root_writes(parent_dir: Path) -> None:
    """
    Stop, changing nothing, if this server's own C{public} or
    C{node_modules} (where the add-ons' pages and modules are copied as
    root, then handed to the service user) is a link: the service user may
    write the folder holding them, and following such a link would write
    and hand over whatever it points at (a root-only folder).
    """
    for name in WRITTEN_AS_ROOT:
        path = parent_dir / name
        if is_link(path):
            raise MigrationError(f"{path}: a link; migrate writes there as root and follows no link: "
                                 f"remove the link (this server makes the folder itself) and run again. "
                                 f"Nothing was changed.")


def _bring_addon_needs(original: Path, parent_dir: Path, owner: Optional[ServiceUser]):
    """
    L{bring_addon_needs}, reading the original as root; what it writes in
    this server's own folder (the service user's) is then that user's.
    """
    with as_root():
        needs = bring_addon_needs(original, parent_dir)
        ours = owner is not None and parent_dir.stat().st_uid == owner.uid
        for folder in ("node_modules", "public"):
            if ours and (parent_dir / folder).is_dir():
                give_tree(owner, parent_dir / folder)
    return needs


def _refuse_own_folder(original: Path, config_path: Path, data_dir: Path) -> None:
    """
    The original's folder cannot be this server's too: renaming the
    original's config.json afterwards (the README's step 4, so the old
    server cannot start again) would leave this server unpaired, with no
    folder to copy to.
    """
    for what, ours in (("--data", data_dir), ("--config", config_path.parent)):
        try:
            same = ours.exists() and os.path.samefile(original, ours)
        except OSError:
            same = False
        if same:
            raise MigrationError(f"{original} is the original's folder and also this server's ({what}): give "
                                 f"this server a folder of its own (the service's: C:\\ProgramData\\medimage-tx on "
                                 f"Windows, /var/lib/medimage on Linux) and run again, "
                                 f"so that renaming the original's config.json cannot unpair it. Nothing was "
                                 f"changed.")


def _copy_config(source_bytes: bytes, config_path: Path, replace: bool, report: MigrationReport) -> None:
    if config_path.exists():
        ours = config_path.read_bytes()
        if ours == source_bytes:
            return
        if not replace and not _untouched_defaults(ours):
            raise MigrationError(f"{config_path} already exists with other settings; run again with "
                                 f"--replace to keep it as {config_path.name}{BEFORE_MIGRATION} and "
                                 f"use the original's")
        kept = config_path.with_name(config_path.name + BEFORE_MIGRATION)
        os.replace(config_path, kept)
        report.config_kept_as = kept
    config_path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomically(config_path, source_bytes)
    report.config_copied = True


def _untouched_defaults(config_bytes: bytes) -> bool:
    """
    Whether a config.json is what a first start wrote, never changed (no
    pairing, no folder): the README's install steps come before its
    migration steps, so that one is taken over without --replace.
    """
    try:
        return json.loads(config_bytes) == json.loads(json.dumps(DEFAULTS))
    except ValueError:
        return False


def _no_addons_yet(folder: Path) -> bool:
    """
    An addons folder as a first start leaves it: only an empty registry.
    """
    entries = list(folder.iterdir())
    if [p.name for p in entries] != ["config.json"]:
        return False
    try:
        return json.loads(entries[0].read_bytes()) == DEFAULT_REGISTRY
    except (OSError, ValueError):
        return False


def _copy_addons(source: Path, dest: Path, replace: bool, report: MigrationReport) -> None:
    """
    The original's add-ons (their folders and C{addons/config.json}) beside
    this server's config.json, where the add-on service reads them.
    """
    with as_root():
        report.addons = sorted(p.name for p in source.iterdir() if p.is_dir() and not is_link(p))
    if source.resolve() == dest.resolve():
        report.addons_to = dest
        return
    if dest.exists():
        if _same_tree(source, dest):
            report.addons_to = dest
            return
        fresh = _no_addons_yet(dest)
        if not replace and not fresh and any(dest.iterdir()):
            return  # ours stay; the report says so
        kept = dest.with_name(dest.name + BEFORE_MIGRATION)
        if fresh:
            shutil.rmtree(dest)
        elif any(dest.iterdir()):
            os.replace(dest, kept)
            report.addons_kept_as = kept
        else:
            dest.rmdir()
    try:
        with as_root():
            top = open_folder(source)
    except OSError as e:  # a link since the check (ELOOP), or gone
        report.not_filed.append(("addons", f"the addons folder itself: {e.strerror}: not followed"))
        return
    temp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".addons-", suffix=".tmp"))
    try:
        with as_root():  # the original's files may be root's alone
            for link in copy_folder(source, top, temp):
                report.not_filed.append((f"addons/{link}", "a link: not followed"))
            give_tree(report.owner, temp)
        os.replace(temp, dest)  # all of them or none
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    fsync_folder(dest.parent)
    report.addons_to = dest


def _same_tree(a: Path, b: Path) -> bool:
    files_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    files_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    return files_a == files_b and all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)


def _addons_wanted(config: Config) -> Callable[[str], bool]:
    """
    Whether a photo of this name has add-ons to run on this server (the
    add-on service's own test: active registry entries for its event, or
    a Python add-on handling it).
    """
    registry = Registry(registry_path(config.path))
    python_addons = discover()

    def wanted(name: str) -> bool:
        event = event_for(name)
        return bool(registry.active(event)) or any(a.handler(event) for a in python_addons)
    return wanted


def _store_for(config: Config, data_dir: Path) -> PhotoStore:
    try:
        return photo_store(config, data_dir)
    except ConfigError as e:
        raise MigrationError(str(e)) from None


def _take_over_photos(photos: Path, store: PhotoStore, wants_addons: Callable[[str], bool],
                      report: MigrationReport) -> None:
    if photos.resolve() == store.photos.resolve():
        return  # the original's folder is this server's own: nothing to move
    report.filed_into = [str(t) for t in store.backup_to] or [str(store.photos)]
    try:
        with as_root():
            top = open_folder(photos)
    except OSError as e:  # a link since the check (ELOOP), or gone
        report.not_filed.append((".", f"the photos folder itself: {e.strerror}: not followed"))
        return
    entries = files_below(photos, top)
    while True:
        with as_root():  # the original's folders and files may be root's alone
            entry = next(entries, None)
        if entry is None:
            return
        relative, source = entry
        if source is None:
            # Not a photo the original received: following it would file
            # whatever it points at (any file this user can read).
            report.not_filed.append((relative, "a link: not followed"))
            continue
        with source:
            _take_over(relative, source, store, wants_addons, report)


def _take_over(relative: str, source: BinaryIO, store: PhotoStore, wants_addons: Callable[[str], bool],
               report: MigrationReport) -> None:
    parts = tuple(relative.split("/"))
    if any(part.startswith(".") for part in parts):
        report.ignored.append((relative, "hidden file"))
        return
    if relative == ORIGINALS_NOTE:
        report.ignored.append((relative, "the original's note about this folder, no photo"))
        return
    try:
        inside(store.photos, relative)
        if wants_addons(parts[-1]):
            # Durable and marked as waiting for its add-ons: the server
            # runs them, then the copies, when it starts (its recovery).
            stored = store.stage(_copy_to_temp(source, store.temp), None, parts)
            if not stored.duplicate:
                report.staged_for_addons.append(stored.relative)
                return
        else:
            stored = store.store(_copy_to_temp(source, store.temp), None, parts)
    except (Rejected, TryLater, OSError) as e:
        report.not_filed.append((relative, str(e)))
        return
    (report.already_there if stored.duplicate else report.filed).append(stored.relative)
    report.copies_waiting.extend(stored.backup_failures)


def _copy_to_temp(source, temp_dir: Path) -> Path:
    fd, name = tempfile.mkstemp(dir=temp_dir, prefix="migrate-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(source, out, 1024 * 1024)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        try:
            os.unlink(name)
        except OSError:
            pass
        raise
    return Path(name)
