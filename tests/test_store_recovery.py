"""
Nothing lost, nothing half-written: recovery after a crash and target
folders that fail (PROTOCOL.md A2, B2).
"""

from __future__ import annotations

import pytest_twisted
from twisted.logger import capturedLogs, formatEvent

from conftest import all_files, jpeg_bytes, multipart, post_upload
from medimage_tx.photos.store import INCOMING, PhotoStore
from test_upload_http import APP_NAME


@pytest_twisted.ensureDeferred
async def test_start_removes_temp_files_and_copies_staged_photos(start_server, tmp_path):
    target = tmp_path / "clinic"
    (target / INCOMING).mkdir(parents=True)
    (target / INCOMING / "tmpabc.part").write_bytes(b"half a copy")
    data = tmp_path / "pc"
    (data / "tmp").mkdir(parents=True)
    (data / "tmp" / "upload-x.part").write_bytes(b"half an upload")
    # A photo staged before a crash, never copied: with keepMaster false,
    # anything left in photos/ is pending.
    photo = jpeg_bytes(seed=5)
    (data / "photos" / "NHID1").mkdir(parents=True)
    (data / "photos" / "NHID1" / "arm.jpg").write_bytes(photo)
    with capturedLogs() as events:
        server = await start_server(backupTo=[target.as_posix()], keepMaster=False)
    assert (target / "NHID1" / "arm.jpg").read_bytes() == photo
    assert all_files(target) == [target / "NHID1" / "arm.jpg"]
    assert all_files(server.data / "tmp") == []
    assert all_files(server.photos) == []
    assert any("removed 2 unfinished" in formatEvent(e) for e in events)


@pytest_twisted.ensureDeferred
async def test_start_copies_pending_photo_when_master_is_kept(start_server, tmp_path):
    target = tmp_path / "clinic"
    target.mkdir()
    data = tmp_path / "pc"
    photo = jpeg_bytes(seed=6)
    (data / "photos" / "P").mkdir(parents=True)
    (data / "photos" / "P" / "leg.jpg").write_bytes(photo)
    # The marker the store leaves when a photo's copies are not done.
    crashed = PhotoStore(data, [target], keep_master=True)
    crashed.prepare()
    crashed.mark_pending("P/leg.jpg")
    await start_server(backupTo=[target.as_posix()], keepMaster=True)
    assert (target / "P" / "leg.jpg").read_bytes() == photo
    assert (data / "photos" / "P" / "leg.jpg").exists()
    assert list((data / "pending").iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_missing_target_keeps_photo_staged_and_retries(start_server, http_client, tmp_path):
    target = tmp_path / "share-not-mounted"
    with capturedLogs() as events:
        server = await start_server(backupTo=[target.as_posix()], keepMaster=False)
        photo = jpeg_bytes(seed=7)
        for _ in range(2):
            code, _, _ = await post_upload(http_client, server.url, *multipart(APP_NAME, photo))
            assert code == 200  # durable in photos/: the phone may delete it
        await server.service.state.backups._retry()
    staged = server.photos / "NHID1234" / "arm-27-Nov-2026-10-11-12.jpg"
    assert staged.read_bytes() == photo
    assert not target.exists()  # a missing share is never created locally
    warnings = [e for e in events if "Cannot copy photos" in e.get("log_format", "")]
    assert len(warnings) == 1  # once per outage, not per photo or try
    assert str(target) in server.service.state.backups.failing

    target.mkdir()
    with capturedLogs() as events:
        await server.service.state.backups._retry()
    assert (target / "NHID1234" / "arm-27-Nov-2026-10-11-12.jpg").read_bytes() == photo
    assert not staged.exists()
    assert server.service.state.backups.failing == {}
    assert any("works again" in e.get("log_format", "") for e in events)


def test_a_folder_removed_while_a_photo_is_stored_is_made_again(tmp_path):
    """
    A relay removes a collected photo, and the patient folder it empties,
    in one thread while an upload to that folder is stored in another.
    When the removal lands between the store making the folder and
    linking the photo into it, the photo is stored all the same (before
    the fix: a try-later 500, "cannot store the photo right now", seen
    in test_app_answers.py).
    """
    from medimage_tx.relay_store.local import remove_photo

    class RemovedMeanwhile(PhotoStore):
        raced = False

        def _make_folders(self, folder):
            super()._make_folders(folder)
            if not self.raced:  # the other thread's removal, at the worst moment
                self.raced = True
                remove_photo(self.photos, "P/collected.jpg")

    store = RemovedMeanwhile(tmp_path / "data", [], keep_master=True)
    store.prepare()
    (store.photos / "P").mkdir()
    (store.photos / "P" / "collected.jpg").write_bytes(jpeg_bytes(seed=1))
    temp = store.temp / "upload-1.part"
    photo = jpeg_bytes(seed=9)
    temp.write_bytes(photo)
    stored = store.store(temp, None, ("P", "new.jpg"))
    assert store.raced and stored.relative == "P/new.jpg"
    assert (store.photos / "P" / "new.jpg").read_bytes() == photo
    assert not temp.exists()


def test_readonly_target_reported(tmp_path):
    """
    A target that cannot be written (a file where a folder should be)
    fails cleanly, even as root, and the photo stays staged.
    """
    target = tmp_path / "clinic"
    target.mkdir()
    (target / "P").write_text("a file, not a folder")
    store = PhotoStore(tmp_path / "data", [target], keep_master=False)
    store.prepare()
    temp = store.temp / "upload-1.part"
    photo = jpeg_bytes(seed=8)
    temp.write_bytes(photo)
    stored = store.store(temp, None, ("P", "x.jpg"))
    assert stored.backup_failures and stored.backup_failures[0][0] == str(target)
    assert (store.photos / "P" / "x.jpg").read_bytes() == photo
    assert store.pending_photos() == ["P/x.jpg"]
    assert not temp.exists()


@pytest_twisted.ensureDeferred
async def test_recovery_never_removes_an_upload_under_way(tmp_path):
    # It once ran wholly in a thread after the start and removed the
    # temporary file of the first upload (a 500 for the phone).
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    from medimage_tx.tap import build_service

    data = tmp_path / "pc"
    (data / "tmp").mkdir(parents=True)
    (data / "tmp" / "upload-crashed.part").write_bytes(b"left by a crash")
    service = build_service(reactor, data, port=0, interface="127.0.0.1", no_lan=True)
    # Hold the threaded part of the recovery until an upload is under way,
    # as a busy machine does.
    backups, release = service.state.backups, Deferred()
    in_thread = backups.in_thread
    backups.in_thread = lambda f, *args: release.addCallback(lambda _: in_thread(f, *args))
    service.startService()
    try:
        under_way = data / "tmp" / "upload-now.part"
        under_way.write_bytes(b"an upload that started with the server")
        release.callback(None)
        await backups.recovered
        assert under_way.exists()
        assert not (data / "tmp" / "upload-crashed.part").exists()
    finally:
        await service.stopService()
