"""
What the relay's stores have in common: what they hand back, and the error
for a store that cannot be used at start.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Awaitable, BinaryIO, Callable, Optional


from ..errors import TryLater


def quota_exceeded() -> TryLater:
    """
    Disk-filling protection: one pairing may have the relay hold only so
    much; the PC must collect first.
    """
    return TryLater("The relay holds too much for this pairing; the PC has not "
                    "collected it yet. Try again later.", retry_after=120, status=429,
                    phrase="Too many photos wait for your clinic's computer; "
                           "the photo stays on the phone")


def relay_full() -> TryLater:
    """
    The relay as a whole holds all it may (C{relayTotalBytes}, or the disk's
    C{relayMinFreeBytes}).
    """
    return TryLater("The relay is full. Try again later.", retry_after=300, status=507,
                    phrase="The relay is full; the photo stays on the phone")


class RelayStoreUnavailable(Exception):
    """
    The configured store cannot be used; C{str(error)} is one line.
    """


@dataclass
class QueuedPhoto:
    paired_id: str
    relative: str  # "<id>/<folders>/<name>"
    size: int
    receipt: Optional[str] = None

    @property
    def file_name(self) -> str:
        """
        The C{file-name} header value of PROTOCOL.md A4.
        """
        return "/" + self.relative


@dataclass
class Delivery:
    """
    A photo handed out for sending: its SHA-256 and a way to read it,
    either a file (C{opener}) or a piece at a time (C{read_chunk(offset,
    length)} firing with the bytes; C{b""} when the photo is gone), so a
    slow reader never holds a whole photo in memory.
    """

    photo: QueuedPhoto
    sha256: bytes
    body: Optional[bytes] = None
    opener: Optional[Callable[[], BinaryIO]] = None
    read_chunk: Optional[Callable[[int, int], Awaitable[bytes]]] = None
    #: Set when the sending was cut because the photo could not be read.
    cut_short: bool = False

    def open(self) -> BinaryIO:
        if self.body is not None:
            return io.BytesIO(self.body)
        assert self.opener is not None  # a delivery has its body or a way to open it
        return self.opener()

    @property
    def digest_headers(self) -> tuple[bytes, bytes]:
        """
        The C{Digest} and C{Content-Digest} header values.
        """
        encoded = base64.b64encode(self.sha256)
        return b"sha-256=" + encoded, b"sha-256=:" + encoded + b":"


def split_name(name: str) -> tuple[str, str]:
    stem, dot, extension = name.rpartition(".")
    return (stem, "." + extension) if dot and stem else (name, "")
