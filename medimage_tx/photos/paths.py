"""
The one check every route that touches the disk goes through: a relative
path from a request (or a relay) must stay inside its folder.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from ..errors import Rejected


def inside(base: Path, relative: str) -> Path:
    """
    C{base / relative}, or L{Rejected} when C{relative} is absolute, has
    empty, C{.} or C{..} parts, a drive, a backslash or a NUL, or otherwise
    lands outside C{base}.
    """
    parts = PurePosixPath(relative).parts
    if (
        not parts
        or relative.startswith("/")
        or "\\" in relative
        or "\x00" in relative
        or ":" in relative
        or any(part in (".", "..") or part != part.strip() for part in parts)
        or relative != "/".join(parts)
    ):
        raise Rejected("Invalid file path")
    path = base.joinpath(*parts)
    if os.path.commonpath([os.path.normpath(base), os.path.normpath(path)]) != os.path.normpath(base):
        raise Rejected("Invalid file path")
    return path
