"""
Whose files a command run as root leaves behind: the user the server runs
as, not root.

`sudo medimage-tx migrate` and `service install` run as root, but the
service runs as its own user (`medimage`); a config.json or folder root
leaves behind (config.json is written 0600) stops that user's server.  So
these commands write as the service user (effective ids: every file and
folder they make is that user's, and a folder that user may not write is
refused now, as it would be to the server) and go back to root only to
read what root alone may read.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Optional


@dataclass(frozen=True)
class ServiceUser:
    uid: int
    gid: int
    why: str  # how it was chosen, for the report

    def describe(self) -> str:
        return f"{_user_name(self.uid)}:{_group_name(self.gid)} ({self.why})"


class NoSuchUser(ValueError):
    """
    C{--user} names no account; C{str(error)} is one line.
    """


def running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def choose(data_dir: Path, user: Optional[str], environ: Mapping[str, str]) -> Optional[ServiceUser]:
    """
    The user the files belong to: C{user} if given (a name, or C{#uid}),
    else, when running as root, the owner of the existing data folder (as
    C{service install} made it), else the user who typed C{sudo}
    (C{SUDO_UID}); None when not root, or root is all there is.

    @raise NoSuchUser: C{user} names nobody.
    """
    if user:
        return _named(user)
    if not running_as_root():
        return None
    try:
        folder = data_dir.stat()
    except OSError:
        folder = None
    if folder is not None and folder.st_uid != 0:
        return ServiceUser(folder.st_uid, folder.st_gid, f"the owner of {data_dir}")
    sudo_uid = environ.get("SUDO_UID", "")
    if sudo_uid.isdigit() and int(sudo_uid) != 0:
        sudo_gid = environ.get("SUDO_GID", "")
        return ServiceUser(int(sudo_uid), int(sudo_gid) if sudo_gid.isdigit() else int(sudo_uid),
                           "SUDO_UID, the user who ran sudo")
    return None


def _named(user: str) -> ServiceUser:
    if user.startswith("#") and user[1:].isdigit():
        uid = int(user[1:])
        try:
            import pwd

            return ServiceUser(uid, pwd.getpwuid(uid).pw_gid, "--user")
        except (ImportError, KeyError):
            return ServiceUser(uid, uid, "--user")
    try:
        import pwd

        entry = pwd.getpwnam(user)
    except (ImportError, KeyError):
        raise NoSuchUser(f"--user {user}: no such user here") from None
    return ServiceUser(entry.pw_uid, entry.pw_gid, "--user")


def make_folder_for(user: Optional[ServiceUser], folder: Path) -> None:
    """
    C{mkdir -p folder}, as root (its parent, such as /var/lib, is root's),
    giving the folder itself to C{user}.
    """
    if folder.is_dir():
        return
    folder.mkdir(parents=True, exist_ok=True)
    if user is not None:
        os.chown(folder, user.uid, user.gid)


def give_tree(user: Optional[ServiceUser], top: Path) -> None:
    """
    Every file and folder under C{top} (made by this command) to C{user},
    never through a link: root hands over a folder its user can write, so
    a link there (the top included) would hand over what it points at.
    Folders are entered by descriptor (C{os.fwalk}).
    """
    if user is None:
        return
    os.lchown(top, user.uid, user.gid)
    try:
        top_fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return  # a link, or a file: nothing below it is ours to hand over
    try:
        for _folder, dirs, files, folder_fd in os.fwalk(dir_fd=top_fd, follow_symlinks=False):
            for name in dirs + files:
                os.chown(name, user.uid, user.gid, dir_fd=folder_fd, follow_symlinks=False)
    finally:
        os.close(top_fd)


@contextmanager
def writing_as(user: Optional[ServiceUser]) -> Iterator[None]:
    """
    Within: effectively C{user} (root again after).  No-op for None.
    """
    if user is None or not running_as_root():
        yield
        return
    groups = os.getgroups()
    os.setgroups([user.gid])
    os.setegid(user.gid)
    os.seteuid(user.uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(groups)


@contextmanager
def as_root() -> Iterator[None]:
    """
    Within L{writing_as}: root again, to read a file root alone may read.
    """
    if not hasattr(os, "geteuid") or os.geteuid() == 0 or os.getuid() != 0:
        yield
        return
    uid, gid = os.geteuid(), os.getegid()
    os.seteuid(0)
    os.setegid(0)
    try:
        yield
    finally:
        os.setegid(gid)
        os.seteuid(uid)


def chown_hint(user_name: str, *paths: Path) -> str:
    """
    The command that gives C{paths} to the service user, for people.
    """
    return f"chown -R {user_name}: {' '.join(str(p) for p in paths)}"


def _user_name(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        import grp

        return grp.getgrgid(gid).gr_name
    except (ImportError, KeyError):
        return str(gid)
