"""
Python add-ons found through the medimage_tx.addons entry point group, and
add-ons of photos left unfinished by a crash (issue 13).
"""

from __future__ import annotations

import json
import sys
import threading

import psutil
import pytest
import pytest_twisted
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from addon_helpers import PYTHON, RECORD_ARGS, calls, entry, write_registry, write_script
from conftest import all_files, jpeg_bytes, write_config
from test_relay import upload

MODULE = '''
import threading
from pathlib import Path
from medimage_tx.addons.python_api import Page, Result

seen = []
release = threading.Event()
mode = {"photo": "ok"}

def photo_written(stored):
    seen.append(("photo", stored.relative, stored.event, stored.path.is_file(), str(stored.parent_dir)))
    if mode["photo"] == "raise":
        raise RuntimeError("the practice database is down")
    if mode["photo"] == "hang":
        release.wait()
        return None
    note = stored.path.with_name(stored.path.stem + ".note.txt")
    note.write_text("checked " + stored.relative)
    return Result(backup_files=[str(note)])

def file_written(stored):
    seen.append(("file", stored.relative, stored.event))

url_names = ("py-hello",)

def url_request(request):
    seen.append(("url", request.name, request.query))
    return Page(("hello " + request.query.get("who", "?")).encode(), "text/plain")
'''


@pytest.fixture
def python_addon(tmp_path, monkeypatch):
    """
    An installed Python add-on: a module and its dist-info with the entry
    point, on sys.path (as pip would install it).
    """
    site = tmp_path / "site"
    site.mkdir()
    (site / "medimage_test_addon.py").write_text(MODULE)
    info = site / "medimage_test_addon-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: medimage-test-addon\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[medimage_tx.addons]\nchecker = medimage_test_addon\n")
    monkeypatch.syspath_prepend(str(site))
    import medimage_test_addon
    yield medimage_test_addon
    medimage_test_addon.release.set()
    sys.modules.pop("medimage_test_addon", None)


@pytest_twisted.ensureDeferred
async def test_python_add_on_gets_its_events_and_its_files_are_copied(
        start_server, http_client, tmp_path, python_addon):
    target = tmp_path / "clinic"
    target.mkdir()
    server = await start_server(backupTo=[target.as_posix()],
                                allowedTypes=[{"extension": ".jpg", "mime": "image/jpeg"},
                                              {"extension": ".pdf", "mime": "application/pdf"}])
    assert (await upload(http_client, server, "#P1-arm.jpg", jpeg_bytes()))[0] == 200
    assert (await upload(http_client, server, "#P1-letter.pdf", b"%PDF-1.4\n%%EOF\n"))[0] == 200
    await server.service.state.addons.idle()
    assert python_addon.seen == [("photo", "P1/arm.jpg", "photoWritten", True, str(server.data)),
                                 ("file", "P1/letter.pdf", "fileWritten")]
    assert (target / "P1" / "arm.note.txt").read_text() == "checked P1/arm.jpg"
    assert (target / "P1" / "arm.jpg").exists() and (target / "P1" / "letter.pdf").exists()
    response = await http_client.get(server.url + "/addon/py-hello?who=Jo",
                                     headers={b"Sec-Fetch-Site": [b"same-origin"]})
    assert (response.code, await response.content()) == (200, b"hello Jo")


@pytest_twisted.ensureDeferred
async def test_failing_or_hanging_python_add_on_never_costs_the_photo(
        start_server, http_client, tmp_path, python_addon):
    clock = Clock()
    target = tmp_path / "clinic"
    target.mkdir()
    server = await start_server(backupTo=[target.as_posix()],
                                tune=lambda service: setattr(service.state.addons, "clock", clock))
    addons = server.service.state.addons
    python_addon.mode["photo"] = "raise"
    with capturedLogs() as events:
        assert await upload(http_client, server, "#P1-a.jpg", jpeg_bytes()) == (200, b"Received upload successfully!")
        await addons.idle()
    assert (target / "P1" / "a.jpg").exists()
    assert "the practice database is down" in "\n".join(formatEvent(e) + str(e.get("log_failure", ""))
                                                        for e in events)
    python_addon.mode["photo"] = "hang"
    assert await upload(http_client, server, "#P1-b.jpg", jpeg_bytes()) == (200, b"Received upload successfully!")
    assert not (target / "P1" / "b.jpg").exists()
    clock.advance(61)  # past the time limit: stop waiting for it
    await addons.idle()
    assert (target / "P1" / "b.jpg").exists()


@pytest_twisted.ensureDeferred
async def test_add_ons_of_a_photo_left_by_a_crash_run_at_the_next_start(start_server, http_client, tmp_path):
    """
    The server stopped after the phone's 200 and before the add-ons ran:
    they run at the next start, then the photo is copied.
    """
    from medimage_tx.photos.store import PhotoStore

    target = tmp_path / "clinic"
    target.mkdir()
    data = tmp_path / "pc"
    store = PhotoStore(data, [target], keep_master=True)
    store.prepare()
    temp = store.temp / "upload.part"
    photo = jpeg_bytes()
    temp.write_bytes(photo)
    assert store.stage(temp, None, ["P1", "x.jpg"]).relative == "P1/x.jpg"
    assert json.loads(next(store.pending.glob("*.json")).read_text())["addons"] is True
    write_script(data, "record.py", RECORD_ARGS)
    write_registry(data, photoWritten=[entry(f"{PYTHON} parentdir/addons/test/record.py param1")])
    server = await start_server(backupTo=[target.as_posix()])  # the same folder: "pc"
    await server.service.state.addons.idle()
    assert calls(data) == [{"argv": [str(data / "photos" / "P1" / "x.jpg")], "cwd": str(data)}]
    assert (target / "P1" / "x.jpg").read_bytes() == photo
    assert all_files(data / "pending") == []


@pytest_twisted.ensureDeferred
async def test_stopping_the_server_stops_add_ons_and_they_run_again_at_start(start_server, http_client, tmp_path):
    target = tmp_path / "clinic"
    target.mkdir()
    server = await start_server(backupTo=[target.as_posix()])
    write_script(server.data, "hang.sh", "#!/bin/sh\nexec sleep 600\n")
    write_registry(server.data, photoWritten=[entry("parentdir/addons/test/hang.sh param1")])
    photo = jpeg_bytes()
    assert await upload(http_client, server, "#P1-x.jpg", photo) == (200, b"Received upload successfully!")
    [pid] = server.service.state.addons.processes
    await server.service.stopService()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not (target / "P1" / "x.jpg").exists()
    assert json.loads(next((server.data / "pending").glob("*.json")).read_text())["addons"] is True
    write_script(server.data, "record.py", RECORD_ARGS)
    write_registry(server.data, photoWritten=[entry(f"{PYTHON} parentdir/addons/test/record.py param1")])
    again = await start_server(backupTo=[target.as_posix()])  # the same folder
    await again.service.state.addons.idle()
    assert [c["argv"] for c in calls(again.data)] == [[str(again.photos / "P1" / "x.jpg")]]
    assert (target / "P1" / "x.jpg").read_bytes() == photo
