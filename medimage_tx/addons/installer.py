"""
Installing and removing add-ons the way the original's add-on installer
does (C{addons/addon-installer/install-addon.js}): a C{.zip} with a
C{medimage-installer.json} is unpacked into C{addons/<name>} (its files may
sit one or two folders deep in the zip), its C{installCommands} for this
platform run in that folder (C{all} first, then C{win32}/C{win64}/C{unix}/
C{mac}; each a command line, or C{{"attempt": ..., "timeoutAfterSeconds":
..., "warnOnTimeout": ...}} whose failure is only a warning), and its events
are registered.  Removing runs C{uninstallCommands} and deletes the folder
and the add-on's registry entries.

What differs: an install either completes or leaves nothing behind (the
folder, a replaced older version and the registry are put back); the zip
is checked before anything is unpacked (no paths outside the folder, no
links, bounded size); commands run as the server's user (the original
could prefix C{sudo} with a typed password: never here); and
C{medimage-installer.json} may list C{"events"} to register, beside
install commands that edit C{addons/config.json} themselves as the
original's add-ons do.

Plain blocking Python (the server runs it in a thread).
"""

from __future__ import annotations

import json
import os
import platform
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Optional

from .public import ensure_standard_files
from .registry import EVENTS, Registry, RegistryError

if TYPE_CHECKING:
    from ..config import Config

DESCRIPTOR = "medimage-installer.json"
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
#: How long one install command may run (past it the command is stopped and
#: the install rolled back): long enough for an C{npm install} over a
#: clinic's slow line, which 40 s (the stored version of the original's
#: installer add-on) is not.  An C{"attempt"} may set its own.
COMMAND_TIMEOUT = 400.0
#: How often a running command's clock is looked at.
POLL_SECONDS = 0.25
#: Where a clinic gets Node.js, for add-ons written for it (the original's are).
NODE_DOWNLOAD = "https://nodejs.org/en/download"
#: Words that start a command needing Node.js.
NODE_COMMANDS = ("node", "nodejs", "npm", "npx")
#: The files under C{public/} an install may change that are kept to be put
#: back if it fails, at most (past it, new files are still removed).
PUBLIC_SNAPSHOT_BYTES = 64 * 1024 * 1024
#: An add-on downloaded from an address (C{zipfileURL}, or C{medimage-tx
#: addon install https://...}): at most this many bytes, and all of it,
#: headers included, within this many seconds; the server sending it is
#: not trusted to end or to hurry (docs/addons.md).
DOWNLOAD_MAX_BYTES = 100 * 1024 * 1024
DOWNLOAD_SECONDS = 300.0
MAX_UNPACKED_BYTES = 1024 * 1024 * 1024
MAX_ENTRIES = 20000
#: Output of a failed command quoted in the answer, at most.
QUOTED = 500


class InstallError(Exception):
    """
    The install or removal did not happen; the message says why, in one line.
    """


class LockedDown(InstallError):
    def __init__(self):
        super().__init__("Add-ons cannot be installed or removed: lockDown is on in config.json")


@dataclass
class InstallReport:
    name: str
    message: str
    version: str = ""
    warnings: list[str] = field(default_factory=list)


def platform_name(system: Optional[str] = None, machine: Optional[str] = None) -> str:
    """
    The original's platform names: win32, win64, mac, unix (Linux and the rest).
    """
    system = system or platform.system()
    if system == "Windows":
        return "win64" if (machine or platform.machine()).endswith("64") else "win32"
    return "mac" if system == "Darwin" else "unix"


def check_lockdown(config: Config) -> None:
    if config.lockDown:
        raise LockedDown()


# Unpacking


def _safe_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    members = archive.infolist()
    if len(members) > MAX_ENTRIES:
        raise InstallError(f"The zip has more than {MAX_ENTRIES} files")
    total = 0
    for member in members:
        name = member.filename
        parts = PurePosixPath(name).parts
        if (name.startswith(("/", "\\")) or "\\" in name or ":" in name or "\x00" in name
                or any(p in ("..", ".") for p in parts)):
            raise InstallError(f"The zip has a file outside its folder: {name!r}")
        if (member.external_attr >> 16) & 0o170000 == 0o120000:
            raise InstallError(f"The zip has a link, which add-ons may not contain: {name!r}")
        total += member.file_size
        if total > MAX_UNPACKED_BYTES:
            raise InstallError("The zip unpacks to more than 1 GiB")
    return members


