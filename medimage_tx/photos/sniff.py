"""
File type by content, not by name (PROTOCOL.md A1).

The smallest table that is correct for what clinics send: JPEG (always
allowed), PDF, the ISO media family (MP4, M4A, HEIC/HEIF, MOV, 3GP), MP3 and
a few common image and audio formats.  Text types (CSV, JSON, plain text)
have no magic number, so they are checked by content rules instead.
Plain Python, no I/O.
"""

from __future__ import annotations

from typing import Iterable, Optional

from ..config import AllowedType

JPEG = AllowedType(".jpg", "image/jpeg")

#: How many leading bytes the sniffer needs.
HEAD_SIZE = 512

# ISO base media file format brands (the 'ftyp' box), by family.
_HEIC_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx"}
_HEIF_BRANDS = {b"mif1", b"msf1", b"heif"}
_M4A_BRANDS = {b"M4A ", b"M4B ", b"M4P "}
_3GP_PREFIXES = (b"3gp", b"3g2")

_HEIF_MIMES = frozenset({"image/heic", "image/heif", "image/heic-sequence", "image/heif-sequence"})
_M4A_MIMES = frozenset({"audio/mp4", "audio/x-m4a", "audio/m4a", "audio/aac"})
_MP4_MIMES = frozenset({"video/mp4", "video/x-m4v", "application/mp4"})


def _iso_media(head: bytes) -> Optional[frozenset[str]]:
    if head[4:8] != b"ftyp":
        return None
    major = head[8:12]
    # Compatible brands follow the minor version; look at the ones in view.
    box_end = min(int.from_bytes(head[0:4], "big"), len(head))
    brands = {major} | {head[i : i + 4] for i in range(16, box_end - 3, 4)}
    if major in _HEIC_BRANDS or major in _HEIF_BRANDS or major == b"avif":
        return frozenset({"image/avif"}) if major == b"avif" else _HEIF_MIMES
    if major in _M4A_BRANDS:
        return _M4A_MIMES
    if major == b"qt  ":
        return frozenset({"video/quicktime"})
    if major.startswith(_3GP_PREFIXES):
        return frozenset({"video/3gpp", "video/3gpp2", "audio/3gpp"})
    if brands & (_HEIC_BRANDS | _HEIF_BRANDS) and not brands & {b"isom", b"mp41", b"mp42"}:
        return _HEIF_MIMES
    return _MP4_MIMES


def _mp3(head: bytes) -> bool:
    if head.startswith(b"ID3"):
        return True
    # An MPEG audio frame header: 11 sync bits, then a layer that is not 0.
    return len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06 != 0


def detect_mimes(head: bytes) -> frozenset[str]:
    """
    The MIME types C{head} (the first L{HEAD_SIZE} bytes) may be, by magic
    number; empty when none is recognised.
    """
    if head.startswith(b"\xff\xd8\xff"):
        return frozenset({"image/jpeg", "image/jpg", "image/pjpeg"})
    if head.startswith(b"%PDF-"):
        return frozenset({"application/pdf"})
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return frozenset({"image/png"})
    if head.startswith((b"GIF87a", b"GIF89a")):
        return frozenset({"image/gif"})
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return frozenset({"image/webp"})
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return frozenset({"audio/wav", "audio/x-wav", "audio/wave"})
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return frozenset({"image/tiff"})
    if head.startswith(b"OggS"):
        return frozenset({"audio/ogg", "video/ogg", "application/ogg"})
    if head.startswith(b"PK\x03\x04"):
        return frozenset({"application/zip"})
    iso = _iso_media(head)
    if iso is not None:
        return iso
    if _mp3(head):
        return frozenset({"audio/mpeg", "audio/mp3"})
    return frozenset()


def _is_text_type(allowed: AllowedType) -> bool:
    return (
        allowed.mime.startswith("text/")
        or allowed.mime in ("application/json", "application/csv")
        or allowed.extension in (".csv", ".json", ".txt")
    )


def _looks_like_text(head: bytes, has_nul: bool) -> bool:
    if has_nul:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        # A multi-byte character may be cut at the end of the head.
        if e.start < len(head) - 3:
            return False
    return True


def choose_type(
    head: bytes,
    *,
    has_nul: bool,
    named_extension: str,
    allowed_types: Iterable[AllowedType],
) -> Optional[AllowedType]:
    """
    The allowed type this content is, or L{None} to reject it.

    @param head: the first bytes of the file (at least L{HEAD_SIZE} when
        the file is that long).
    @param has_nul: whether the whole file contains a NUL byte (no text does).
    @param named_extension: the extension of the uploaded name, lower case
        with its dot; only used for text types, which have no magic number.
    """
    allowed_types = tuple(allowed_types)
    mimes = detect_mimes(head)
    if "image/jpeg" in mimes:
        return JPEG
    if mimes:
        matching = [allowed for allowed in allowed_types if allowed.mime in mimes]
        # Several entries may share a type (.mp4 and .m4v are both video/mp4):
        # the one the phone named wins.
        for allowed in matching:
            if allowed.extension == named_extension:
                return allowed
        return matching[0] if matching else None
    for allowed in allowed_types:
        if allowed.extension != named_extension or not _is_text_type(allowed):
            continue
        if not _looks_like_text(head, has_nul):
            return None
        if allowed.extension == ".json" or allowed.mime == "application/json":
            return allowed if head.lstrip().startswith(b"{") else None
        return allowed
    return None


def describe(head: bytes) -> str:
    """
    A short name for what C{head} looks like, for rejection messages.
    """
    mimes = detect_mimes(head)
    return sorted(mimes)[0] if mimes else "unrecognised content"
