"""
What a server accepts: the checks between "the body arrived" and "store it"
(PROTOCOL.md A1).  Plain Python.
"""

from __future__ import annotations

from typing import Optional

from ..config import Config
from ..errors import Rejected
from ..identity import PAIRED_ID
from .naming import MappedName, map_upload_name
from .sniff import choose_type, describe
from .multipart import ReceivedFile

#: A1: what the relay answers an upload without a valid paired id.
RECONNECT = (
    "Error uploading file - Please reconnect your app. "
    "This photo carries no pairing with this server; pair the phone again."
)


def named_extension(filename: str) -> str:
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, extension = base.rpartition(".")
    return "." + extension.lower() if dot and stem else ""


def checked_extension(received: ReceivedFile, config: Config) -> str:
    """
    The extension of the allowed type this upload's content is.

    @raise Rejected: empty, or a type this server does not take.
    """
    if received.size == 0:
        raise Rejected("The uploaded file is empty")
    allowed = choose_type(
        received.head,
        has_nul=received.has_nul,
        named_extension=named_extension(received.filename),
        allowed_types=config.allowedTypes,
    )
    if allowed is None:
        raise Rejected(f"File type not allowed on this server: {describe(received.head)}")
    return allowed.extension


def _mapped(filename: str, config: Config, global_id: str) -> MappedName:
    return map_upload_name(
        filename,
        allowed_chars=config.allowedChars,
        extensions={".jpg", ".jpeg"} | {t.extension for t in config.allowedTypes},
        global_id=global_id,
    )


def accepted_parts(received: ReceivedFile, config: Config) -> tuple[str, ...]:
    """
    PC server: the path, relative to the photos folder, for this upload.
    """
    extension = checked_extension(received, config)
    return _mapped(received.filename, config, config.globalId).relative_parts(extension)


def relay_parts(filename: str, extension: str, config: Config) -> tuple[str, tuple[str, ...]]:
    """
    Relay: the paired id (the first C{#} folder) and the queue path
    C{<id>/<folders>/<name>} for an upload.

    @raise Rejected: with the text the apps show, when there is no valid id.
    """
    mapped = _mapped(filename, config, "")
    if not mapped.folders or not PAIRED_ID.fullmatch(mapped.folders[0]):
        raise Rejected(RECONNECT)
    return mapped.folders[0], mapped.relative_parts(extension)


def relay_check_path(filename: str, config: Config) -> Optional[str]:
    """
    Relay: the queue path that C{GET /check=<filename>} asks about, or
    L{None} if the name cannot be one the relay accepted.
    """
    extension = named_extension(filename)
    if extension in (".jpg", ".jpeg", ""):
        extension = ".jpg"
    try:
        return "/".join(relay_parts(filename, extension, config)[1])
    except Rejected:
        return None
