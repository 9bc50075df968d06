"""
Type by content (PROTOCOL.md A1).
"""

from __future__ import annotations

import pytest

from medimage_tx.config import AllowedType
from medimage_tx.photos.sniff import JPEG, choose_type

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


# Edges of the rules, one family each (found by `make mutate`).


def test_iso_media_families_by_brand():
    from medimage_tx.photos.sniff import detect_mimes

    assert detect_mimes(ftyp(b"avif", b"avif", b"mif1")) == {"image/avif"}
    assert detect_mimes(ftyp(b"qt  ", b"qt  ")) == {"video/quicktime"}
    assert "video/3gpp" in detect_mimes(ftyp(b"3gp4", b"isom"))
    assert "video/3gpp2" in detect_mimes(ftyp(b"3g2a", b"isom"))
    assert "audio/mp4" in detect_mimes(ftyp(b"M4B ", b"isom"))
    assert "image/heif" in detect_mimes(ftyp(b"msf1", b"isom"))
    # A HEIF brand among the compatible ones makes it HEIF, unless it is also an MP4.
    assert "image/heic" in detect_mimes(ftyp(b"abcd", b"abcd", b"heic"))
    assert detect_mimes(ftyp(b"abcd", b"heic", b"mp42")) == {"video/mp4", "video/x-m4v", "application/mp4"}
    # Only the brands inside the ftyp box count, not bytes after it.
    short = (16).to_bytes(4, "big") + b"ftypabcd\x00\x00\x00\x00heicheic"
    assert "image/heic" not in detect_mimes(short)
    assert detect_mimes(b"\x00\x00\x00\x10fty" + b"p" * 0) == frozenset()


def test_other_magic_numbers():
    from medimage_tx.photos.sniff import describe, detect_mimes

    assert detect_mimes(b"GIF87a...") == {"image/gif"} and detect_mimes(b"GIF89a...") == {"image/gif"}
    assert detect_mimes(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == {"image/webp"}
    assert "audio/wav" in detect_mimes(b"RIFF\x00\x00\x00\x00WAVEfmt ")
    assert detect_mimes(b"RIFF\x00\x00\x00\x00AVI LIST") == frozenset()
    assert detect_mimes(b"II*\x00") == detect_mimes(b"MM\x00*") == {"image/tiff"}
    assert "audio/ogg" in detect_mimes(b"OggS\x00")
    assert detect_mimes(b"PK\x03\x04") == {"application/zip"}
    assert describe(b"\x89PNG\r\n\x1a\n") == "image/png" and describe(b"??") == "unrecognised content"


@pytest.mark.parametrize("head, is_mp3", [
    (b"\xff\xfb", True), (b"\xff\xf3\x90", True), (b"\xff", False), (b"\xfe\xfb", False),
    (b"\xff\xe0", False), (b"\xff\x1b", False), (b"ID3", True), (b"", False),
])
def test_mp3_frame_sync(head, is_mp3):
    from medimage_tx.photos.sniff import detect_mimes

    assert ("audio/mpeg" in detect_mimes(head)) is is_mp3


@pytest.mark.parametrize("allowed", [
    AllowedType(".txt", "text/plain"), AllowedType(".tab", "application/csv"),
    AllowedType(".csv", "application/octet-stream"), AllowedType(".json", "application/octet-stream"),
])
def test_text_types_by_mime_or_extension(allowed):
    content = b'{"a": 1}' if allowed.extension == ".json" else b"a\tb\n"
    assert choose_type(content, has_nul=False, named_extension=allowed.extension, allowed_types=(allowed,)) == allowed
    assert choose_type(content, has_nul=False, named_extension=".other", allowed_types=(allowed,)) is None


def test_a_binary_type_is_never_taken_as_text():
    octets = AllowedType(".bin", "application/octet-stream")
    assert choose_type(b"plain words", has_nul=False, named_extension=".bin", allowed_types=(octets,)) is None


def test_the_named_entry_wins_among_entries_of_one_type():
    m4v = AllowedType(".m4v", "video/mp4")
    head = ftyp(b"isom", b"isom")
    assert choose_type(head, has_nul=False, named_extension=".m4v", allowed_types=(MP4, m4v)) == m4v
    assert choose_type(head, has_nul=False, named_extension=".x", allowed_types=(MP4, m4v)) == MP4


def test_utf8_cut_only_at_the_very_end_is_text():
    assert choose_type(b"ab\xe2\x82", has_nul=False, named_extension=".csv", allowed_types=(CSV,)) == CSV
    assert choose_type(b"a\xe2\x82bcdef", has_nul=False, named_extension=".csv", allowed_types=(CSV,)) is None
