"""
What is known of the photos stored under each name (issue 19 finding 1):
their numbers (C{arm.jpg}, C{arm-1.jpg}, ...) and their SHA-256, so that a
photo sent under a taken name is found by its digest instead of being
compared with every photo under the name.  Plain Python; L{PhotoStore}
keeps one L{NameFamilies} and checks what it finds on disk.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Optional

#: Different photos under one name: C{name}, C{name-1}, ... up to this.
MAX_NUMBER = 100000
#: Names whose photos' digests are kept in memory (least recently used
#: forgotten first; a forgotten name is read again once when next taken).
NAMES_REMEMBERED = 1024


def file_digest(path: Path) -> bytes:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").digest()


def digest_or_none(path: Path) -> Optional[bytes]:
    try:
        return file_digest(path)
    except OSError:
        return None


class NameFamily:
    """
    The photos stored under one name (C{arm.jpg}, C{arm-1.jpg}, ...): which
    numbers are taken, and the digest of each photo where known.
    """

    def __init__(self):
        self._digests: dict[int, Optional[bytes]] = {}
        self._numbers: dict[bytes, int] = {}

    def taken(self, number: int, digest: Optional[bytes]) -> None:
        self.forget(number)
        self._digests[number] = digest
        if digest is not None:
            self._numbers[digest] = number

    def forget(self, number: int) -> None:
        digest = self._digests.pop(number, None)
        if digest is not None and self._numbers.get(digest) == number:
            del self._numbers[digest]

    def unknown(self) -> list[int]:
        return [number for number, digest in self._digests.items() if digest is None]

    def number_of(self, digest: bytes) -> Optional[int]:
        return self._numbers.get(digest)

    def free_from(self, number: int) -> int:
        """
        The first number from C{number} on not known to be taken.
        """
        while number in self._digests:
            number += 1
        return number


class NameFamilies:
    """
    L{NameFamily} by first name (C{folders/arm.jpg}), at most
    L{NAMES_REMEMBERED} of them.
    """

    def __init__(self, limit: int = NAMES_REMEMBERED):
        self.limit = limit
        self._families: OrderedDict[str, NameFamily] = OrderedDict()

    def get(self, name: str) -> Optional[NameFamily]:
        family = self._families.get(name)
        if family is not None:
            self._families.move_to_end(name)
        return family

    def add(self, name: str, family: NameFamily) -> NameFamily:
        self._families[name] = family
        while len(self._families) > self.limit:
            self._families.popitem(last=False)
        return family
