"""
What an add-on may print, read the way the original server reads it (each
marker's last occurrence wins):

- C{backupFiles:a;b} - more files to copy to every target folder;
- C{backupFileRenamed:p} - the add-on renamed the photo: copy C{p} instead;
- C{reloadConfig:true} - config.json changed: load it again now;
- C{returnParams:?K=V&...} - values for the page a C{urlRequest} shows;
- C{returnPhotoFile:p} - a C{urlRequest} answers with this file.

C{backupFiles} and C{backupFileRenamed} run to the end of their line (the
original ran to C{returnParams:} or the end of the output); the page
values run to the end of the output, as in the original.

Plain Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional
from urllib.parse import unquote_plus

BACKUP_FILES = "backupFiles:"
BACKUP_FILE_RENAMED = "backupFileRenamed:"
RELOAD_CONFIG = "reloadConfig:true"
RETURN_PARAMS = "returnParams:"
RETURN_PHOTO_FILE = "returnPhotoFile:"


@dataclass
class AddonOutput:
    backup_files: list[str] = field(default_factory=list)
    renamed: Optional[str] = None
    reload_config: bool = False
    return_params: Optional[dict[str, str]] = None
    return_photo_file: Optional[str] = None


def _line_after(text: str, marker: str) -> Optional[str]:
    at = text.rfind(marker)
    if at < 0:
        return None
    return text[at + len(marker):].split("\n", 1)[0].strip()


def _rest_after(text: str, marker: str) -> Optional[str]:
    at = text.rfind(marker)
    if at < 0:
        return None
    rest = text[at + len(marker):]
    if rest.startswith("?"):
        rest = rest[1:]
    return rest.strip()


def parse_query(query: str) -> dict[str, str]:
    """
    C{K=V&K2=V2} decoded as Node's C{querystring.parse} does (C{+} is a
    space, bad escapes stay as they are); a repeated key keeps its values
    joined with commas.
    """
    values: dict[str, list[str]] = {}
    for piece in query.split("&"):
        if not piece:
            continue
        key, _, value = piece.partition("=")
        values.setdefault(unquote_plus(key), []).append(unquote_plus(value))
    return {k: ",".join(v) for k, v in values.items()}


def parse_output(stdout: str) -> AddonOutput:
    """
    The markers in an add-on's standard output.
    """
    out = AddonOutput()
    files = _line_after(stdout, BACKUP_FILES)
    if files:
        out.backup_files = [f.strip() for f in files.split(";") if f.strip()]
    out.renamed = _line_after(stdout, BACKUP_FILE_RENAMED) or None
    out.reload_config = RELOAD_CONFIG in stdout
    params = _rest_after(stdout, RETURN_PARAMS)
    if params is not None:
        out.return_params = parse_query(params)
    out.return_photo_file = _rest_after(stdout, RETURN_PHOTO_FILE) or None
    return out
