"""
The app's file-name routing (PROTOCOL.md A1), by example and by property.
"""

from __future__ import annotations

import posixpath
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from medimage_tx.config import DEFAULT_ALLOWED_CHARS
from medimage_tx.photos.naming import DEFAULT_STEM, map_upload_name


def mapped(name: str, **kw) -> str:
    result = map_upload_name(name, allowed_chars=DEFAULT_ALLOWED_CHARS, **kw)
    return "/".join(result.relative_parts(".jpg"))


def test_app_name_with_paired_id():
    name = "#uPSE4UWHmJ8XqFUqvf-#NHID1234-arm-27-Nov-2026-10-11-12.jpg"
    assert mapped(name, global_id="uPSE4UWHmJ8XqFUqvf") == "NHID1234/arm-27-Nov-2026-10-11-12.jpg"


def test_folders_nest_in_order_and_words_join():
    assert mapped("#moles-#John123-left-arm.jpeg") == "moles/John123/left-arm.jpg"


def test_dot_dot_and_separators_removed():
    assert mapped("#..-#a/../b-..x.jpg") == "ab/x.jpg"
    assert mapped("#％２Ｆ-x.jpg") == "2F/x.jpg"  # full-width forms fold, '%' is dropped


def test_empty_name_gets_default_stem():
    assert mapped("#moles-.jpg") == f"moles/{DEFAULT_STEM}.jpg"
    assert mapped("") == f"{DEFAULT_STEM}.jpg"


def test_windows_reserved_names_are_defused():
    assert mapped("#CON-nul.jpg") == "_CON/_nul.jpg"


def test_only_known_extensions_are_stripped():
    assert mapped("scan.pdf") == "scan.pdf.jpg"
    assert mapped("scan.pdf", extensions=[".pdf"]) == "scan.jpg"


SAFE = re.compile(r"[A-Za-z0-9#._-]+")


@settings(max_examples=500)
@given(st.text(max_size=300), st.sampled_from(["", "uPSE4UWHmJ8XqFUqvf"]))
def test_any_name_stays_inside_photos_folder(name, global_id):
    result = map_upload_name(name, allowed_chars=DEFAULT_ALLOWED_CHARS, global_id=global_id)
    parts = result.relative_parts(".jpg")
    path = "/".join(parts)
    assert not posixpath.isabs(path) and not re.match(r"^[A-Za-z]:", path)
    assert posixpath.normpath(path) == path  # no '.', '..' or empty parts
    assert ".." not in path
    for part in parts:
        assert SAFE.fullmatch(part)
        assert not part.startswith(".")
        assert len(part.encode()) <= 255
    assert global_id == "" or global_id not in result.folders
    assert result.stem  # never an empty file name


@given(st.lists(st.text(alphabet="abXY09_.", max_size=8), max_size=5), st.text(alphabet="%$ /\\:!?*\x00", max_size=10))
def test_a_name_of_only_folders_and_dropped_characters_gets_the_default_stem(folders, dropped):
    name = "-".join("#" + folder for folder in folders) + dropped + ".jpg"
    assert map_upload_name(name, allowed_chars=DEFAULT_ALLOWED_CHARS).stem == DEFAULT_STEM


@given(st.lists(st.sampled_from(["#", "..", ".", "-", "/", "\\", "\x00", "a"]), max_size=40))
def test_dot_and_separator_soup_never_escapes(pieces):
    path = mapped("".join(pieces))
    assert ".." not in path and "\\" not in path and "\x00" not in path
    assert all(part and part not in (".", "..") for part in path.split("/"))


def test_suffix_numbers_for_different_photos_under_one_name():
    from medimage_tx.photos.naming import with_suffix_number

    assert [with_suffix_number("arm", n) for n in (0, 1, 2, 10)] == ["arm", "arm-1", "arm-2", "arm-10"]


def test_long_parts_are_cut_to_whole_characters_within_the_limit():
    from medimage_tx.photos.naming import MAX_COMPONENT

    mapped = map_upload_name("#" + "é" * 150 + "-" + "x" * 300 + ".jpg", allowed_chars="\\w#.-")
    assert len(mapped.folders[0].encode()) <= MAX_COMPONENT and set(mapped.folders[0]) == {"é"}
    assert mapped.stem == "x" * MAX_COMPONENT


def test_the_longest_known_extension_is_stripped_first():
    from medimage_tx.photos.naming import strip_extension

    assert strip_extension("scan.tar.gz", [".gz", ".tar.gz"]) == "scan"
    assert strip_extension("scan.TAR.GZ", [".tar.gz", ".gz"]) == "scan"
    assert strip_extension("scan.gz", [".tar.gz"]) == "scan.gz"


def test_a_cut_that_ends_on_a_dot_or_space_is_trimmed_again():
    from medimage_tx.photos.naming import MAX_COMPONENT, safe_component

    assert safe_component("x" * (MAX_COMPONENT - 1) + ".y") == "x" * (MAX_COMPONENT - 1)
    assert safe_component("x" * (MAX_COMPONENT - 1) + " y") == "x" * (MAX_COMPONENT - 1)
