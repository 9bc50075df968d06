"""
photoWritten and fileWritten add-ons (issue 13): real scripts (shell,
Python, Node.js) run by a real server on loopback, for direct uploads and
for photos pulled from a relay.
"""

from __future__ import annotations

import json
import os
import shutil
import signal

import psutil
import pytest
import pytest_twisted
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from addon_helpers import PYTHON, RECORD_ARGS, calls, entry, write_registry, write_script
from conftest import all_files, jpeg_bytes, multipart
from test_relay import PAIRED_ID, next_delivery, start_pc, start_relay, upload

APP_NAME = "#NHID1234-arm-27-Nov-2026-10-11-12.jpg"
STORED = "NHID1234/arm-27-Nov-2026-10-11-12.jpg"


async def start_with_targets(start_server, tmp_path, **settings):
    targets = [tmp_path / "clinic", tmp_path / "backup"]
    for target in targets:
        target.mkdir()
    server = await start_server(backupTo=[t.as_posix() for t in targets], **settings)
    return server, targets


async def send(http_client, server, name: str, content: bytes):
    code, body = await upload(http_client, server, name, content)
    return code, body


@pytest_twisted.ensureDeferred
async def test_photo_written_gets_original_arguments_and_its_backup_files_land_everywhere(
        start_server, http_client, tmp_path):
    server, targets = await start_with_targets(start_server, tmp_path)
    write_script(server.data, "record.py", RECORD_ARGS)
    write_script(server.data, "extra.sh", """\
#!/bin/sh
# Writes a thumbnail beside the photo and asks for it to be copied.
thumb="$(dirname "$1")/thumb.txt"
echo "thumbnail of $1" > "$thumb"
echo "made a thumbnail"
echo "backupFiles:$thumb"
""")
    write_registry(server.data, photoWritten=[
        entry(f"{PYTHON} parentdir/addons/test/record.py param1 param2 param3"),
        entry("sh parentdir/addons/test/extra.sh param1"),
    ])
    photo = jpeg_bytes()
    assert await send(http_client, server, APP_NAME, photo) == (200, b"Received upload successfully!")
    await server.service.state.addons.idle()
    staged = server.photos / STORED
    assert calls(server.data) == [{"argv": [str(staged), "undefined", "undefined"],
                                   "cwd": str(server.data)}]
    for target in targets:
        assert (target / STORED).read_bytes() == photo
        assert (target / "NHID1234" / "thumb.txt").read_text() == f"thumbnail of {staged}\n"
    assert all_files(server.data / "pending") == []


@pytest_twisted.ensureDeferred
async def test_backup_file_renamed_is_what_lands(start_server, http_client, tmp_path):
    server, targets = await start_with_targets(start_server, tmp_path, keepMaster=False)
    write_script(server.data, "rename.py", """\
import os, sys
photo = sys.argv[1]
renamed = photo.replace(".jpg", "-checked.jpg")
os.rename(photo, renamed)
print("renamed it")
print("backupFileRenamed:" + renamed)
""")
    write_registry(server.data, photoWritten=[entry(f"{PYTHON} parentdir/addons/test/rename.py param1",
                                                    priority="low")])
    photo = jpeg_bytes()
    assert (await send(http_client, server, APP_NAME, photo))[0] == 200
    await server.service.state.addons.idle()
    for target in targets:
        assert [p.relative_to(target).as_posix() for p in all_files(target)] == \
            ["NHID1234/arm-27-Nov-2026-10-11-12-checked.jpg"]
        assert (target / "NHID1234" / "arm-27-Nov-2026-10-11-12-checked.jpg").read_bytes() == photo
    assert all_files(server.photos) == []  # keepMaster false: the renamed photo moved on
    assert all_files(server.data / "pending") == []


