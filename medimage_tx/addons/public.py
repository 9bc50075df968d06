"""
The original's C{public/} folder beside config.json, which add-ons are
written against (docs/addons.md, "Pages"):

- L{ensure_standard_files}: the files the MedImage developer guide tells
  add-on authors to use, our own versions, written where the original ships
  them if they are missing (C{public/components/header.html},
  C{public/pages/addon-settings.html}, C{public/pages/snippet.html},
  C{public/js/session-client.js}, C{addons/basic-authentication/session.js}).
  Add-on install scripts edit the header and the settings page, so they
  must be there before the first install.
- L{menu_entries}: the entries add-ons added to the header's
  C{id="side-menu"} list, for the admin pages' navigation.
- L{public_file}, L{content_type}, L{fill_header}: for
  L{medimage_tx.addons.web.PublicFiles}, which serves C{public/<folder>/<file>}
  (an add-on's pages, CSS, scripts, images) as the original does.

Plain Python (the installer and the command line use it too).
"""

from __future__ import annotations

import mimetypes
import os
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from typing import Optional
from urllib.parse import urljoin, urlsplit

HTML = b"text/html; charset=utf-8"
#: Types the browser must get right (scripts and styles are refused with
#: the wrong one under nosniff); the rest from the file name.
TYPES = {".html": HTML, ".htm": HTML, ".js": b"text/javascript; charset=utf-8",
         ".css": b"text/css; charset=utf-8", ".json": b"application/json", ".svg": b"image/svg+xml"}


def standard_files() -> list[tuple[str, bytes]]:
    """
    (path below the parent folder, contents) of each standard file.
    """
    found = []
    root = resources.files(__package__).joinpath("standard")

    def walk(folder, prefix: str) -> None:
        for item in folder.iterdir():
            if item.is_dir():
                walk(item, f"{prefix}{item.name}/")
            else:
                found.append((prefix + item.name, item.read_bytes()))

    walk(root, "")
    return sorted(found)


def ensure_standard_files(parent_dir: Path) -> list[str]:
    """
    Write each standard file that is missing (never over one that is
    there: add-ons edit the header and the settings page, a clinic may have
    its own).  Returns what was written.  @raise OSError.
    """
    written = []
    for relative, contents in standard_files():
        path = parent_dir / relative
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.new")
        temp.write_bytes(contents)
        os.replace(temp, path)
        written.append(relative)
    return written


def header_path(parent_dir: Path) -> Path:
    return parent_dir / "public" / "components" / "header.html"


class _SideMenu(HTMLParser):
    """
    The links inside the element with C{id="side-menu"}, with their text.
    """

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str]] = []
        self._depth = 0  # open elements inside the side menu (0: outside)
        self._href: Optional[str] = None
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if self._depth:
            if tag not in ("br", "img", "input", "meta", "link", "hr"):
                self._depth += 1
            if tag == "a":
                self._href, self._text = attributes.get("href") or "", []
        elif attributes.get("id") == "side-menu":
            self._depth = 1

    def handle_endtag(self, tag):
        if not self._depth:
            return
        if tag == "a" and self._href is not None:
            self.links.append((self._href, " ".join("".join(self._text).split())))
            self._href = None
        self._depth -= 1

    def handle_data(self, data):
        if self._href is not None:
            self._text.append(data)


def side_menu(text: str) -> list[tuple[str, str]]:
    """
    (href, label) of the side menu's links in a header, as written.
    """
    parser = _SideMenu()
    parser.feed(text)
    parser.close()
    return parser.links


def local_link(href: str) -> Optional[str]:
    """
    C{href} as a path on this server (relative links as the header's pages,
    under C{/pages/}, see them), or L{None} for another site, a script, or
    nothing.
    """
    # A browser reads a backslash in an http URL as a slash: /\evil.example
    # is another site.
    href = href.strip().replace("\\", "/")
    if not href or href.startswith("#"):
        return None
    resolved = urljoin("/pages/", href)
    parts = urlsplit(resolved)
    if parts.scheme or parts.netloc or not resolved.startswith("/"):
        return None
    return "/" if parts.path == "/index.html" else resolved


class MenuCache:
    """
    The header's local menu entries, read again only when the file changes.
    """

    def __init__(self):
        self._seen: Optional[tuple[str, int, int]] = None
        self._entries: list[tuple[str, str]] = []

    def entries(self, parent_dir: Path) -> list[tuple[str, str]]:
        path = header_path(parent_dir)
        try:
            status = path.stat()
            key = (str(path), status.st_mtime_ns, status.st_size)
            if key != self._seen:
                links = side_menu(path.read_text(encoding="utf-8", errors="replace"))
                self._entries = [(local, label) for local, label in
                                 ((local_link(href), label) for href, label in links) if local and label]
                self._seen = key
        except OSError:
            self._seen, self._entries = None, []
        return list(self._entries)


_menus = MenuCache()


def menu_entries(parent_dir: Path) -> list[tuple[str, str]]:
    """
    (path, label) of the header's side-menu links to this server, in order
    (add-ons add theirs there as the developer guide says).
    """
    return _menus.entries(parent_dir)


def fill_header(text: str, header: str) -> str:
    return text.replace("STANDARDHEADER", header)


def read_header(parent_dir: Path) -> str:
    try:
        return header_path(parent_dir).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def public_file(public: Path, segments: list[bytes]) -> Optional[Path]:
    """
    The file under C{public} that these URL path segments name, or L{None}
    (no climbing out, no folders, no links leading elsewhere).
    """
    names = []
    for segment in segments:
        try:
            name = segment.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if name in ("", ".", "..") or any(c in name for c in "/\\\x00:"):
            return None
        names.append(name)
    if not names:
        return None
    path = public.joinpath(*names)
    try:
        real, root = path.resolve(strict=True), public.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not real.is_relative_to(root) or not real.is_file():
        return None
    return real


def content_type(path: Path) -> bytes:
    known = TYPES.get(path.suffix.lower())
    if known:
        return known
    guessed, _ = mimetypes.guess_type(path.name)
    return (guessed or "application/octet-stream").encode()
