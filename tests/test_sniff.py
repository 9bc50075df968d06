"""
Type by content (PROTOCOL.md A1).
"""

from __future__ import annotations

import pytest

from medimage_tx.config import AllowedType
from medimage_tx.sniff import JPEG, choose_type

PDF = AllowedType(".pdf", "application/pdf")
MP4 = AllowedType(".mp4", "video/mp4")
MP3 = AllowedType(".mp3", "audio/mpeg")
M4A = AllowedType(".m4a", "audio/x-m4a")
HEIC = AllowedType(".heic", "image/heic")
CSV = AllowedType(".csv", "text/csv")
JSON = AllowedType(".json", "application/json")
EVERYTHING = (PDF, MP4, MP3, M4A, HEIC, CSV, JSON)


def ftyp(brand: bytes, *compatible: bytes) -> bytes:
    body = brand + b"\x00\x00\x00\x00" + b"".join(compatible)
    return (8 + len(body)).to_bytes(4, "big") + b"ftyp" + body + b"\x00\x00\x00\x08free"


SAMPLES = [
    (b"\xff\xd8\xff\xe1\x00\x10Exif", ".jpg", JPEG),
    (b"%PDF-1.4\n", ".pdf", PDF),
    (ftyp(b"isom", b"isom", b"iso2", b"avc1", b"mp41"), ".mp4", MP4),
    (ftyp(b"mp42", b"mp42", b"isom"), ".mov", MP4),
    (ftyp(b"M4A ", b"M4A ", b"mp42", b"isom"), ".m4a", M4A),
    (ftyp(b"heic", b"mif1", b"heic"), ".heic", HEIC),
    (ftyp(b"mif1", b"mif1", b"heic"), ".heif", HEIC),
    (b"ID3\x04\x00\x00\x00\x00\x00\x00", ".mp3", MP3),
    (b"\xff\xfb\x90\x64\x00", ".mp3", MP3),
    (b"name,dob\nJohn,1970\n", ".csv", CSV),
    (b'  \n{"patient": "John123"}', ".json", JSON),
]


@pytest.mark.parametrize("head, named, expected", SAMPLES)
def test_known_types(head, named, expected):
    assert choose_type(head, has_nul=False, named_extension=named, allowed_types=EVERYTHING) == expected


def test_jpeg_always_allowed():
    assert choose_type(b"\xff\xd8\xff\xdb", has_nul=False, named_extension=".jpg", allowed_types=()) == JPEG


@pytest.mark.parametrize("head, named", [
    (b"%PDF-1.4", ".jpg"),                # a PDF renamed, PDF not allowed
    (b"\x89PNG\r\n\x1a\n", ".jpg"),       # a PNG renamed
    (b"MZ\x90\x00", ".jpg"),              # an executable
    (b"name,dob\n", ".jpg"),              # text, not allowed as CSV
])
def test_rejected_when_only_jpeg_allowed(head, named):
    assert choose_type(head, has_nul=False, named_extension=named, allowed_types=()) is None


def test_text_rules():
    assert choose_type(b"[1, 2]", has_nul=False, named_extension=".json", allowed_types=EVERYTHING) is None
    assert choose_type(b"a,b\n", has_nul=True, named_extension=".csv", allowed_types=EVERYTHING) is None
    assert choose_type(b"\xc3\x28 bad utf-8 inside", has_nul=False, named_extension=".csv", allowed_types=EVERYTHING) is None
    # A multi-byte character cut at the end of the sniffed head is fine.
    assert choose_type(b"caf\xc3", has_nul=False, named_extension=".csv", allowed_types=EVERYTHING) == CSV


def test_binary_type_not_in_list_is_rejected_even_with_matching_name():
    assert choose_type(b"%PDF-1.4", has_nul=False, named_extension=".pdf", allowed_types=(MP4,)) is None
