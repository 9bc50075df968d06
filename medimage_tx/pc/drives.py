"""
C{onStartBackupDriveDetect} (PROTOCOL.md A2): every other mounted drive gets
a C{<drive>/MedImage/photos} backup folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil

# File systems that are not drives a clinic would back up to.
_NOT_DRIVES = {
    "tmpfs", "devtmpfs", "squashfs", "overlay", "proc", "sysfs", "cgroup", "cgroup2",
    "devpts", "mqueue", "debugfs", "tracefs", "securityfs", "pstore", "bpf",
    "autofs", "configfs", "fusectl", "hugetlbfs", "nsfs", "ramfs", "efivarfs",
    "binfmt_misc", "rpc_pipefs", "fuse.lxcfs", "iso9660", "udf", "",
}
_SYSTEM_MOUNTS = {"/boot", "/boot/efi", "/efi"}


def backup_drive_folders(data_dir: Path) -> list[Path]:
    """
    C{<drive>/MedImage/photos} for every writable, real drive other than the
    one holding C{data_dir}.
    """
    own_device = os.stat(data_dir).st_dev
    folders = []
    for partition in psutil.disk_partitions(all=False):
        if partition.fstype in _NOT_DRIVES or partition.mountpoint in _SYSTEM_MOUNTS:
            continue
        if "ro" in partition.opts.split(","):
            continue
        mount = Path(partition.mountpoint)
        try:
            if os.stat(mount).st_dev == own_device or not os.access(mount, os.W_OK):
                continue
        except OSError:
            continue
        folders.append(mount / "MedImage" / "photos")
    return folders
