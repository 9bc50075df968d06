"""
What a server accepts once a body has arrived (PROTOCOL.md A1), without a
server: the type by content, the PC's path, the relay's id and path.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from medimage_tx.config import parse_config
from medimage_tx.errors import Rejected
from medimage_tx.photos.intake import (
    RECONNECT,
    accepted_parts,
    checked_extension,
    named_extension,
    relay_check_path,
    relay_parts,
)
from medimage_tx.photos.multipart import ReceivedFile

PAIRED_ID = "uPSE4UWHmJ8XqFUqvf"
JPEG_HEAD = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"


def config(**settings):
    return parse_config({"lanMode": False, **settings}, Path("/nonexistent/config.json"))


def received(filename: str, head: bytes = JPEG_HEAD, size: int = 1000, has_nul: bool = False) -> ReceivedFile:
    return ReceivedFile(Path("/nonexistent/upload.part"), -1, filename, size, head, has_nul)


def test_named_extension_is_the_last_one_lower_case_and_never_a_bare_dot_name():
    assert named_extension("a/b\\Scan.PDF") == ".pdf"
    assert named_extension("x.tar.gz") == ".gz"
    assert named_extension(".hidden") == "" and named_extension("plain") == ""


def test_pc_path_from_the_app_name_by_content_type():
    pc = config(globalId=PAIRED_ID, allowedTypes=[{"extension": ".jpg", "mime": "image/jpeg"}])
    assert accepted_parts(received(f"#{PAIRED_ID}-#NHID1234-arm-27-Nov.jpg"), pc) == ("NHID1234", "arm-27-Nov.jpg")
    # JPEG content named .jpeg is stored as .jpg, the extension of its type.
    assert accepted_parts(received("#moles-leg.jpeg"), pc) == ("moles", "leg.jpg")


def test_empty_and_disallowed_contents_are_refused_with_their_reason():
    pc = config(allowedTypes=[{"extension": ".jpg", "mime": "image/jpeg"}])
    with pytest.raises(Rejected, match="empty"):
        checked_extension(received("x.jpg", size=0), pc)
    with pytest.raises(Rejected, match="File type not allowed on this server: image/png"):
        checked_extension(received("x.jpg", head=b"\x89PNG\r\n\x1a\n" + b"\x00" * 20), pc)
    with pytest.raises(Rejected, match="unrecognised content"):
        checked_extension(received("x.jpg", head=b"\x00\x01\x02\x03" * 8, has_nul=True), pc)


def test_allowed_types_give_their_own_extension():
    pc = config(allowedTypes=[{"extension": ".jpg", "mime": "image/jpeg"},
                              {"extension": ".pdf", "mime": "application/pdf"}])
    assert checked_extension(received("referral.pdf", head=b"%PDF-1.7\n"), pc) == ".pdf"
    assert accepted_parts(received("#letters-referral.pdf", head=b"%PDF-1.7\n"), pc) == ("letters", "referral.pdf")


def test_relay_takes_the_first_folder_as_the_paired_id():
    relay = config(allowPhotosLeaving=True)
    assert relay_parts(f"#{PAIRED_ID}-#NHID1234-arm.jpg", ".jpg", relay) == (
        PAIRED_ID, (PAIRED_ID, "NHID1234", "arm.jpg"))
    for name in ("#NHID1234-arm.jpg", "arm.jpg", "#short-#NHID-x.jpg", "#" + "x" * 21 + "-a.jpg"):
        with pytest.raises(Rejected) as refused:
            relay_parts(name, ".jpg", relay)
        assert str(refused.value) == RECONNECT


def test_relay_check_path_matches_what_the_upload_was_queued_as():
    relay = config(allowPhotosLeaving=True)
    assert relay_check_path(f"#{PAIRED_ID}-#NHID1234-arm.jpg", relay) == f"{PAIRED_ID}/NHID1234/arm.jpg"
    assert relay_check_path(f"#{PAIRED_ID}-#NHID1234-arm.jpeg", relay) == f"{PAIRED_ID}/NHID1234/arm.jpg"
    assert relay_check_path(f"#{PAIRED_ID}-#NHID1234-arm", relay) == f"{PAIRED_ID}/NHID1234/arm.jpg"
    assert relay_check_path("#NHID1234-arm.jpg", relay) is None
