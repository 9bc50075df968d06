"""
Reading an original MedImage folder without following a link.

C{medimage-tx migrate} may run as root on a folder another user could
write; a link there would make root take in whatever it points at.  The
migration first refuses any link it finds (L{links_below}); behind that
check, for a link made meanwhile, folders are entered by descriptor
(C{os.fwalk}, never by path again) and files opened with C{O_NOFOLLOW}.
Windows has no C{os.fwalk}: there the check is what holds.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import BinaryIO, Iterator, Optional


def links_below(top: Path) -> Iterator[Path]:
    """
    C{top} and everything below it that is a link (or a Windows junction),
    never walking through one.
    """
    for path in _tree(top):
        if is_link(path):
            yield path


def _tree(top: Path) -> Iterator[Path]:
    yield top
    if top.is_dir() and not is_link(top):
        for folder, dirs, files in os.walk(top):  # never into linked folders
            for name in dirs + files:
                yield Path(folder, name)


def is_link(path: Path) -> bool:
    return path.is_symlink() or bool(getattr(path, "is_junction", lambda: False)())


def read_no_link(path: Path) -> bytes:
    with open(os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)), "rb") as f:
        return f.read()


def open_folder(folder: Path) -> Optional[int]:
    """
    The folder open by descriptor, never through a link; None where there
    is no C{os.fwalk} (Windows).
    """
    if not hasattr(os, "fwalk"):
        return None
    return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)


def open_below(top: Path, relative: Path) -> Optional[int]:
    """
    The folder C{top/relative} open by descriptor, each part entered with
    C{O_NOFOLLOW} (a link anywhere on the way: C{OSError}); None where
    there is no C{os.fwalk} (Windows).
    """
    fd = open_folder(top)
    if fd is None:
        return None
    try:
        for part in relative.parts:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def files_below(photos: Path, top: Optional[int]) -> Iterator[tuple[str, Optional[BinaryIO]]]:
    """
    Every file below C{photos}, in order: its relative path and the file
    open for reading, or None for a link (never followed).  The second
    layer behind the migration's check, for a link made after that check:
    folders are entered by descriptor (C{os.fwalk}), never by path again,
    and files opened with C{O_NOFOLLOW}.
    """
    if top is None:  # Windows: by path (the check before is what holds there)
        for path in sorted(photos.rglob("*")):
            relative = path.relative_to(photos).as_posix()
            if is_link(path):
                yield relative, None
            elif path.is_file():
                yield relative, open(path, "rb")
        return
    try:
        for folder, dirs, files, folder_fd in os.fwalk(dir_fd=top, follow_symlinks=False):
            dirs.sort()
            prefix = "" if folder == "." else os.path.relpath(folder, ".").replace(os.sep, "/") + "/"
            for name in sorted(files + [d for d in dirs if _is_link_at(d, folder_fd)]):
                if _is_link_at(name, folder_fd):
                    yield prefix + name, None
                    continue
                try:
                    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder_fd)
                except OSError:
                    yield prefix + name, None  # turned into a link meanwhile (ELOOP)
                    continue
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    os.close(fd)  # a device or pipe: no photo
                    continue
                yield prefix + name, open(fd, "rb")
    finally:
        os.close(top)


def copy_folder(source: Path, top: Optional[int], dest: Path) -> list[str]:
    """
    C{source} (open as C{top}) copied into C{dest}, modes kept, following no
    link: the second layer behind the migration's check, as for the photos.
    Returns the links left out.
    """
    if top is None:  # Windows: by path (the check before is what holds there)
        shutil.copytree(source, dest, dirs_exist_ok=True, symlinks=True)
        return []
    links = []
    try:
        for folder, dirs, files, folder_fd in os.fwalk(dir_fd=top, follow_symlinks=False):
            relative = os.path.relpath(folder, ".")
            here = dest / relative
            here.mkdir(exist_ok=True)
            prefix = "" if relative == "." else relative.replace(os.sep, "/") + "/"
            links += [prefix + d for d in dirs if _is_link_at(d, folder_fd)]
            for name in files:
                try:
                    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder_fd)
                except OSError:
                    links.append(prefix + name)
                    continue
                with open(fd, "rb") as f:
                    mode = os.fstat(fd).st_mode
                    if stat.S_ISREG(mode):
                        with open(here / name, "wb") as out:
                            shutil.copyfileobj(f, out)
                        os.chmod(here / name, stat.S_IMODE(mode))  # scripts stay runnable
    finally:
        os.close(top)
    return sorted(links)


def _is_link_at(name: str, folder_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=folder_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False