@pytest_twisted.ensureDeferred
async def test_file_written_runs_for_a_pdf_and_not_for_a_jpeg(start_server, http_client, tmp_path):
    server, targets = await start_with_targets(
        start_server, tmp_path,
        allowedTypes=[{"extension": ".jpg", "mime": "image/jpeg"},
                      {"extension": ".pdf", "mime": "application/pdf"}])
    write_script(server.data, "record.py", RECORD_ARGS)
    write_script(server.data, "photo.sh", "#!/bin/sh\necho \"$1\" >> \"$(dirname \"$0\")/photos.txt\"\n")
    write_registry(server.data,
                   fileWritten=[entry(f"{PYTHON} parentdir/addons/test/record.py param1")],
                   photoWritten=[entry("parentdir/addons/test/photo.sh param1")])
    pdf = b"%PDF-1.4\n" + b"x" * 1000 + b"\n%%EOF\n"
    assert (await send(http_client, server, "#NHID1234-letter.pdf", pdf))[0] == 200
    assert (await send(http_client, server, APP_NAME, jpeg_bytes()))[0] == 200
    await server.service.state.addons.idle()
    assert [c["argv"] for c in calls(server.data)] == [[str(server.photos / "NHID1234" / "letter.pdf")]]
    assert (server.data / "addons" / "test" / "photos.txt").read_text() == f"{server.photos / STORED}\n"
    for target in targets:
        assert (target / "NHID1234" / "letter.pdf").read_bytes() == pdf