def unpack(zip_path: Path, into: Path) -> Path:
    """
    Unpack C{zip_path} into the new folder C{into}; returns the folder
    that holds the add-on (C{into}, or the single folder one or two levels
    down, as the original looks for it).
    """
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = _safe_members(archive)
            into.mkdir(parents=True)
            for member in members:
                archive.extract(member, into)
                if not member.is_dir():
                    mode = (member.external_attr >> 16) & 0o777
                    if mode:
                        os.chmod(into / member.filename, mode | 0o600)
    except zipfile.BadZipFile:
        raise InstallError("This is not a zip file") from None
    root = into
    for _ in range(2):
        visible = [p for p in root.iterdir() if not p.name.startswith(".")]
        if len(visible) == 1 and visible[0].is_dir():
            root = visible[0]
        else:
            break
    return root


def read_descriptor(folder: Path) -> dict[str, Any]:
    path = folder / DESCRIPTOR
    try:
        descriptor = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InstallError(f"No installer script was found ({DESCRIPTOR})") from None
    except (OSError, ValueError) as e:
        raise InstallError(f"There is a problem in {DESCRIPTOR}: {e}") from None
    if not isinstance(descriptor, dict):
        raise InstallError(f"There is a problem in {DESCRIPTOR}: expected an object")
    return descriptor


def addon_name(descriptor: dict[str, Any]) -> str:
    name = descriptor.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InstallError(f"{DESCRIPTOR} must give a \"name\": lower case letters, digits, '.', "
                           f"'_' or '-' (got {name!r})")
    return name


# Commands


def node_missing_message() -> str:
    return (f"This add-on needs Node.js, which is not installed on this PC: install it from "
            f"{NODE_DOWNLOAD}, then install the add-on again")


def have_node() -> bool:
    return shutil.which("node") is not None or shutil.which("nodejs") is not None


def needs_node(descriptor: dict[str, Any], events: dict[str, list[dict]]) -> bool:
    """
    Whether the add-on's install commands or its events run Node.js (or
    npm, which comes with it).
    """
    lines = []
    for key in ("installCommands", "uninstallCommands"):
        groups = descriptor.get(key)
        if isinstance(groups, dict):
            for items in groups.values():
                for item in items if isinstance(items, list) else ():
                    lines.append(item.get("attempt", "") if isinstance(item, dict) else item)
    for items in events.values():
        lines += [item.get("runProcess", "") for item in items]
    return any(isinstance(line, str) and line.split()[:1] and line.split()[0].lower() in NODE_COMMANDS
               for line in lines)


def _argv(command: str) -> list[str]:
    words = command.split()
    found = shutil.which(words[0])
    if found is None and words[0] == "node":
        found = shutil.which("nodejs")
    if found is None:
        if words[0].lower() in NODE_COMMANDS:
            raise InstallError(node_missing_message())
        raise InstallError(f"The installation was not complete: {words[0]} is not installed "
                           f"(needed by \"{command}\")")
    argv = [found] + words[1:]
    nice = shutil.which("nice")
    if os.name != "nt" and nice:
        argv = [nice, "-n", "10"] + argv  # the original ran installers at low priority
    return argv


def _run(command: str, cwd: Path, timeout: float, env: dict[str, str],
         clock=time.monotonic) -> tuple[Optional[int], str]:
    """
    Run one command line (no shell); returns (exit status or None when
    it ran past C{timeout} seconds of C{clock}, its output).
    """
    process = subprocess.Popen(_argv(command), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=(os.name != "nt"))
    deadline = clock() + timeout
    while True:
        try:
            # communicate() may be called again after a timeout without
            # losing output; the clock is looked at between calls.
            output, _ = process.communicate(timeout=POLL_SECONDS)
            return process.returncode, output.decode("utf-8", "replace")
        except subprocess.TimeoutExpired:
            if clock() < deadline:
                continue
        if os.name != "nt":
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except OSError:
                pass
        else:
            process.kill()
        output, _ = process.communicate()
        return None, output.decode("utf-8", "replace")


