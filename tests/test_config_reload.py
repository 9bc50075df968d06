"""
Honest config reload: an edit of config.json while the server runs says in
the log which keys are applied and which wait for a restart.
"""

from __future__ import annotations

import json

import pytest_twisted

from medimage_tx.config_watch import NEEDS_RESTART, ConfigWatcher, changed_keys
from medimage_tx.config import parse_config


async def edit_and_check(server, **changes) -> None:
    path = server.data / "config.json"
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))
    watcher = next(s for s in server.service if isinstance(s, ConfigWatcher))
    checked = watcher.check()  # None when the watcher's own timer got there first
    if checked is not None:
        await checked


@pytest_twisted.ensureDeferred
async def test_an_edit_of_keep_master_says_it_waits_for_a_restart(start_server, tmp_path, log_lines):
    clinic = tmp_path / "clinic"
    clinic.mkdir()
    server = await start_server(backupTo=[clinic.as_posix()], keepMaster=True)
    await edit_and_check(server, keepMaster=False, maxUploadSize=1000, globalId="SecretId123")
    [line] = [line for line in log_lines if "config.json changed" in line]
    assert line == ("config.json changed: restart the server to apply keepMaster (the old values stay in use "
                    "until then); applied now: globalId, maxUploadSize")
    assert "SecretId123" not in "\n".join(log_lines)
    assert server.store.keep_master is True  # what the log says is what happens
    assert server.service.state.config.maxUploadSize == 1000


@pytest_twisted.ensureDeferred
async def test_an_edit_applied_at_once_says_so(start_server, log_lines):
    server = await start_server()
    await edit_and_check(server, readProxy="http://127.0.0.1:9/read/x")
    assert [line for line in log_lines if "config.json changed" in line] == [
        "config.json changed: applied now: readProxy"]


def test_changed_keys_sorts_live_from_restart(tmp_path):
    path = tmp_path / "config.json"
    old = parse_config({"listenPort": 5566, "headers": {}}, path)
    new = parse_config({"listenPort": 5567, "headers": {"X-A": "b"}, "countryCode": "NZ"}, path)
    assert changed_keys(old, new) == (["countryCode", "headers"], ["listenPort"])
    assert "keepMaster" in NEEDS_RESTART and "readProxy" not in NEEDS_RESTART


@pytest_twisted.ensureDeferred
async def test_an_edit_that_brings_a_typo_warns_once(start_server, log_lines):
    server = await start_server(KeepMaster=False)
    assert len([line for line in log_lines if '"KeepMaster"' in line]) == 1  # at start
    await edit_and_check(server, backupto=["/srv/photos"], readProxy="http://127.0.0.1:9/read/x")
    assert len([line for line in log_lines if '"KeepMaster"' in line]) == 1  # not again
    [typo] = [line for line in log_lines if '"backupto"' in line]
    assert '"backupTo"' in typo


async def test_a_hand_edit_of_backup_to_takes_the_next_photo_without_a_restart(tmp_path, http_client):
    # docs/protocol.md: backupTo applies at once (a real twistd, its own file watcher).
    import signal
    import sys
    from pathlib import Path

    from conftest import eventually, jpeg_bytes, upload_photo, write_config
    from processes import spawn

    data, first, second = tmp_path / "data", tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    config = write_config(data / "config.json", backupTo=[first.as_posix()], lanMode=False)
    twistd = Path(sys.executable).parent / "twistd"
    process = spawn([str(twistd), "--nodaemon", "--pidfile=", "medimage", "--no-lan", "--data", str(data),
                     "--port", "0", "--interface", "127.0.0.1"], str(tmp_path))
    try:
        url = f"http://127.0.0.1:{await process.port()}"
        code, body, _ = await upload_photo(http_client, url, "#ward5-before.jpg", jpeg_bytes(5_000))
        assert code == 200, body
        await eventually(lambda: (first / "ward5" / "before.jpg").exists(), "the photo filed in the first folder")
        raw = json.loads(config.read_text())
        raw["backupTo"] = [second.as_posix()]
        config.write_text(json.dumps(raw))
        await process.wait_for(rb"config.json changed: applied now: backupTo")
        code, body, _ = await upload_photo(http_client, url, "#ward5-after.jpg", jpeg_bytes(5_000))
        assert code == 200, body
        await eventually(lambda: (second / "ward5" / "after.jpg").exists(), "the next photo filed in the new folder")
        assert not (first / "ward5" / "after.jpg").exists()
    finally:
        if not process.ended.called:
            process.transport.signalProcess(signal.SIGTERM)
    assert await process.exited() == -signal.SIGTERM
