"""
Receive a C{multipart/form-data} upload as it streams in: the C{file1} part
goes straight to a temporary file (sized and sniffed on the way), small text
fields are kept, and nothing is ever held whole in memory.

Plain Python: the HTTP request feeds L{MultipartReceiver.write} with each
chunk as it arrives and calls L{MultipartReceiver.finish} at the end.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from ..errors import Rejected, disk_trouble
from .sniff import HEAD_SIZE

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks  # defined there for type checkers only

FILE_FIELD = "file1"

# Room for the multipart envelope (boundaries, part headers, a title field)
# around a file of the largest allowed size.
ENVELOPE_ALLOWANCE = 64 * 1024

# The text fields (like "title") are ignored, but kept bounded.
MAX_TEXT_FIELDS = 64 * 1024

# The apps send two or three parts with a few short headers each.  Past
# these, the body is an attack (finding 4: field names of gigabytes) and is
# refused at once, without reading the rest.
MAX_PARTS = 16
MAX_PART_HEADER_BYTES = 8 * 1024  # one part's header names and values together
MAX_FIELD_NAME = 256  # bytes of a part's name="..."
HEADERS_TOO_LONG = f"A part's headers in the upload are too long: the limit is {MAX_PART_HEADER_BYTES} bytes"


@dataclass
class ReceivedFile:
    """
    The uploaded file, complete in a temporary file that is not yet
    flushed to disk.  The receiver that made it still owns C{temp_path}
    until something renames it away.
    """

    temp_path: Path
    fd: int
    filename: str
    size: int
    head: bytes
    has_nul: bool
    fields: dict[str, str] = field(default_factory=dict)


def boundary_of(content_type: bytes) -> Optional[bytes]:
    """
    The boundary of a C{multipart/form-data} content type, or L{None}.
    """
    kind, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        return None
    return boundary


def make_temp_file(temp_dir: Path, prefix: str) -> tuple[int, str]:
    """
    C{mkstemp} in the server's own C{tmp/}, made again if someone removed
    it (never its data folder: a missing drive must not become a local
    folder).
    """
    try:
        return tempfile.mkstemp(dir=temp_dir, prefix=prefix, suffix=".part")
    except FileNotFoundError:
        os.mkdir(temp_dir)  # fails, as it should, if the data folder is gone
        return tempfile.mkstemp(dir=temp_dir, prefix=prefix, suffix=".part")


class MultipartReceiver:
    """
    Parse one multipart body chunk by chunk into a L{ReceivedFile}.

    Errors are remembered, not raised, while the body streams in (the HTTP
    layer cannot answer before the body is read); L{finish} raises them.
    When L{refuse_now} is set, the body broke a hard limit and the HTTP
    layer answers at once and closes instead of reading the rest.

    @param declared_length: the body's C{Content-Length}, or L{None} for a
        chunked body, which may then carry at most the largest allowed
        upload plus its envelope.
    """

    def __init__(
        self,
        boundary: bytes,
        temp_dir: Path,
        max_file_size: int,
        declared_length: Optional[int] = None,
    ):
        self._temp_dir = temp_dir
        self._max_file_size = max_file_size
        self._error: Optional[Exception] = None
        self._fd: Optional[int] = None
        self._temp_path: Optional[Path] = None
        self._done_with_file = False
        self._size = 0
        self._head = bytearray()
        self._has_nul = False
        self._filename = ""
        self._fields: dict[str, str] = {}
        self._text_bytes = 0
        self._part_headers: dict[bytes, bytes] = {}
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._part: Optional[str] = None  # "file", a field name, or None to skip
        self._text = bytearray()
        self._parts = 0
        self._part_header_bytes = 0
        self._body_bytes = 0
        self._body_limit = max_file_size + ENVELOPE_ALLOWANCE if declared_length is None else None
        self.refuse_now = False
        if declared_length is not None and declared_length > max_file_size + ENVELOPE_ALLOWANCE:
            self._fail(Rejected(
                f"Upload too large: {declared_length} bytes declared, "
                f"the limit is {max_file_size} bytes"
            ))
        callbacks: MultipartCallbacks = {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
        }
        try:
            # Newer python-multipart has header limits of its own (4 KiB a
            # line, 8 headers); ours below are the ones that count.
            self._parser = MultipartParser(boundary, callbacks, max_header_size=MAX_PART_HEADER_BYTES,
                                           max_header_count=64)
        except TypeError:
            self._parser = MultipartParser(boundary, callbacks)

    # Feeding

    def write(self, data: bytes) -> None:
        self._body_bytes += len(data)
        if self._body_limit is not None and self._body_bytes > self._body_limit:
            self._stop(f"Upload too large: the limit is {self._max_file_size} bytes")
        if self._error is not None:
            return
        try:
            self._parser.write(data)
        except MultipartParseError as e:
            if str(e).startswith("Maximum header"):
                self._stop(HEADERS_TOO_LONG)  # the parser's own header limits
            else:
                self._fail(Rejected("Malformed multipart body"))
        except OSError as e:
            self._fail(disk_trouble(e))

    def finish(self) -> ReceivedFile:
        """
        The body is complete: return the file, or raise L{Rejected} or
        L{TryLater}.  On error the temporary file is already removed.
        """
        if self._error is None and self._parser.state != MultipartState.END:
            self._fail(Rejected("Malformed multipart body: it ends before its closing boundary"))
        if self._error is None and self._fd is None:
            self._fail(Rejected(f"No file in the upload: expected the field '{FILE_FIELD}'"))
        if self._error is not None:
            raise self._error
        assert self._temp_path is not None and self._fd is not None
        return ReceivedFile(
            temp_path=self._temp_path,
            fd=self._fd,
            filename=self._filename,
            size=self._size,
            head=bytes(self._head),
            has_nul=self._has_nul,
            fields=dict(self._fields),
        )

    def discard(self) -> None:
        """
        Close and remove the temporary file, if it is still ours.
        """
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
        if self._temp_path is not None:
            try:
                os.unlink(self._temp_path)
            except OSError:
                pass
            self._temp_path = None

    def disown(self) -> None:
        """
        The temporary file has been renamed or closed by its new owner.
        """
        self._fd = None
        self._temp_path = None

    @property
    def error(self) -> Optional[Exception]:
        return self._error

    def _fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
        self.discard()

    def _stop(self, reason: str) -> None:
        self.refuse_now = True
        self._fail(Rejected(reason))

    # Parser callbacks

    def _on_part_begin(self) -> None:
        self._part_headers = {}
        self._part = None
        self._part_header_bytes = 0
        self._parts += 1
        if self._parts > MAX_PARTS:
            self._stop(f"Too many parts in the upload: the limit is {MAX_PARTS}")

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        if self._count_header_bytes(end - start):
            self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        if self._count_header_bytes(end - start):
            self._header_value += data[start:end]

    def _count_header_bytes(self, count: int) -> bool:
        if self._error is not None:
            return False
        self._part_header_bytes += count
        if self._part_header_bytes > MAX_PART_HEADER_BYTES:
            self._stop(HEADERS_TOO_LONG)
            return False
        return True

    def _on_header_end(self) -> None:
        self._part_headers[bytes(self._header_field).strip().lower()] = bytes(self._header_value).strip()
        self._header_field.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        if self._error is not None:
            return
        _, params = parse_options_header(self._part_headers.get(b"content-disposition", b""))
        if len(params.get(b"name", b"")) > MAX_FIELD_NAME:
            self._stop(f"A field name in the upload is too long: the limit is {MAX_FIELD_NAME} bytes")
            return
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if name == FILE_FIELD and b"filename" in params and not self._done_with_file:
            self._filename = params[b"filename"].decode("utf-8", "replace")
            self._open_temp_file()
            self._part = "file"
        elif b"filename" not in params:
            self._part = name
            self._text.clear()

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part == "file":
            self._write_file(data, start, end)
        elif self._part is not None:
            self._text_bytes += end - start
            if self._text_bytes > MAX_TEXT_FIELDS:
                self._fail(Rejected("Text fields of the upload are too large"))
                return
            self._text += data[start:end]

    def _on_part_end(self) -> None:
        if self._part == "file":
            self._done_with_file = True
        elif self._part is not None:
            self._fields[self._part] = self._text.decode("utf-8", "replace")
        self._part = None

    # The file

    def _open_temp_file(self) -> None:
        fd, name = make_temp_file(self._temp_dir, "upload-")
        self._fd, self._temp_path = fd, Path(name)

    def _write_file(self, data: bytes, start: int, end: int) -> None:
        if self._error is not None or self._fd is None:
            return
        chunk = memoryview(data)[start:end]
        self._size += len(chunk)
        if self._size > self._max_file_size:
            reason = f"Upload too large: the limit is {self._max_file_size} bytes"
            # Without a Content-Length, the rest could be endless: stop now.
            self._stop(reason) if self._body_limit is not None else self._fail(Rejected(reason))
            return
        if len(self._head) < HEAD_SIZE:
            self._head += chunk[: HEAD_SIZE - len(self._head)]
        if not self._has_nul and data.find(b"\x00", start, end) != -1:
            self._has_nul = True
        while chunk:
            written = os.write(self._fd, chunk)
            chunk = chunk[written:]