BROKEN = {
    "failing": ("#!/bin/sh\necho 'about to fail'\necho 'no database' >&2\nexit 3\n", "exit status 3"),
    "crashing": ("#!/bin/sh\necho 'about to crash'\nkill -SEGV $$\n", f"crashed (signal {signal.SIGSEGV})"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
@pytest_twisted.ensureDeferred
async def test_failing_or_crashing_add_on_leaves_photo_stored_copied_and_answered(
        start_server, http_client, tmp_path, kind):
    server, targets = await start_with_targets(start_server, tmp_path)
    script, how = BROKEN[kind]
    write_script(server.data, "broken.sh", script)
    write_script(server.data, "record.py", RECORD_ARGS)
    write_registry(server.data, photoWritten=[
        entry("parentdir/addons/test/broken.sh param1"),
        entry(f"{PYTHON} parentdir/addons/test/record.py param1"),  # the next one still runs
    ])
    photo = jpeg_bytes()
    with capturedLogs() as events:
        assert await send(http_client, server, APP_NAME, photo) == (200, b"Received upload successfully!")
        await server.service.state.addons.idle()
    for target in targets:
        assert (target / STORED).read_bytes() == photo
    assert (server.photos / STORED).read_bytes() == photo
    assert len(calls(server.data)) == 1
    logged = "\n".join(formatEvent(e) for e in events)
    assert how in logged and f"about to {kind[:-3]}" in logged
    if kind == "failing":
        assert "no database" in logged


@pytest_twisted.ensureDeferred
async def test_hanging_add_on_is_stopped_at_its_time_limit_and_the_photo_copied(
        start_server, http_client, tmp_path):
    clock = Clock()

    def addon_clock(service):
        service.state.addons.clock = clock

    server, targets = await start_with_targets(start_server, tmp_path, tune=addon_clock)
    write_script(server.data, "hang.sh", "#!/bin/sh\necho 'waiting for ever'\nexec sleep 600\n")
    write_registry(server.data, photoWritten=[entry("parentdir/addons/test/hang.sh param1",
                                                    timeoutSeconds=30)])
    photo = jpeg_bytes()
    with capturedLogs() as events:
        # The phone's answer does not wait for the add-on.
        assert await send(http_client, server, APP_NAME, photo) == (200, b"Received upload successfully!")
        assert (server.photos / STORED).read_bytes() == photo
        assert not (targets[0] / STORED).exists()  # copies come after the add-ons
        [pid] = server.service.state.addons.processes
        clock.advance(31)
        await server.service.state.addons.idle()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    for target in targets:
        assert (target / STORED).read_bytes() == photo
    assert "stopped after its time limit" in "\n".join(formatEvent(e) for e in events)
    assert server.service.state.addons.processes == set()


@pytest.mark.skipif(shutil.which("node") is None, reason="node (Node.js) is not installed")
@pytest_twisted.ensureDeferred
async def test_node_add_ons_plain_and_embeddable(start_server, http_client, tmp_path):
    server, targets = await start_with_targets(start_server, tmp_path)
    # A plain script, run as "node script param1" (priority medium).
    write_script(server.data, "note.js", """\
const fs = require('fs'), path = require('path');
const note = path.join(path.dirname(process.argv[2]), 'note.txt');
fs.writeFileSync(note, 'seen ' + path.basename(process.argv[2]));
console.log('backupFiles:' + note);
""")
    # A module written to be embedded (priority high): only medImage() does the work.
    write_script(server.data, "embedded.js", """\
const fs = require('fs'), path = require('path');
module.exports = { medImage: function (argv, callback) {
  const extra = path.join(path.dirname(argv[0]), 'embedded.txt');
  fs.writeFileSync(extra, 'embedded ' + argv.length);
  callback(null, { stdout: 'backupFiles:' + extra, stderr: '' });
} };
""")
    write_registry(server.data, photoWritten=[
        entry("node parentdir/addons/test/note.js param1"),
        entry("node parentdir/addons/test/embedded.js param1", priority="high"),
    ])
    assert (await send(http_client, server, APP_NAME, jpeg_bytes()))[0] == 200
    await server.service.state.addons.idle()
    for target in targets:
        assert (target / "NHID1234" / "note.txt").read_text() == "seen arm-27-Nov-2026-10-11-12.jpg"
        assert (target / "NHID1234" / "embedded.txt").read_text() == "embedded 1"


@pytest_twisted.ensureDeferred
async def test_add_ons_run_for_photos_pulled_from_the_relay(start_server, http_client, tmp_path):
    relay = await start_relay(start_server, Clock())
    pc, target = await start_pc(start_server, tmp_path, f"{relay.url}/read/{PAIRED_ID}")
    write_script(pc.data, "record.py", RECORD_ARGS)
    write_script(pc.data, "extra.sh", "#!/bin/sh\necho done > \"$1.txt\"\necho \"backupFiles:$1.txt\"\n")
    write_registry(pc.data, photoWritten=[
        entry(f"{PYTHON} parentdir/addons/test/record.py param1"),
        entry("sh parentdir/addons/test/extra.sh param1"),
    ])
    delivered = next_delivery(pc)
    photo = jpeg_bytes()
    assert await upload(http_client, relay, f"#{PAIRED_ID}-{APP_NAME}", photo) == \
        (200, b"Received upload successfully!")
    assert await delivered == STORED
    await pc.service.state.addons.idle()
    assert calls(pc.data) == [{"argv": [str(pc.photos / STORED)], "cwd": str(pc.data)}]
    assert (target / STORED).read_bytes() == photo
    assert (target / (STORED + ".txt")).read_text() == "done\n"


@pytest_twisted.ensureDeferred
async def test_registry_edits_count_without_restart_and_inactive_entries_do_not_run(
        start_server, http_client, tmp_path):
    server, targets = await start_with_targets(start_server, tmp_path)
    write_script(server.data, "record.py", RECORD_ARGS)
    assert (await send(http_client, server, APP_NAME, jpeg_bytes(seed=1)))[0] == 200
    write_registry(server.data, photoWritten=[
        {**entry(f"{PYTHON} parentdir/addons/test/record.py param1"), "active": False}])
    assert (await send(http_client, server, APP_NAME, jpeg_bytes(seed=2)))[0] == 200
    write_registry(server.data, photoWritten=[entry(f"{PYTHON} parentdir/addons/test/record.py param1")])
    assert (await send(http_client, server, APP_NAME, jpeg_bytes(seed=3)))[0] == 200
    await server.service.state.addons.idle()
    assert [c["argv"] for c in calls(server.data)] == [[str(server.photos / "NHID1234" /
                                                             "arm-27-Nov-2026-10-11-12-2.jpg")]]
    assert len(all_files(targets[0])) == 3


@pytest_twisted.ensureDeferred
async def test_glacial_runs_at_low_priority_and_target_folder_add_ons_get_the_copy(
        start_server, http_client, tmp_path):
    server, targets = await start_with_targets(start_server, tmp_path)
    write_script(server.data, "where.py", """\
import json, os, sys
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "where.jsonl"), "a") as f:
    f.write(json.dumps({"param1": sys.argv[1], "exists": os.path.isfile(sys.argv[1]),
                        "nice": os.nice(0)}) + "\\n")
""")
    write_registry(server.data, photoWritten=[
        entry(f"{PYTHON} parentdir/addons/test/where.py param1", priority="glacial"),
        entry(f"{PYTHON} parentdir/addons/test/where.py param1", useTargetFolderFile=True),
    ])
    assert (await send(http_client, server, APP_NAME, jpeg_bytes()))[0] == 200
    await server.service.state.addons.idle()
    lines = (server.data / "addons" / "test" / "where.jsonl").read_text().splitlines()
    glacial, target = (json.loads(line) for line in lines)
    base = os.nice(0)
    assert glacial == {"param1": str(server.photos / STORED), "exists": True, "nice": min(base + 10, 19)}
    assert target == {"param1": str(targets[0] / STORED), "exists": True, "nice": base}
    for folder in targets:
        assert (folder / STORED).exists()
