"""
`medimage-tx migrate --from <original folder>` (also `python -m medimage_tx`): the original's
config.json copied unchanged, its waiting photos filed as if just received
(durable store, then the backupTo copies), and a report of what was done.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from conftest import all_files, jpeg_bytes, skip_unless_user_runs_this_python
from processes import spawn

from medimage_tx.cli import main

PAIRED_ID = "bS6FpXvwagUbeMIXnM"
COMMAND = Path(sys.executable).parent / "medimage-tx"


def original_install(folder: Path, **settings) -> Path:
    """
    A folder as the original server leaves it: config.json in its own
    formatting, photos/ with what is still waiting, addons/.
    """
    config = {
        "purpose": "MedImage Server Configuration File.",
        "backupTo": [],
        "readProxy": f"https://relay.example:5566/read/{PAIRED_ID}",
        "globalId": PAIRED_ID,
        "transfer": 45652482,
        "listenPort": 5566,
        "allowPhotosLeaving": False,
        "allowGettingRemotePhotos": True,
        "webProxy": None,
        "keepMaster": False,
        "lockDown": False,
        "basicAuthent": "changeme",
        **settings,
    }
    folder.mkdir(parents=True)
    # The original writes with six-space indents: kept byte for byte.
    (folder / "config.json").write_text(json.dumps(config, indent=6))
    (folder / "addons" / "medtech32").mkdir(parents=True)
    return folder


def put(folder: Path, relative: str, content: bytes) -> bytes:
    path = folder / "photos" / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return content


def test_takes_over_config_and_files_waiting_photos_into_the_target(tmp_path, capsys):
    target = tmp_path / "clinic"
    target.mkdir()
    original = original_install(tmp_path / "old" / "MedImage", backupTo=[target.as_posix()])
    arm = put(original, "NHID1234/arm-27-Nov-2026-10-11-12.jpg", jpeg_bytes(30_000))
    scan = put(original, "moles/John123/scan.pdf", b"%PDF-1.4\n" + b"x" * 3000)
    put(original, ".DS_Store", b"finder")
    ours = tmp_path / "new"

    assert main(["migrate", "--from", str(original), "--data", str(ours)]) == 0
    out = capsys.readouterr().out
    assert (ours / "config.json").read_bytes() == (original / "config.json").read_bytes()
    assert (target / "NHID1234" / "arm-27-Nov-2026-10-11-12.jpg").read_bytes() == arm
    assert (target / "moles" / "John123" / "scan.pdf").read_bytes() == scan
    assert all_files(ours / "photos") == []  # keepMaster: false, as received photos
    assert all_files(ours / "tmp") == []
    assert f"Copied {original / 'config.json'} to {ours / 'config.json'} unchanged." in out
    assert "2 filed, 0 staged for add-ons, 0 already here, 0 not taken over" in out
    assert "filed: NHID1234/arm-27-Nov-2026-10-11-12.jpg" in out
    assert "ignored (hidden file): .DS_Store" in out
    assert f"Add-ons (medtech32): the original's addons folder is now {ours / 'addons'}" in out
    assert (ours / "addons" / "medtech32").is_dir()
    assert f"Filed into {target}, as if just received." in out
    # The original's files are left as they were.
    assert (original / "photos" / "NHID1234" / "arm-27-Nov-2026-10-11-12.jpg").read_bytes() == arm

    # Running it again changes nothing and duplicates nothing.
    assert main(["migrate", "--from", str(original), "--data", str(ours)]) == 0
    out = capsys.readouterr().out
    assert "already holds" in out and "0 filed, 0 staged for add-ons, 2 already here" in out
    assert len(all_files(target)) == 2


def test_a_different_config_here_is_kept_unless_replace(tmp_path, capsys):
    original = original_install(tmp_path / "old")
    ours = tmp_path / "new"
    ours.mkdir()
    mine = b'{"listenPort": 5567}\n'
    (ours / "config.json").write_bytes(mine)

    assert main(["migrate", "--from", str(original), "--data", str(ours)]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "already exists with other settings" in error and "--replace" in error
    assert (ours / "config.json").read_bytes() == mine  # nothing changed

    assert main(["migrate", "--from", str(original), "--data", str(ours), "--replace"]) == 0
    assert (ours / "config.json").read_bytes() == (original / "config.json").read_bytes()
    assert (ours / "config.json.before-migration").read_bytes() == mine


def test_not_an_original_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["migrate", "--from", str(tmp_path / "empty"), "--data", str(tmp_path / "new")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no config.json here" in error
    assert not (tmp_path / "new").exists()


def test_unusable_original_config_changes_nothing(tmp_path, capsys):
    original = original_install(tmp_path / "old")
    (original / "config.json").write_text('{"listenPort": "abc"}')
    ours = tmp_path / "new"
    assert main(["migrate", "--from", str(original), "--data", str(ours)]) == 1
    assert "key 'listenPort'" in capsys.readouterr().err
    assert not (ours / "config.json").exists()


@pytest.mark.skipif(not COMMAND.exists(), reason=f"no medimage-tx beside {sys.executable}: run `make test`")
@pytest_twisted.ensureDeferred
async def test_copy_to_a_missing_target_is_made_once_the_server_runs(tmp_path):
    from twisted.internet import reactor

    from medimage_tx.tap import build_service

    target = tmp_path / "share"  # not connected yet
    original = original_install(tmp_path / "old", backupTo=[target.as_posix()])
    photo = put(original, "NHID1234/arm.jpg", jpeg_bytes(20_000))
    ours = tmp_path / "new"
    # The installed console script, run outside the repository.
    run = spawn([str(COMMAND), "migrate", "--from", str(original), "--data", str(ours)], str(tmp_path))
    assert await run.exited() == 0, run.output
    assert b"1 filed" in run.output and b"not made yet" in run.output
    # Durable in this server's staging folder meanwhile, never lost.
    assert (ours / "photos" / "NHID1234" / "arm.jpg").read_bytes() == photo
    target.mkdir()
    service = build_service(reactor, ours, port=0, interface="127.0.0.1", no_lan=True)
    service.startService()
    try:
        await service.http.listening
        await service.state.backups.recovered
        assert (target / "NHID1234" / "arm.jpg").read_bytes() == photo
        assert all_files(ours / "photos") == []
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_original_relay_queue_is_taken_over(tmp_path, http_client):
    from twisted.internet import reactor

    from medimage_tx.tap import build_service

    original = original_install(tmp_path / "old", allowPhotosLeaving=True, allowGettingRemotePhotos=False,
                                backupTo=None, readProxy=None, globalId=None, lockDown=True)
    photo = put(original, f"{PAIRED_ID}/NHID1234/arm.jpg", jpeg_bytes(20_000))
    ours = tmp_path / "relay"
    assert main(["migrate", "--from", str(original), "--data", str(ours)]) == 0
    service = build_service(reactor, ours, port=0, interface="127.0.0.1", clock=Clock(), no_lan=True)
    service.startService()
    try:
        port = (await service.http.listening).getHost().port
        response = await http_client.get(f"http://127.0.0.1:{port}/read/{PAIRED_ID}")
        assert response.headers.getRawHeaders(b"file-name") == [f"/{PAIRED_ID}/NHID1234/arm.jpg".encode()]
        assert await response.content() == photo
    finally:
        await service.stopService()


def test_keep_master_original_copies_only_what_the_target_lacks(tmp_path, capsys):
    target = tmp_path / "clinic"
    original = original_install(tmp_path / "old", backupTo=[target.as_posix()], keepMaster=True)
    delivered = put(original, "NHID1234/arm.jpg", jpeg_bytes(10_000))
    (target / "NHID1234").mkdir(parents=True)
    (target / "NHID1234" / "arm.jpg").write_bytes(delivered)  # the original copied it long ago
    waiting = put(original, "NHID1234/leg.jpg", jpeg_bytes(10_000))  # its copy had failed
    ours = tmp_path / "new"
    config = tmp_path / "etc" / "medimage.json"
    assert main(["migrate", "--from", str(original), "--data", str(ours), "--config", str(config)]) == 0
    assert config.read_bytes() == (original / "config.json").read_bytes()
    assert sorted(p.name for p in all_files(target)) == ["arm.jpg", "leg.jpg"]  # no arm-1.jpg
    assert (target / "NHID1234" / "leg.jpg").read_bytes() == waiting
    # keepMaster: true here too, as the copied config says.
    assert (ours / "photos" / "NHID1234" / "leg.jpg").read_bytes() == waiting


@pytest_twisted.ensureDeferred
async def test_photos_with_add_ons_get_them_run_by_the_server_then_copied(tmp_path, capsys):
    from twisted.internet import reactor

    from medimage_tx.tap import build_service

    target = tmp_path / "clinic"
    target.mkdir()
    original = original_install(tmp_path / "old", backupTo=[target.as_posix()])
    hook = original / "addons" / "stamp" / "hook.sh"
    hook.parent.mkdir(parents=True)
    hook.write_text('echo "$1" >> "$(dirname "$0")/seen"\n')
    (original / "addons" / "config.json").write_text(json.dumps({"events": {
        "photoWritten": [{"addon": "stamp", "runProcess": "sh parentdir/addons/stamp/hook.sh param1",
                          "priority": "medium", "active": True}],
        "fileWritten": [], "urlRequest": []}}, indent=6))
    photo = put(original, "NHID1234/arm.jpg", jpeg_bytes(20_000))
    scan = put(original, "NHID1234/scan.pdf", b"%PDF-1.4\n" + b"x" * 2000)  # no fileWritten add-on
    ours = tmp_path / "new"
    assert main(["migrate", "--from", str(original), "--data", str(ours)]) == 0
    out = capsys.readouterr().out
    assert "1 filed, 1 staged for add-ons" in out
    assert "staged for its add-ons: NHID1234/arm.jpg" in out
    assert (target / "NHID1234" / "scan.pdf").read_bytes() == scan  # copied at once
    assert not (target / "NHID1234" / "arm.jpg").exists()  # waits for its add-on
    assert (ours / "photos" / "NHID1234" / "arm.jpg").read_bytes() == photo  # durable meanwhile
    service = build_service(reactor, ours, port=0, interface="127.0.0.1", no_lan=True)
    service.startService()
    try:
        await service.http.listening
        await service.state.backups.recovered
        await service.state.addons.idle()
        seen = (ours / "addons" / "stamp" / "seen").read_text().split()
        assert seen == [str(ours / "photos" / "NHID1234" / "arm.jpg")]
        assert (target / "NHID1234" / "arm.jpg").read_bytes() == photo
    finally:
        await service.stopService()


def test_a_config_unusable_at_its_new_place_changes_nothing(tmp_path, capsys):
    original = original_install(tmp_path / "old", httpsKey="keys/key.pem", httpsCert="keys/cert.pem")
    (original / "keys").mkdir()
    (original / "keys" / "key.pem").write_text("key")
    (original / "keys" / "cert.pem").write_text("cert")
    ours = tmp_path / "new"
    assert main(["migrate", "--from", str(original), "--data", str(ours)]) == 1
    error = capsys.readouterr().err
    assert "cannot read 'keys/key.pem'" in error and error.count("\n") == 1
    assert not (ours / "config.json").exists()


def write(folder: Path, relative: str, text: str) -> None:
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_originals_add_ons_get_their_node_modules_and_pages_or_are_made_inactive(tmp_path):
    import shutil
    import subprocess

    original = original_install(tmp_path / "old" / "medimageserv")
    # Add-ons shaped like the original's bundled ones: scripts that require()
    # modules of the original server's own node_modules, one folder above.
    write(original, "addons/log-viewer/view-log.js",
          "var fs = require('fs');\nconst Entities = require('html-entities');\n"
          "console.log('returnParams:?LOG=' + Entities.encode('<b>log</b>'));\n")
    # A require() that is a path trick names no package (it would name all of node_modules).
    write(original, "addons/log-viewer/old.js", "require('@x/..');\nrequire('fs/promises');\n")
    write(original, "addons/change-folder/set-folder.js",
          "var multiparty = require('multiparty');\nvar upath = require(\"upath\");\n")
    write(original, "node_modules/html-entities/package.json",
          json.dumps({"name": "html-entities", "main": "index.js", "dependencies": {"he-core": "^1"}}))
    write(original, "node_modules/html-entities/index.js",
          "var core = require('he-core');\nmodule.exports = {encode: core.escape};\n")
    write(original, "node_modules/he-core/package.json", json.dumps({"name": "he-core", "main": "core.js"}))
    write(original, "node_modules/he-core/core.js",
          "module.exports = {escape: function (s) { return s.replace(/</g, '&lt;'); }};\n")
    write(original, "node_modules/multiparty/package.json", json.dumps({"name": "multiparty"}))
    write(original, "node_modules/multiparty/index.js", "module.exports = {};\n")
    write(original, "node_modules/drivelist/package.json", json.dumps({"name": "drivelist"}))
    (original / "addons" / "config.json").write_text(json.dumps({"events": {"urlRequest": [
        {"addon": "Log Viewer", "scriptURLName": "view-log", "active": True,
         "runProcess": "node parentdir/addons/log-viewer/view-log.js param1",
         "waitForRequestFinish": "view-log.html"},
        {"addon": "Change Folder", "scriptURLName": "change-folder", "active": True,
         "runProcess": "node parentdir/addons/change-folder/set-folder.js param1",
         "waitForRequestFinish": "change-folder-settings.html"}]}}, indent=4))
    write(original, "public/pages/view-log.html", "<pre>LOG</pre>")
    write(original, "public/components/header.html", "<nav>the original's menu</nav>")
    ours = tmp_path / "new"
    write(ours, "public/pages/index.html", "ours")
    write(original, "public/pages/index.html", "the original's")

    done = subprocess.run([sys.executable, "-m", "medimage_tx", "migrate", "--from", str(original),
                           "--data", str(ours)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # The modules the add-ons need, with what they need, and nothing else.
    assert sorted(p.name for p in (ours / "node_modules").iterdir()) == ["he-core", "html-entities",
                                                                         "multiparty"]
    # upath is nowhere: change-folder is made inactive, and the report says how to fix it.
    registry = json.loads((ours / "addons" / "config.json").read_text())
    active = {e["addon"]: e["active"] for e in registry["events"]["urlRequest"]}
    assert active == {"Log Viewer": True, "Change Folder": False}
    assert f"cd {ours} && npm install upath" in done.stdout, done.stdout
    # The pages came too; ours were not replaced.
    assert (ours / "public" / "pages" / "view-log.html").read_text() == "<pre>LOG</pre>"
    assert (ours / "public" / "components" / "header.html").exists()
    assert (ours / "public" / "pages" / "index.html").read_text() == "ours"
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("node (Node.js) is not installed: the add-on cannot be run")
    ran = subprocess.run([node, "addons/log-viewer/view-log.js", "x"], cwd=ours, capture_output=True,
                         text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert "returnParams:?LOG=&lt;b>log&lt;/b>" in ran.stdout


def test_migrate_says_when_the_add_ons_need_node_and_it_is_missing(tmp_path):
    import os
    import subprocess

    original = original_install(tmp_path / "old" / "medimageserv")
    write(original, "addons/resize/resize.js", "console.log('resized');\n")
    (original / "addons" / "config.json").write_text(json.dumps({"events": {"photoWritten": [
        {"addon": "Resize", "runProcess": "node parentdir/addons/resize/resize.js param1",
         "active": True}]}}))
    bin_dir = tmp_path / "bin"  # a PATH without node
    bin_dir.mkdir()
    os.symlink("/bin/sh", bin_dir / "sh")
    done = subprocess.run([sys.executable, "-m", "medimage_tx", "migrate", "--from", str(original),
                           "--data", str(tmp_path / "new")], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PATH": str(bin_dir)})
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if "Node.js" in line]
    assert len(lines) == 1 and "https://nodejs.org" in lines[0], done.stdout


def run_migrate(original: Path, *more: str, env: dict | None = None, cwd: Path | None = None):
    """
    The installed C{medimage-tx migrate}, a real process.
    """
    import os
    import subprocess

    if env is None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(COMMAND), "migrate", "--from", str(original), *more], capture_output=True,
                          text=True, timeout=120, env=env, cwd=cwd or original.parent)


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) if folder.exists() else []


needs_command = pytest.mark.skipif(not COMMAND.exists(), reason=f"no medimage-tx beside {sys.executable}: run `make test`")


@needs_command
@pytest.mark.parametrize("where", ["photos", "config.json", "addons", "photos/P1", "photos/P1/x.jpg",
                                   "addons/medtech32/run.sh", "node_modules", "public"])
def test_a_link_anywhere_it_reads_stops_migrate_with_one_line_and_changes_nothing(tmp_path, where):
    # Issue 19, item 1: root ran migrate on a folder whose `photos` was a
    # link to a root-only folder, and filed what it held as 0644 photos.
    import os

    secret = tmp_path / "root-only"
    (secret / "P1").mkdir(parents=True)
    (secret / "P1" / "x.jpg").write_bytes(jpeg_bytes(5_000, seed=7))
    (secret / "medtech32").mkdir()
    (secret / "run.sh").write_text("echo secret\n")
    (secret / "config.json").write_text(json.dumps({"backupTo": [], "keepMaster": True}))
    os.chmod(secret, 0o700)
    os.chmod(secret / "P1" / "x.jpg", 0o600)
    original = original_install(tmp_path / "old")
    put(original, "P1/real.jpg", jpeg_bytes(5_000))
    (original / "addons" / "medtech32" / "run.sh").write_text("echo original\n")
    link = original / where
    if link.is_dir():
        import shutil

        shutil.rmtree(link)
    elif link.exists():
        link.unlink()
    link.parent.mkdir(parents=True, exist_ok=True)
    pointed = {"photos": secret, "config.json": secret / "config.json", "addons": secret,
               "photos/P1": secret / "P1", "photos/P1/x.jpg": secret / "P1" / "x.jpg",
               "addons/medtech32/run.sh": secret / "run.sh", "node_modules": secret, "public": secret}[where]
    link.symlink_to(pointed)
    ours, clinic = tmp_path / "new", tmp_path / "clinic"

    done = run_migrate(original, "--data", str(ours))
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"{link}: a link" in lines[0] and "Nothing was changed" in lines[0]
    assert files_under(ours) == [] and files_under(clinic) == []


@needs_command
def test_the_originals_photos_readme_is_not_filed(tmp_path):
    # Issue 20, item 5: the original ships photos/README.md; it is no photo
    # a phone sent, so it must not land in the practice folder.
    clinic = tmp_path / "clinic"
    clinic.mkdir()
    original = original_install(tmp_path / "old", backupTo=[clinic.as_posix()])
    put(original, "README.md", b"This folder holds the photos received, before they are copied.\n")
    photo = put(original, "NHID1234/arm.jpg", jpeg_bytes(5_000))
    ours = tmp_path / "new"
    done = run_migrate(original, "--data", str(ours))
    assert done.returncode == 0, done.stderr
    assert files_under(clinic) == ["NHID1234", "NHID1234/arm.jpg"]
    assert (clinic / "NHID1234" / "arm.jpg").read_bytes() == photo
    assert not (ours / "photos" / "README.md").exists()
    assert "1 filed" in done.stdout and "README.md" in done.stdout  # said, not silently dropped


SERVICE_UID = 4321  # a user id no account on this machine has: chown and setpriv take numbers


@pytest.fixture
def shared_folder():
    """
    A folder another user can enter (pytest's own are 0700), removed after.
    """
    import os
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="medimage-migrate-"))
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def owners(folder: Path) -> set[tuple[int, int]]:
    return {(p.lstat().st_uid, p.lstat().st_gid) for p in [folder, *folder.rglob("*")]}


@needs_command
@pytest.mark.parametrize("how", ["data folder's owner", "SUDO_UID", "--user"])
@pytest_twisted.ensureDeferred
async def test_migrate_as_root_hands_everything_to_the_service_user_who_then_starts_it(shared_folder, how):
    # Issue 19, item 2: `sudo medimage-tx migrate` left config.json root's
    # and 0600, and the folders root's: the service user could not start.
    import os
    import shutil
    import signal

    from conftest import skip_here_fail_in_ci

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        skip_here_fail_in_ci("needs root and setpriv")
    clinic = shared_folder / "clinic"
    clinic.mkdir()
    os.chown(clinic, SERVICE_UID, SERVICE_UID)  # the README: the service user may write here
    original = original_install(shared_folder / "old", backupTo=[clinic.as_posix()], keepMaster=True)
    photo = put(original, "NHID1234/arm.jpg", jpeg_bytes(5_000))
    data = shared_folder / "var-lib-medimage"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(SUDO_UID="0", SUDO_GID="0")
    more = []
    if how == "data folder's owner":  # as `service install` made it
        data.mkdir()
        os.chown(data, SERVICE_UID, SERVICE_UID)
        env.update(SUDO_UID="1000", SUDO_GID="1000")  # the admin who typed sudo: not the service
    elif how == "SUDO_UID":
        env.update(SUDO_UID=str(SERVICE_UID), SUDO_GID=str(SERVICE_UID))
    else:
        more = ["--user", f"#{SERVICE_UID}"]
    done = run_migrate(original, "--data", str(data), *more, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert owners(data) == {(SERVICE_UID, SERVICE_UID)}, done.stdout
    assert owners(clinic) == {(SERVICE_UID, SERVICE_UID)}
    assert (clinic / "NHID1234" / "arm.jpg").read_bytes() == photo
    assert f"owned by {SERVICE_UID}" in done.stdout

    skip_unless_user_runs_this_python(str(SERVICE_UID))
    server = spawn(["setpriv", f"--reuid={SERVICE_UID}", f"--regid={SERVICE_UID}", "--clear-groups",
                    str(COMMAND), "serve", "--data", str(data), "--port", "0", "--no-lan"], str(shared_folder),
                   env=env)
    try:
        await server.wait_for(rb"Start-up check done")
        assert (data / "twistd.pid").exists()
    finally:
        if not server.ended.called:
            server.transport.signalProcess(signal.SIGTERM)
    assert await server.ended_within(60) == -signal.SIGTERM, server.output


@needs_command
@pytest.mark.parametrize("option", ["--data", "--config"])
def test_the_originals_folder_cannot_be_this_servers_too(tmp_path, option):
    # Issue 20, item 4: the README's step 4 renames the original's
    # config.json; were it this server's too, the PC would be unpaired.
    original = original_install(tmp_path / "MedImage")
    put(original, "P1/arm.jpg", jpeg_bytes(5_000))
    before = {p: p.read_bytes() for p in original.rglob("*") if p.is_file()}
    where = str(original) if option == "--data" else str(original / "config.json")
    done = run_migrate(original, option, where, "--data" if option == "--config" else "--replace",
                       *([str(tmp_path / "ours")] if option == "--config" else []))
    assert done.returncode == 1, done.stdout
    assert done.stderr.count("\n") == 1 and "a folder of its own" in done.stderr, done.stderr
    assert {p: p.read_bytes() for p in original.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "ours").exists()


@needs_command
def test_migrate_as_root_with_no_service_user_says_exactly_what_to_run(tmp_path):
    # Issue 19, item 2, the other way: nobody to hand the files to (root,
    # no sudo, a new data folder): it says the command that would.
    import os

    from conftest import skip_here_fail_in_ci

    if os.geteuid() != 0:
        skip_here_fail_in_ci("needs root")
    original = original_install(tmp_path / "old")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SUDO_UID", "SUDO_GID")}
    ours, config = tmp_path / "new", tmp_path / "etc" / "medimage.json"
    done = run_migrate(original, "--data", str(ours), "--config", str(config), env=env)
    assert done.returncode == 0, done.stderr
    assert (f"owned by root: if the server runs as another user, give it the files (e.g. chown -R medimage: "
            f"{ours} {config} {config.parent / 'addons'}) or run again with --user") in done.stdout


@needs_command
@pytest_twisted.ensureDeferred
async def test_migrate_into_the_folder_of_a_running_server_is_refused(tmp_path):
    # The README's Linux order installs the service (it starts at once)
    # before a clinic might migrate into its folder.
    import signal

    from test_readme_claims import readme_says

    readme_says("migrate refuses a data folder a running server uses")

    ours = tmp_path / "var-lib-medimage"
    server = spawn([str(COMMAND), "serve", "--data", str(ours), "--port", "0", "--no-lan"], str(tmp_path))
    try:
        await server.wait_for(rb"Start-up check done")
        original = original_install(tmp_path / "old")
        put(original, "P1/arm.jpg", jpeg_bytes(5_000))
        config_before = (ours / "config.json").read_bytes()
        done = run_migrate(original, "--data", str(ours))
        assert done.returncode == 1, done.stdout
        assert done.stderr.count("\n") == 1 and f"a server (pid {server.transport.pid}) is running" in done.stderr
        assert (ours / "config.json").read_bytes() == config_before
        assert not (ours / "photos" / "P1").exists()
    finally:
        if not server.ended.called:
            server.transport.signalProcess(signal.SIGTERM)
    assert await server.ended_within(60) == -signal.SIGTERM


@pytest.mark.parametrize("where", ["photos", "photos/P1", "photos/P1/x.jpg"])
def test_a_link_made_after_the_check_is_not_followed_either(tmp_path, where):
    # The second layer, given directly what the check before it would
    # have stopped (a link swapped in between the check and the copy).
    from conftest import write_config

    from medimage_tx.config import load_config
    from medimage_tx.pc.filing import photo_store
    from medimage_tx.pc.migration import MigrationReport, _take_over_photos

    secret = tmp_path / "root-only"
    (secret / "P1").mkdir(parents=True)
    (secret / "P1" / "x.jpg").write_bytes(jpeg_bytes(3_000, seed=9))
    original = tmp_path / "old"
    put(original, "P1/real.jpg", jpeg_bytes(3_000))
    link = original / where
    if where == "photos":
        import shutil

        shutil.rmtree(link)
        link.symlink_to(secret)
    elif where == "photos/P1":
        link.rename(original / "photos" / "P2")
        link.symlink_to(secret / "P1")
    else:
        link.symlink_to(secret / "P1" / "x.jpg")
    clinic = tmp_path / "clinic"
    clinic.mkdir()
    config = load_config(write_config(tmp_path / "new" / "config.json", backupTo=[clinic.as_posix()]))
    report = MigrationReport(original=original, config_from=original / "config.json",
                             config_to=config.path)
    _take_over_photos(original / "photos", photo_store(config, tmp_path / "new"), lambda name: False, report)
    everywhere = [p.read_bytes() for p in [*(tmp_path / "new").rglob("*"), *clinic.rglob("*")] if p.is_file()]
    assert jpeg_bytes(3_000, seed=9) not in everywhere
    assert len(report.not_filed) == 1 and "not followed" in report.not_filed[0][1], report.not_filed


@pytest.mark.parametrize("where", ["addons", "addons/medtech32", "addons/medtech32/run.sh"])
def test_an_add_on_link_made_after_the_check_is_not_followed_either(tmp_path, where):
    # As for the photos: the add-ons copy given directly what the check
    # before it would have stopped.
    from medimage_tx.pc.migration import MigrationReport, _copy_addons

    secret = tmp_path / "root-only"
    (secret / "medtech32").mkdir(parents=True)
    (secret / "medtech32" / "run.sh").write_text("echo secret\n")
    (secret / "run.sh").write_text("echo secret\n")
    original = original_install(tmp_path / "old")
    script = original / "addons" / "medtech32" / "run.sh"
    script.write_text("echo original\n")
    script.chmod(0o755)
    link = original / where
    if where == "addons":
        import shutil

        shutil.rmtree(link)
        link.symlink_to(secret)
    elif where == "addons/medtech32":
        link.rename(original / "addons" / "other")
        link.symlink_to(secret / "medtech32")
    else:
        link.unlink()
        link.symlink_to(secret / "run.sh")
    (tmp_path / "new").mkdir()
    report = MigrationReport(original=original, config_from=original / "config.json",
                             config_to=tmp_path / "new" / "config.json")
    _copy_addons(original / "addons", tmp_path / "new" / "addons", False, report)
    copied = [p for p in (tmp_path / "new").rglob("*")]
    assert not any(p.is_symlink() or (p.is_file() and b"secret" in p.read_bytes()) for p in copied), copied
    assert len(report.not_filed) == 1 and "not followed" in report.not_filed[0][1], report.not_filed
    if where == "addons/medtech32":
        assert os.access(tmp_path / "new" / "addons" / "other" / "run.sh", os.X_OK)  # modes kept