def run_commands(descriptor: dict[str, Any], key: str, cwd: Path, env: dict[str, str],
                 platform_: Optional[str] = None, clock=time.monotonic) -> list[str]:
    """
    Run C{descriptor[key]} (C{all}, then this platform's); returns the
    warnings.  @raise InstallError: a command failed.
    """
    groups = descriptor.get(key) or {}
    if not isinstance(groups, dict):
        raise InstallError(f"\"{key}\" in {DESCRIPTOR} must be an object")
    warnings = []
    for group in ("all", platform_ or platform_name()):
        for item in groups.get(group) or []:
            attempt = isinstance(item, dict)
            command = item.get("attempt", "") if attempt else item
            if not isinstance(command, str) or not command.strip():
                continue
            timeout = COMMAND_TIMEOUT
            if attempt and isinstance(item.get("timeoutAfterSeconds"), (int, float)):
                timeout = float(item["timeoutAfterSeconds"])
            code, output = _run(command, cwd, timeout, env, clock)
            if code == 0:
                continue
            what = f"timed out after {timeout:g} s" if code is None else f"failed (exit status {code})"
            tail = " ".join(output.split())[-QUOTED:]
            if attempt:
                warning = item.get("warnOnTimeout") if code is None and item.get("warnOnTimeout") \
                    else f"\"{command}\" {what}: {tail}"
                warnings.append(str(warning))
            else:
                raise InstallError(f"The installation was not complete: \"{command}\" {what}. {tail}")
    return warnings


# What an install may change beside its own folder


class FolderSnapshot:
    """
    The files under C{root} before an install's commands run (the
    original's add-ons copy their pages into C{public/pages} and may edit
    C{public/components/header.html}), to put them back if the install
    fails: files it added are removed, files it changed or removed are
    restored (while they add up to at most C{max_bytes}).
    """

    def __init__(self, root: Path, keep: Path, max_bytes: int = PUBLIC_SNAPSHOT_BYTES):
        self.root = root
        self.keep = keep
        self.files: dict[str, tuple[int, int]] = {}
        self.folders: set[str] = set()
        self.kept = True
        if not root.is_dir():
            return
        total = 0
        for relative, path in self._walk():
            if path.is_dir() and not path.is_symlink():
                self.folders.add(relative)
                continue
            stat = path.lstat()
            self.files[relative] = (stat.st_size, stat.st_mtime_ns)
            total += stat.st_size
        self.kept = total <= max_bytes
        if self.kept:
            for relative in self.files:
                copy = keep / relative
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self.root / relative, copy, follow_symlinks=False)

    def _walk(self):
        for folder, dirs, files in os.walk(self.root):
            base = Path(folder)
            for name in dirs + files:
                path = base / name
                yield path.relative_to(self.root).as_posix(), path

    def restore(self) -> None:
        if not self.root.is_dir():
            return
        added_folders = []
        for relative, path in list(self._walk()):
            if path.is_dir() and not path.is_symlink():
                if relative not in self.folders:
                    added_folders.append(path)
                continue
            if relative not in self.files:
                path.unlink()
            elif self.kept:
                stat = path.lstat()
                if (stat.st_size, stat.st_mtime_ns) != self.files[relative]:
                    path.unlink()
                    shutil.copy2(self.keep / relative, path, follow_symlinks=False)
        if self.kept:
            for relative in self.files:
                if not os.path.lexists(self.root / relative):
                    (self.root / relative).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(self.keep / relative, self.root / relative, follow_symlinks=False)
        for folder in sorted(added_folders, key=lambda p: len(p.parts), reverse=True):
            try:
                folder.rmdir()
            except OSError:
                pass


# Install, remove, list


