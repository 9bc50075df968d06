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
