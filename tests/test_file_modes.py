"""
Photos the clinic can read: stored photos and their copies get the mode the
umask gives a new file (0644 under 022), or config's fileMode.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import pytest_twisted

from conftest import jpeg_bytes, multipart
from medimage_tx.config import ConfigError, parse_config
from medimage_tx.photos.store import folder_mode_for, process_umask


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def _upload(server, http_client, name: str, photo: bytes) -> None:
    body, content_type = multipart(name, photo)
    response = await http_client.post(f"{server.url}/api/photo", data=body,
                                      headers={b"Content-Type": [content_type]})
    assert response.code == 200, await response.content()


@pytest_twisted.ensureDeferred
async def test_photo_and_copies_are_world_readable_under_umask_022(start_server, http_client, tmp_path, umask_022):
    first, second = tmp_path / "clinic", tmp_path / "backup"
    first.mkdir()
    second.mkdir()
    server = await start_server(backupTo=[first.as_posix(), second.as_posix()], keepMaster=True)
    await _upload(server, http_client, "#NHID77-arm.jpg", jpeg_bytes())
    for folder in (server.photos, first, second):
        assert mode(folder / "NHID77" / "arm.jpg") == 0o644, folder
        assert mode(folder / "NHID77") == 0o755, folder


@pytest_twisted.ensureDeferred
async def test_a_photo_moved_to_the_clinic_folder_is_readable_too(start_server, http_client, tmp_path, umask_022):
    clinic = tmp_path / "clinic"
    clinic.mkdir()
    server = await start_server(backupTo=[clinic.as_posix()], keepMaster=False)
    await _upload(server, http_client, "#NHID78-leg.jpg", jpeg_bytes())
    assert not (server.photos / "NHID78" / "leg.jpg").exists()
    assert mode(clinic / "NHID78" / "leg.jpg") == 0o644


@pytest_twisted.ensureDeferred
async def test_file_mode_from_config(start_server, http_client, tmp_path, umask_022):
    clinic = tmp_path / "clinic"
    clinic.mkdir()
    server = await start_server(backupTo=[clinic.as_posix()], fileMode="0640")
    await _upload(server, http_client, "#NHID79-ear.jpg", jpeg_bytes())
    for folder in (server.photos, clinic):
        assert mode(folder / "NHID79" / "ear.jpg") == 0o640
        assert mode(folder / "NHID79") == 0o750


def test_file_mode_values(tmp_path):
    path = tmp_path / "config.json"
    assert parse_config({}, path).fileMode is None
    assert parse_config({"fileMode": "644"}, path).fileMode == 0o644
    assert parse_config({"fileMode": "0660"}, path).fileMode == 0o660
    for bad in ("0o644", "rw-r--r--", "4755", 420, "0044"):
        with pytest.raises(ConfigError, match="'fileMode'"):
            parse_config({"fileMode": bad}, path)


def test_folder_modes_follow_read_bits():
    assert folder_mode_for(0o644) == 0o755
    assert folder_mode_for(0o640) == 0o750
    assert folder_mode_for(0o600) == 0o700


def test_process_umask_reads_without_changing(umask_022):
    assert process_umask() == 0o022
    os.umask(0o027)
    assert process_umask() == 0o027
    assert os.umask(0o022) == 0o027
