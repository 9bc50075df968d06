"""
The Python add-on API: the same three events for code that runs inside
the server, found through the entry point group C{medimage_tx.addons}.

An entry point names an object (a module, a class instance...) with any of:

- C{photo_written(stored: StoredFile) -> Result | None}
- C{file_written(stored: StoredFile) -> Result | None}
- C{url_names}: the names it answers under C{/addon/<name>}, and
  C{url_request(request: UrlRequest) -> Page}

They run in a thread of their own, never on the server's event loop, with
the same time limit and failure rules as script add-ons (docs/addons.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from twisted.logger import Logger

if TYPE_CHECKING:
    from ..config import Config

GROUP = "medimage_tx.addons"

log = Logger()


@dataclass(frozen=True)
class StoredFile:
    """
    A photo or file that was just stored.

    @ivar path: the file in the staging photos folder.
    @ivar relative: its path below the photos folder (and each target).
    @ivar event: C{"photoWritten"} or C{"fileWritten"}.
    @ivar parent_dir: the folder holding config.json and C{addons/}.
    @ivar config: the server's current L{medimage_tx.config.Config}.
    """

    path: Path
    relative: str
    event: str
    photos: Path
    targets: tuple[Path, ...]
    parent_dir: Path
    config: Config


@dataclass
class Result:
    """
    What a Python add-on may ask for (as a script prints it).

    @ivar backup_files: more files in the photos folder to copy to every target.
    @ivar renamed: the photo now has this path (in the photos folder): copy it instead.
    @ivar reload_config: config.json was changed: load it again now.
    """

    backup_files: list[str] = field(default_factory=list)
    renamed: Optional[str] = None
    reload_config: bool = False


@dataclass(frozen=True)
class UrlRequest:
    """
    C{/addon/<name>?<query>}: C{query} decoded, C{raw_query} as sent.
    """

    name: str
    query: dict[str, str]
    raw_query: str
    method: str
    parent_dir: Path
    photos: Path
    pages: Path
    config: Config


@dataclass
class Page:
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    code: int = 200


@dataclass(frozen=True)
class PythonAddon:
    name: str
    target: object  # the add-on's module or object: its handlers are looked up by name

    def handler(self, event: str):
        method = {"photoWritten": "photo_written", "fileWritten": "file_written",
                  "urlRequest": "url_request"}[event]
        found = getattr(self.target, method, None)
        return found if callable(found) else None

    def url_names(self) -> tuple[str, ...]:
        return tuple(getattr(self.target, "url_names", ()) or ())


def discover() -> list[PythonAddon]:
    """
    Every installed Python add-on, in name order; one that cannot be
    loaded is logged and left out.
    """
    found = []
    for point in sorted(entry_points(group=GROUP), key=lambda p: p.name):
        try:
            found.append(PythonAddon(point.name, point.load()))
        except Exception:
            log.failure("The Python add-on {name} cannot be loaded; it is left out", name=point.name)
    return found
