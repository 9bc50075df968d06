"""
The MedImage app's file names carry the routing (PROTOCOL.md A1):
C{#<id>-#NHID1234-arm-27-Nov-2026-10-11-12.jpg} means folder C{NHID1234},
file C{arm-27-Nov-2026-10-11-12.jpg}.  This module turns such a name into a
safe relative path.  Plain Python, no I/O.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

from ..errors import Rejected

DEFAULT_STEM = "image"

# Longest folder or stem we keep, in bytes; leaves room for a "-N" suffix and
# an extension under the 255-byte name limit.
MAX_COMPONENT = 200

# The app sends a pairing id, a patient id and a name or two as folders, in
# a name of well under 200 bytes.  Past these, a name is refused up front
# (finding 11: 1,300 folders made mkdir overflow Python's stack).
MAX_FOLDERS = 16
MAX_NAME_BYTES = 1024

# Names Windows will not create, with or without an extension.
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL"} | {
    f"{p}{n}" for p in ("COM", "LPT") for n in "123456789"
}

# Never allowed, whatever allowedChars says: they separate or end paths.
_NEVER = {"/", "\\", "\x00", ":"}


@dataclass(frozen=True)
class MappedName:
    """
    Where an upload goes, relative to the photos folder: C{folders} in
    order, then C{stem} plus the extension of the detected type.
    """

    folders: tuple[str, ...]
    stem: str

    def relative_parts(self, extension: str) -> tuple[str, ...]:
        return self.folders + (self.stem + extension,)


@lru_cache(maxsize=32)
def _dropper(allowed_chars: str) -> re.Pattern[str]:
    return re.compile(f"[^{allowed_chars}]")


def clean_text(text: str, allowed_chars: str) -> str:
    """
    Keep only the characters of C{allowed_chars} (a regex character class
    body) and remove every C{..}, until nothing more changes.
    """
    text = unicodedata.normalize("NFKC", text)
    drop = _dropper(allowed_chars)
    while True:
        cleaned = drop.sub("", text)
        cleaned = "".join(c for c in cleaned if c not in _NEVER)
        cleaned = cleaned.replace("..", "")
        if cleaned == text:
            return cleaned
        text = cleaned


def safe_component(word: str) -> str:
    """
    One folder or file-name stem made safe on every OS: no leading or
    trailing dots or spaces (hidden files, Windows trims them), not a
    reserved Windows device name, not too long.  May return C{""}.
    """
    # At most MAX_COMPONENT bytes: allowedChars may let in multi-byte letters.
    word = word.strip(". ").encode("utf-8")[:MAX_COMPONENT].decode("utf-8", "ignore").strip(". ")
    if word.split(".")[0].upper() in _WINDOWS_RESERVED:
        word = "_" + word
    return word


def strip_extension(name: str, extensions: Iterable[str]) -> str:
    """
    Remove the last extension of C{name} when it is one of C{extensions}
    (compared without case).
    """
    lower = name.lower()
    for extension in sorted(extensions, key=len, reverse=True):
        if extension and lower.endswith(extension.lower()):
            return name[: -len(extension)]
    return name


def map_upload_name(
    filename: str,
    *,
    allowed_chars: str,
    extensions: Iterable[str] = (".jpg", ".jpeg"),
    global_id: str = "",
) -> MappedName:
    """
    Map an uploaded file name to folders and a stem (PROTOCOL.md A1 steps
    1-4).  Words starting with C{#} are folders, in order; a folder equal to
    C{global_id} is dropped; the other words join with C{-} into the stem.
    """
    check_name_bounds(filename)
    name = strip_extension(filename, extensions)
    name = clean_text(name, allowed_chars)
    folders: list[str] = []
    words: list[str] = []
    for word in name.split("-"):
        if word.startswith("#"):
            folder = safe_component(word.lstrip("#"))
            if folder and folder != global_id:
                folders.append(folder)
        else:
            words.append(word)
    stem = safe_component("-".join(w for w in words if w)) or DEFAULT_STEM
    return MappedName(tuple(folders), stem)


def check_name_bounds(filename: str, separator: str = "#") -> None:
    """
    Refuse a name too long, or with too many folders, to be one an app sent.

    @param separator: what starts a folder (C{#} in an upload's name, C{/}
        in a relay's C{file-name} header).
    @raise Rejected: with the limit, in one line.
    """
    if len(filename.encode("utf-8", "replace")) > MAX_NAME_BYTES:
        raise Rejected(f"The file name is too long: the limit is {MAX_NAME_BYTES} bytes")
    if filename.count(separator) > MAX_FOLDERS:
        raise Rejected(f"The file name has too many folders: the limit is {MAX_FOLDERS}")


def with_suffix_number(stem: str, number: int) -> str:
    """
    The stem for the C{number}th different file under one name:
    C{arm}, C{arm-1}, C{arm-2}, ...
    """
    return stem if number == 0 else f"{stem}-{number}"