def _environment(parent_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["MEDIMAGE_PARENT_DIR"] = str(parent_dir)
    env["MEDIMAGE_CONFIG"] = str(parent_dir / "config.json")
    return env


#: One install or removal at a time in this process (each changes the
#: registry, the pages and C{addons/} as a whole).
_changing = threading.Lock()


def install(zip_path: Path, parent_dir: Path, registry: Registry, config: Config,
            clock=time.monotonic) -> InstallReport:
    """
    Install the add-on in C{zip_path} into C{parent_dir/addons}.
    @param clock: seconds, for the commands' time limits.
    @raise InstallError: nothing was installed (and nothing left behind).
    """
    check_lockdown(config)
    with _changing:
        # Install scripts edit the standard header and settings page: they
        # must be there (they are the server's own, so kept whatever happens
        # next), before the install's snapshot of public/ is taken.
        ensure_standard_files(parent_dir)
        return _install(zip_path, parent_dir, registry, clock)


def _install(zip_path: Path, parent_dir: Path, registry: Registry, clock) -> InstallReport:
    addons = parent_dir / "addons"
    work = addons / f".installing-{secrets.token_hex(4)}"
    replaced: Optional[Path] = None
    saved_registry = registry.snapshot()
    dest: Optional[Path] = None
    pages: Optional[FolderSnapshot] = None
    addons_before: set[str] = set()
    created = installed = False
    try:
        root = unpack(zip_path, work / "unpacked")
        descriptor = read_descriptor(root)
        name = addon_name(descriptor)
        events = _descriptor_events(descriptor)
        if needs_node(descriptor, events) and not have_node():
            raise InstallError(node_missing_message())
        dest = addons / name
        addons_before = {p.name for p in addons.iterdir()}
        pages = FolderSnapshot(parent_dir / "public", work / "public-before")
        if dest.exists():
            replaced = work / "replaced"
            dest.rename(replaced)
        root.rename(dest)
        created = True
        warnings = run_commands(descriptor, "installCommands", dest, _environment(parent_dir),
                                clock=clock)
        if events:
            registry.add(events)
        installed = True
    except RegistryError as e:
        raise InstallError(f"The add-on registry cannot be changed: {e}") from None
    except OSError as e:
        raise InstallError(f"The installation was not complete: {e}") from None
    finally:
        if not installed:
            if created and dest is not None:  # (dest is set before anything is created)
                shutil.rmtree(dest, ignore_errors=True)
            if replaced is not None and dest is not None and replaced.exists():
                replaced.rename(dest)
            registry.restore(saved_registry)
            if pages is not None:
                pages.restore()
            _remove_added(addons, addons_before, work)
        shutil.rmtree(work, ignore_errors=True)
    message = _message(descriptor, "The installation was completed successfully!")
    return InstallReport(name, message, str(descriptor.get("version", "")), warnings)


def _remove_added(addons: Path, before: set[str], work: Path) -> None:
    """
    What a failed install's commands left in C{addons/} beside its own
    folder (the original's installers write there, e.g. C{../notes.txt}).
    """
    if not before:
        return
    for path in addons.iterdir():
        if path.name in before or path == work:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                path.unlink()
            except OSError:
                pass


def _descriptor_events(descriptor: dict[str, Any]) -> dict[str, list[dict]]:
    events = descriptor.get("events") or {}
    if not isinstance(events, dict) or any(
            e not in EVENTS or not isinstance(v, list) or not all(isinstance(i, dict) for i in v)
            for e, v in events.items()):
        raise InstallError(f"\"events\" in {DESCRIPTOR} must map photoWritten, fileWritten or "
                           "urlRequest to lists of entries")
    return events


def _message(descriptor: dict[str, Any], default: str) -> str:
    messages = descriptor.get("successMessages")
    main = default
    if isinstance(messages, dict):
        for group in ("all", platform_name()):
            found = messages.get(group)
            if isinstance(found, dict) and isinstance(found.get("main"), str):
                main = found["main"]
    return main


def _belongs_to(name: str, events: dict[str, list[dict]]):
    """
    Whether a registry entry is the add-on C{name}'s: listed in its
    descriptor, named C{name} in any case (the original's add-ons register
    C{"addon": "Resize"} from a folder C{resize}), or running a file in its
    folder.
    """
    marker = re.compile(r"(^|[\s/\\])addons[/\\]" + re.escape(name) + r"[/\\]", re.IGNORECASE)

    def test(event: str, item: Any) -> bool:
        if not isinstance(item, dict):
            return False
        return (item in events.get(event, []) or str(item.get("addon", "")).lower() == name.lower()
                or bool(marker.search(str(item.get("runProcess", "")))))
    return test


def _folder_named(addons: Path, name: str) -> Optional[Path]:
    """
    The add-on folder called C{name}, in any case.
    """
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    exact = addons / name
    if exact.is_dir():
        return exact
    if addons.is_dir():
        for folder in addons.iterdir():
            if folder.is_dir() and folder.name.lower() == name.lower():
                return folder
    return None


def uninstall(name: str, parent_dir: Path, registry: Registry, config: Config) -> InstallReport:
    """
    Remove the add-on C{name} (as C{addon list} shows it, in any case):
    its uninstall commands, its registry entries (those its descriptor
    lists, those named C{name}, and any that run a file in its folder),
    its folder.  An add-on only in the registry loses its entries.
    """
    check_lockdown(config)
    with _changing:
        return _uninstall(name, parent_dir, registry)


def _uninstall(name: str, parent_dir: Path, registry: Registry) -> InstallReport:
    addons = parent_dir / "addons"
    folder = _folder_named(addons, name or "")
    descriptor: dict[str, Any] = {}
    warnings: list[str] = []
    if folder is not None:
        name = folder.name
        descriptor = read_descriptor(folder) if (folder / DESCRIPTOR).exists() else {}
    events = _descriptor_events(descriptor)
    belongs = _belongs_to(name or "", events)
    if folder is None and not any(belongs(event, dict(_raw(entry)))
                                  for event in EVENTS for entry in registry.entries(event)):
        raise InstallError(f"There is no add-on called {name!r} in {addons}")
    if folder is not None:
        warnings = run_commands(descriptor, "uninstallCommands", folder, _environment(parent_dir))
    try:
        registry.remove_where(belongs)
    except RegistryError as e:
        raise InstallError(f"The add-on registry cannot be changed: {e}") from None
    if folder is not None:
        shutil.rmtree(folder)
    return InstallReport(name, "The uninstallation was completed successfully!",
                         str(descriptor.get("version", "")), warnings)


def _raw(entry) -> dict[str, Any]:
    return {"addon": entry.addon, "runProcess": entry.run_process}


def list_addons(parent_dir: Path, registry: Registry, python_addons=()) -> list[dict[str, Any]]:
    """
    The installed add-ons: each folder of C{addons/} with a descriptor,
    each name in the registry (with the folder of the same name in any
    case, or the folder whose files it runs), each Python add-on.
    """
    found: dict[str, dict[str, Any]] = {}
    addons = parent_dir / "addons"
    folders: list[str] = []
    if addons.is_dir():
        for folder in sorted(addons.iterdir()):
            if folder.is_dir() and not folder.name.startswith(".") and (folder / DESCRIPTOR).exists():
                try:
                    descriptor = read_descriptor(folder)
                except InstallError:
                    descriptor = {}
                folders.append(folder.name)
                found[folder.name.lower()] = {"name": folder.name, "kind": "folder",
                                              "version": str(descriptor.get("version", "")),
                                              "description": str(descriptor.get("description", "")),
                                              "events": []}
    for event in EVENTS:
        for entry in registry.entries(event):
            key = _listed_under(entry, folders) or entry.addon or "(unnamed)"
            item = found.setdefault(key.lower(), {"name": key, "kind": "registry", "version": "",
                                                  "description": "", "events": []})
            item["events"].append({"event": event, "active": entry.active,
                                   "runProcess": entry.run_process,
                                   **({"scriptURLName": entry.script_url_name}
                                      if event == "urlRequest" else {})})
    for addon in python_addons:
        found.setdefault(addon.name.lower(), {"name": addon.name, "kind": "python", "version": "",
                                              "description": "", "events": [
                                                  {"event": e, "active": True} for e in EVENTS
                                                  if addon.handler(e)]})
    return list(found.values())


def _listed_under(entry, folders: list[str]) -> Optional[str]:
    """
    The add-on folder a registry entry belongs to, if any.
    """
    for folder in folders:
        if _belongs_to(folder, {})(entry.event, _raw(entry)):
            return folder
    return None
