"""
What a PC server accepts: the checks between "the body arrived" and "store
it" (PROTOCOL.md A1).  Plain Python.
"""

from __future__ import annotations

from .config import Config
from .errors import Rejected
from .naming import map_upload_name
from .sniff import choose_type, describe
from .upload import ReceivedFile


def named_extension(filename: str) -> str:
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, extension = base.rpartition(".")
    return "." + extension.lower() if dot and stem else ""


def accepted_parts(received: ReceivedFile, config: Config) -> tuple[str, ...]:
    """
    The path, relative to the photos folder, where this upload goes.

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
    extensions = {".jpg", ".jpeg"} | {t.extension for t in config.allowedTypes}
    mapped = map_upload_name(
        received.filename,
        allowed_chars=config.allowedChars,
        extensions=extensions,
        global_id=config.globalId,
    )
    return mapped.relative_parts(allowed.extension)
