"""
Add-ons (docs/addons.md): the original MedImage server's add-ons, unchanged
(C{addons/config.json} with its photoWritten, fileWritten and urlRequest
events, run as processes), their installer, and Python add-ons found
through the C{medimage_tx.addons} entry point group.

- L{registry}: C{addons/config.json};
- L{command}, L{output}: how a C{runProcess} line is started and what an
  add-on may print (plain Python);
- L{runner}: one add-on process, its output and its time limit;
- L{pipeline}: the service that runs photoWritten/fileWritten before the copies;
- L{web}: C{/addon/...} (urlRequest, install and remove);
- L{installer}: install from a C{.zip}, remove, list;
- L{public}: the original's C{public/} folder: the standard pages add-ons
  expect, their menu entries, their files served;
- L{python_api}: the API for Python add-ons.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from twisted.logger import Logger

from .pipeline import AddonService
from .public import ensure_standard_files
from .registry import Registry
from .python_api import discover

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from ..state import ServerState

log = Logger()


def registry_path(config_path: Path) -> Path:
    return config_path.parent / "addons" / "config.json"


def make_addon_service(state: ServerState, reactor: Any, clock: Optional[IReactorTime] = None) -> AddonService:
    """
    The add-on service of a clinic PC server.
    """
    registry = Registry(registry_path(state.config.path))
    try:
        if registry.ensure_exists():
            log.info("No add-on registry found: wrote an empty one to {path}", path=registry.path)
    except OSError as e:
        log.warn("Cannot create the add-on registry {path}: {reason}; no add-ons run until it "
                 "exists", path=registry.path, reason=e.strerror)
    try:
        written = ensure_standard_files(state.config.path.parent)
        if written:
            log.info("Wrote the standard add-on pages add-ons expect: {files}", files=", ".join(written))
    except OSError as e:
        log.warn("Cannot write the standard add-on pages (public/...): {reason}; add-ons that edit "
                 "them will not install", reason=e.strerror)
    return AddonService(state, reactor, registry, discover(), clock=clock)
