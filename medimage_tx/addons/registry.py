"""
The add-on registry: C{addons/config.json} beside config.json, in the
original's shape::

    {"events": {"photoWritten": [{"addon": "...", "runProcess": "...",
                                  "priority": "medium", "active": true}, ...],
                "fileWritten": [...],
                "urlRequest": [{"addon": "...", "scriptURLName": "...",
                                "runProcess": "...", "waitForRequestFinish": "page.html",
                                "active": true}, ...]}}

It is read again whenever the file changes, so an edit (by hand, or by an
add-on's installer) counts without a restart; a file that cannot be read
keeps the last good entries, as the original kept its last config.  Keys
this server does not know are kept when it writes the file.

Plain Python.
"""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from twisted.logger import Logger

from ..config import config_stamp, write_json_atomically

log = Logger()

EVENTS = ("photoWritten", "fileWritten", "urlRequest")
DEFAULT_REGISTRY: dict[str, dict[str, list]] = {"events": {event: [] for event in EVENTS}}

#: Seconds an add-on may run before it is stopped (per entry: "timeoutSeconds").
DEFAULT_TIMEOUT = 60.0


class RegistryError(Exception):
    pass


@dataclass(frozen=True)
class Entry:
    """
    One registered event handler.
    """

    event: str
    addon: str
    run_process: str
    priority: Optional[str]
    active: bool
    timeout: float
    use_target_folder_file: bool = False
    script_url_name: str = ""
    wait_for_request_finish: Optional[str] = None  # None: not given
    after_request: Optional[str] = None


def _entry(event: str, raw: Any) -> Optional[Entry]:
    if not isinstance(raw, dict):
        return None
    timeout = raw.get("timeoutSeconds", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        timeout = DEFAULT_TIMEOUT
    wait = raw.get("waitForRequestFinish")
    after = raw.get("afterRequest")
    return Entry(
        event=event,
        addon=str(raw.get("addon", "")),
        run_process=str(raw.get("runProcess") or ""),
        priority=raw.get("priority") if isinstance(raw.get("priority"), str) else None,
        active=raw.get("active") is True,
        timeout=float(timeout),
        use_target_folder_file=raw.get("useTargetFolderFile") is True,
        script_url_name=str(raw.get("scriptURLName") or ""),
        wait_for_request_finish=wait if isinstance(wait, str) else None,
        after_request=after if isinstance(after, str) and after else None,
    )


def parse_registry(raw: Any) -> dict[str, tuple[Entry, ...]]:
    """
    The entries of each event; malformed entries are skipped.
    """
    if not isinstance(raw, dict) or not isinstance(raw.get("events"), dict):
        raise RegistryError('expected {"events": {"photoWritten": [...], ...}}')
    events = raw["events"]
    parsed = {}
    for event in EVENTS:
        listed = events.get(event) or []
        if not isinstance(listed, list):
            raise RegistryError(f'"events.{event}" must be a list')
        parsed[event] = tuple(e for e in (_entry(event, item) for item in listed) if e is not None)
    return parsed


def read_registry_file(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise RegistryError(f"{path}: cannot read it: {e.strerror}") from None
    except ValueError as e:
        raise RegistryError(f"{path}: not valid JSON: {e}") from None
    parse_registry(raw)
    return raw


class Registry:
    """
    C{addons/config.json}, re-read when it changes.
    """

    def __init__(self, path: Path):
        self.path = path
        self._stamp: Optional[tuple[int, int]] = None
        self._bad_stamp: Optional[tuple[int, int]] = None
        self._entries: dict[str, tuple[Entry, ...]] = {event: () for event in EVENTS}
        self._lock = threading.Lock()

    def ensure_exists(self) -> bool:
        """
        Write the default (empty) registry if there is none.  Returns
        whether it was written.
        """
        if self.path.exists():
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(self.path, DEFAULT_REGISTRY)
        return True

    def entries(self, event: str) -> tuple[Entry, ...]:
        """
        The entries for C{event} as the file says now (every entry, active
        or not, in order).
        """
        with self._lock:
            stamp = config_stamp(self.path)
            if stamp is not None and stamp not in (self._stamp, self._bad_stamp):
                try:
                    self._entries = parse_registry(read_registry_file(self.path))
                    self._stamp = stamp
                except RegistryError as e:
                    self._bad_stamp = stamp
                    log.warn("The add-on registry cannot be used, keeping the add-ons as they were: "
                             "{error}", error=str(e))
            return self._entries[event]

    def active(self, event: str) -> list[Entry]:
        return [e for e in self.entries(event) if e.active and e.run_process.strip()]

    def url_entry(self, name: str) -> Optional[Entry]:
        """
        The active C{urlRequest} entry for C{/addon/<name>}.
        """
        for entry in self.active("urlRequest"):
            if entry.script_url_name and entry.script_url_name == name:
                return entry
        return None

    # Changes (the installer)

    def add(self, events: Mapping[str, Iterable[dict]]) -> None:
        """
        Append entries (skipping any that are already there, as the
        original's add-on installers do).
        """
        def change(raw):
            for event, items in events.items():
                listed = raw["events"].setdefault(event, [])
                for item in items:
                    if item not in listed:
                        listed.append(copy.deepcopy(item))
        self._change(change)

    def remove_where(self, predicate) -> int:
        """
        Remove every entry for which C{predicate(event, raw_entry)} holds;
        returns how many.
        """
        removed = 0

        def change(raw):
            nonlocal removed
            for event, listed in raw["events"].items():
                if isinstance(listed, list):
                    kept = [item for item in listed if not predicate(event, item)]
                    removed += len(listed) - len(kept)
                    raw["events"][event] = kept
        self._change(change)
        return removed

    def set_active_where(self, predicate, active: bool) -> int:
        """
        Set C{"active"} on every entry for which C{predicate(event,
        raw_entry)} holds and that is not so already; returns how many.
        """
        changed = 0

        def change(raw):
            nonlocal changed
            for event, listed in raw["events"].items():
                for item in listed if isinstance(listed, list) else ():
                    if isinstance(item, dict) and predicate(event, item) and item.get("active") is not active:
                        item["active"] = active
                        changed += 1
        self._change(change)
        return changed

    def snapshot(self) -> Optional[bytes]:
        try:
            return self.path.read_bytes()
        except OSError:
            return None

    def restore(self, saved: Optional[bytes]) -> None:
        if saved is None:
            return
        temp = self.path.with_name(self.path.name + ".restore")
        temp.write_bytes(saved)
        temp.replace(self.path)

    def _change(self, change) -> None:
        self.ensure_exists()
        raw = read_registry_file(self.path)
        change(raw)
        parse_registry(raw)
        write_json_atomically(self.path, raw)
