"""
README claims that no other test tried against the real thing (the whole
list, and where each one is checked: docs/readme-claims.md).  Each test
reads the claim from README.md itself where it can, so an edit of either
side that makes them disagree fails here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted

from conftest import jpeg_bytes, skip_here_fail_in_ci, upload_photo, within
from processes import spawn
from test_service import dry_run, unit_values

REPO = Path(__file__).parent.parent
README = (REPO / "README.md").read_text()
BIN = Path(sys.executable).parent
COMMAND = BIN / "medimage-tx"
pytestmark = pytest.mark.skipif(not COMMAND.exists(), reason="no medimage-tx installed: use `make test`")


def readme_says(text: str) -> str:
    flat = " ".join(README.split())
    assert " ".join(text.split()) in flat, f"the README no longer says: {text}"
    return text


def config_table() -> dict[str, str]:
    """
    The README's config.json table: each key and its default cell (a row
    naming several keys gives each its part of a comma-separated cell).
    """
    section = README[README.index("## config.json"):]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        keys = re.findall(r"`(\w+)`", cells[0])
        defaults = [cells[1]] if len(keys) == 1 else [d.strip() for d in cells[1].split(",")]
        if len(defaults) != len(keys):
            defaults = [cells[1]] * len(keys)  # "as the original" for all of them
        rows.update(zip(keys, defaults))
    return rows


async def stop(process) -> int:
    if not process.ended.called:
        process.transport.signalProcess(signal.SIGTERM)
    return await process.ended_within(60)


def env_with_home(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["HOME"] = str(home)
    return env


def test_readme_names_every_command_there_is():
    listed = subprocess.run([str(COMMAND), "--help"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0
    real = set(re.findall(r"^    (\w+) ", listed.stdout, re.M))
    said = re.search(r"`medimage-tx --help` lists its commands: (.*?)\. ", " ".join(README.split())).group(1)
    assert set(re.findall(r"`(\w+)`", said)) == real
    # Every `medimage-tx <command>` the README shows is one of them.
    shown = set(re.findall(r"medimage-tx (\w+)", README))
    assert shown and shown <= real, shown - real


def test_readme_links_and_screenshots_lead_somewhere():
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", README, re.M):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-"))
    for target in re.findall(r"\]\(([^)\s]+)\)", README):
        if target.startswith("http"):
            continue
        path, _, anchor = target.partition("#")
        if path:
            assert (REPO / path).exists(), f"README links to {path}, which is not there"
            if anchor:
                text = (REPO / path).read_text()
                headings = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-")
                            for h in re.findall(r"^#+ (.+)$", text, re.M)}
                assert anchor in headings, f"{path} has no section #{anchor}"
        else:
            assert anchor in anchors, f"README links to #{anchor}, which is no section of it"


@pytest_twisted.ensureDeferred
async def test_first_start_writes_the_documented_defaults_and_stages_photos(tmp_path, http_client):
    # "On its first start it writes ~/MedImage/config.json ... and says where
    # photos arrive", then the config table's defaults, the pid file, the
    # staging folder, the file mode and the home page.  Deviations: port 0
    # and LAN mode off, so the test touches no real network.
    home = tmp_path / "home"
    home.mkdir()
    old_umask = os.umask(0o022)
    try:
        server = spawn([str(COMMAND), "serve", "--port", "0", "--no-lan"], str(tmp_path), env=env_with_home(home))
    finally:
        os.umask(old_umask)
    data = home / "MedImage"
    try:
        example = re.search(r"^    (MedImage clinic PC server .*)$", README, re.M).group(1)
        from medimage_tx import __version__

        pattern = re.escape(example)
        pattern = pattern.replace(re.escape("0.1.0"), re.escape(__version__), 1)
        pattern = pattern.replace("5566", r"(\d+)").replace(re.escape("0.0.0.0"), re.escape("127.0.0.1"))
        pattern = pattern.replace(re.escape("/home/clinic/MedImage"), re.escape(str(data)))
        line = await server.wait_for((pattern + r"\n").encode())
        port = int(line.group(1))
        await server.wait_for(rb"Start-up check done")
        readme_says("The pid file: `DATA/twistd.pid`")
        assert (data / "twistd.pid").read_text() == str(server.transport.pid)
        readme_says("`addons/config.json` beside `config.json`")
        assert (data / "addons" / "config.json").is_file()

        written = json.loads((data / "config.json").read_text())
        table = config_table()
        from medimage_tx.config import DEFAULTS

        assert set(table) == set(DEFAULTS) | {"customPairing"}  # every key documented, none made up
        for key, cell in table.items():
            if cell == "absent":
                assert key not in written, key
            elif cell == "as the original":
                # The original's shipped files have none of these keys.
                assert written.get(key) in (None, ""), key
            elif cell == "host name":
                from medimage_tx.config import load_config

                assert written[key] == "" and load_config(data / "config.json").serverName == socket.gethostname()
            elif cell.startswith("the original's:"):
                extensions = re.findall(r"\.\w+", cell)
                assert [t["extension"] for t in written[key]] == extensions
            elif cell == "CORS":
                assert written[key]["Access-Control-Allow-Origin"] == "*"
            else:
                text = cell.strip("`")
                try:
                    said = json.loads(text)
                except ValueError:
                    said = text  # a bare string: allowedChars
                assert written[key] == said, (key, cell)

        # "staged first in DATA/photos ... kept there too while keepMaster is
        # true ... readable by other users (mode 0644)"; the app's name for
        # `#moles John123` gives moles/John123-<date>.jpg.
        readme_says("`<clinic folder>/moles/John123-<date>.jpg`")
        photo = jpeg_bytes(30_000)
        code, body, _ = await upload_photo(http_client, f"http://127.0.0.1:{port}",
                                           "#moles-John123-28-Nov-2026-10-11-12.jpg", photo)
        assert code == 200, body
        stored = data / "photos" / "moles" / "John123-28-Nov-2026-10-11-12.jpg"
        assert stored.read_bytes() == photo
        assert stat.S_IMODE(stored.stat().st_mode) == 0o644
        readme_says("no tag: `<folder>/John123-<date>.jpg`")
        code, body, _ = await upload_photo(http_client, f"http://127.0.0.1:{port}",
                                           "John123-28-Nov-2026-10-11-13.jpg", photo)
        assert code == 200, body
        assert (data / "photos" / "John123-28-Nov-2026-10-11-13.jpg").read_bytes() == photo

        # The home page on the PC itself says whether it works; what any
        # other page (the app's scan is one) gets is the short answer.
        home_page = await within((await within(http_client.get(f"http://127.0.0.1:{port}/"))).text())
        assert "Is it working?" in home_page and "Photos received today: 2." in home_page
        readme_says('must show a short "MedImage server." page')
        scan = await within(http_client.get(f"http://127.0.0.1:{port}/", headers={"Origin": ["http://elsewhere"]}))
        scan_page = await within(scan.text())
        assert scan.code == 200 and "MedImage server." in scan_page and "Is it working" not in scan_page
    finally:
        assert await stop(server) == -signal.SIGTERM
    assert not (data / "twistd.pid").exists()


@pytest_twisted.ensureDeferred
async def test_null_keys_relative_and_empty_folders_lan_mode_off_and_verbose(tmp_path, http_client):
    # `null` means "not set" for every key; a string of digits for
    # listenPort; backupTo relative to config.json's folder, empty entries no
    # folder; an empty allowedChars is the default; a PC with LAN mode off
    # listens on 127.0.0.1; --verbose adds Twisted's own lines.
    readme_says("`null` means \"not set\" (the default) for every key")
    readme_says("Relative paths are relative to config.json's folder")
    readme_says("Empty entries are no folder")
    readme_says("Empty means the default")
    readme_says("a clinic PC server with LAN mode off: 127.0.0.1")
    readme_says("`--verbose` adds debugging lines")
    settings = {key: None for key in config_table()}
    settings.update(listenPort="0", backupTo=["rel/clinic", ""], allowedChars="", lanMode=False)
    config = tmp_path / "elsewhere" / "config.json"
    (config.parent / "rel" / "clinic").mkdir(parents=True)
    config.write_text(json.dumps(settings))
    data = tmp_path / "data"
    server = spawn([str(COMMAND), "serve", "--data", str(data), "--config", str(config), "--verbose"],
                   str(tmp_path))
    try:
        target = config.parent / "rel" / "clinic"
        line = await server.wait_for(rb"listening on port (\d+) \(http, 127\.0\.0\.1\); photos arrive in (.*)\n")
        assert line.group(2).decode() == f"{data / 'photos'} and are copied to {target}"
        port = int(line.group(1))
        photo = jpeg_bytes(10_000)
        code, body, _ = await upload_photo(http_client, f"http://127.0.0.1:{port}", "#ward5-arm$!.jpg", photo)
        assert code == 200, body
        await server.wait_for(rb"Received ward5/arm\.jpg")
        for folder in (target, data / "photos"):  # keepMaster null: kept
            await _until_file(folder / "ward5" / "arm.jpg")
            assert (folder / "ward5" / "arm.jpg").read_bytes() == photo
        assert b"Starting factory" in server.output  # Twisted's chatter: only with --verbose
    finally:
        assert await stop(server) == -signal.SIGTERM


async def _until_file(path: Path, seconds: float = 15.0) -> None:
    from conftest import eventually

    await eventually(path.exists, f"{path} written", seconds=seconds)


@pytest_twisted.ensureDeferred
async def test_a_relay_listens_on_all_addresses_even_with_lan_mode_off_and_uses_no_backup_to(tmp_path, http_client):
    readme_says("a relay: always all")
    readme_says("`true` makes this server a relay (`backupTo` and `keepMaster` are then not used)")
    data, folder = tmp_path / "relay", tmp_path / "not-for-a-relay"
    data.mkdir()
    folder.mkdir()
    (data / "config.json").write_text(json.dumps({"allowPhotosLeaving": True, "lanMode": False,
                                                  "backupTo": [folder.as_posix()], "keepMaster": False}))
    relay = spawn([str(COMMAND), "serve", "--data", str(data), "--port", "0"], str(tmp_path))
    try:
        line = await relay.wait_for(rb"MedImage relay server \S+ listening on port (\d+) \(http, 0\.0\.0\.0\)")
        photo = jpeg_bytes(10_000)
        code, body, _ = await upload_photo(http_client, f"http://127.0.0.1:{int(line.group(1))}",
                                           "#bS6FpXvwagUbeMIXnM-#ward5-arm.jpg", photo)
        assert code == 200, body
        # Queued (a relay's 200 means stored), and nothing in backupTo.
        assert (data / "photos" / "bS6FpXvwagUbeMIXnM" / "ward5" / "arm.jpg").read_bytes() == photo
        assert list(folder.iterdir()) == []
    finally:
        assert await stop(relay) == -signal.SIGTERM


def test_the_service_defaults_are_the_documented_user_data_folder_and_umask():
    readme_says("creates the system user `medimage`, keeps the data in `/var/lib/medimage`")
    readme_says("the unit sets 0022")
    unit = dry_run()
    assert unit_values(unit, "User") == ["medimage"]
    [exec_start] = unit_values(unit, "ExecStart")
    assert shlex.split(exec_start)[-2:] == ["--data", "/var/lib/medimage"]
    assert unit_values(unit, "UMask") == ["0022"]


def test_service_install_writes_the_named_unit_and_starts_it_now_and_at_boot(tmp_path):
    # The real install, as root, with a user that exists (no useradd) and a
    # stand-in systemctl that records what it was asked (no systemd here).
    if os.geteuid() != 0:
        skip_here_fail_in_ci("service install needs root")
    readme_says("Options: `--user`, `--data`, `--name`")
    tools = tmp_path / "bin"
    tools.mkdir()
    asked = tmp_path / "systemctl-calls"
    (tools / "systemctl").write_text(f'#!/bin/sh\necho "$*" >> {asked}\n')
    (tools / "systemctl").chmod(0o755)
    env = dict(os.environ, PATH=f"{tools}:{os.environ['PATH']}")
    units, data = tmp_path / "units", tmp_path / "data"
    units.mkdir()
    done = subprocess.run([str(COMMAND), "service", "install", "--name", "medimage-ward5", "--user", "root",
                           "--data", str(data), "--unit-folder", str(units), "--", "--port", "5567"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    unit = (units / "medimage-ward5.service").read_text()
    assert unit == dry_run("--user", "root", "--data", str(data), "--", "--port", "5567")
    assert asked.read_text().splitlines() == ["daemon-reload", "enable --now medimage-ward5.service"]
    assert data.is_dir()
    assert "systemctl status medimage-ward5" in done.stdout and "journalctl -u medimage-ward5" in done.stdout


def test_other_commands_default_to_the_home_medimage_config(tmp_path):
    # "The other commands default to ~/MedImage/config.json": an add-on
    # installed without --config lands in ~/MedImage/addons.
    import zipfile

    readme_says("The other commands default to `~/MedImage/config.json`")
    home = tmp_path / "home"
    (home / "MedImage").mkdir(parents=True)
    (home / "MedImage" / "config.json").write_text("{}")
    zip_path = tmp_path / "myaddon-1.0.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:  # the smallest add-on the original's installer takes
        archive.writestr("medimage-installer.json", json.dumps({"name": "myaddon", "version": "1.0"}))
    done = subprocess.run([str(COMMAND), "addon", "install", str(zip_path)], capture_output=True, text=True,
                          timeout=120, env=env_with_home(home), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (home / "MedImage" / "addons" / "myaddon").is_dir()
    listed = subprocess.run([str(COMMAND), "addon", "list"], capture_output=True, text=True, timeout=60,
                            env=env_with_home(home), cwd=tmp_path)
    assert "myaddon" in listed.stdout


DRIVE_SCRIPT = """
import os, subprocess, sys, psutil
data, image, drive = sys.argv[1:4]
own = os.stat(data).st_dev
# Only in this test's own mount namespace: the machine's other drives are
# made read-only here, so the server adds no folder to them.
for partition in psutil.disk_partitions(all=False):
    try:
        if os.stat(partition.mountpoint).st_dev != own:
            subprocess.run(["mount", "-o", "remount,bind,ro", partition.mountpoint], check=True)
    except OSError:
        pass
subprocess.run(["mount", "-o", "loop", image, drive], check=True)
os.execv(sys.argv[4], sys.argv[4:])
"""


@pytest_twisted.ensureDeferred
async def test_on_start_backup_drive_detect_copies_to_every_other_drive_without_saving(tmp_path, http_client):
    readme_says("at start, add `<drive>/MedImage/photos` on every other writable drive to `backupTo` (not saved)")
    import shutil

    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("mkfs.ext4")):
        skip_here_fail_in_ci("needs root, unshare and mkfs.ext4 for a drive of its own")
    image, drive, data, clinic = tmp_path / "usb.img", tmp_path / "usb", tmp_path / "data", tmp_path / "clinic"
    for folder in (drive, data, clinic):
        folder.mkdir()
    with open(image, "wb") as f:
        f.truncate(8 * 1024 * 1024)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    config = {"onStartBackupDriveDetect": True, "backupTo": [clinic.as_posix()], "lanMode": False}
    (data / "config.json").write_text(json.dumps(config))
    server = spawn([shutil.which("unshare"), "-m", "--propagation", "private", sys.executable, "-c", DRIVE_SCRIPT,
                    str(data), str(image), str(drive), str(COMMAND), "serve", "--data", str(data), "--port", "0"],
                   str(tmp_path))
    try:
        try:
            line = await server.wait_for(rb"listening on port (\d+) .* and are copied to (.*)\n")
        except RuntimeError:
            if b"loop" in server.output or b"mount" in server.output:
                skip_here_fail_in_ci("no loop devices here: " + server.output.decode()[-300:])
            raise
        assert line.group(2).decode() == f"{clinic}, {drive / 'MedImage' / 'photos'}"
        photo = jpeg_bytes(10_000)
        code, body, _ = await upload_photo(http_client, f"http://127.0.0.1:{int(line.group(1))}", "#ward5-arm.jpg",
                                           photo)
        assert code == 200, body
        # The drive is mounted in the server's namespace only: seen through its root.
        on_drive = Path(f"/proc/{server.transport.pid}/root") / drive.relative_to("/") / "MedImage" / "photos"
        await _until_file(on_drive / "ward5" / "arm.jpg")
        assert (on_drive / "ward5" / "arm.jpg").read_bytes() == photo
        assert json.loads((data / "config.json").read_text()) == config  # not saved
    finally:
        assert await stop(server) == -signal.SIGTERM


def test_migrate_replace_keeps_our_config_and_addons_and_leaves_the_originals_files(tmp_path):
    # "with --replace it keeps that one as config.json.before-migration (and
    # a different addons folder as addons.before-migration)", through
    # `python -m medimage_tx migrate`, and "migrate leaves the original's
    # files as they were".
    readme_says("with `--replace` it keeps that one as `config.json.before-migration` (and a different "
                "`addons` folder as `addons.before-migration`)")
    readme_says("`python -m medimage_tx migrate ...`")
    original, ours = tmp_path / "MedImage-original", tmp_path / "ours"
    (original / "addons" / "medtech32").mkdir(parents=True)
    (original / "addons" / "medtech32" / "run.sh").write_text("echo original\n")
    (original / "photos").mkdir()
    (original / "config.json").write_text(json.dumps({"backupTo": [], "keepMaster": False}, indent=6))
    (ours / "addons" / "resize").mkdir(parents=True)
    (ours / "config.json").write_text('{"listenPort": 5567}\n')
    before = {p: p.read_bytes() for p in original.rglob("*") if p.is_file()}

    def migrate(*more: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "medimage_tx", "migrate", "--from", str(original),
                               "--data", str(ours), *more], capture_output=True, text=True, timeout=120,
                              cwd=tmp_path)

    refused = migrate()
    assert refused.returncode == 1 and "--replace" in refused.stderr
    done = migrate("--replace")
    assert done.returncode == 0, done.stderr
    assert (ours / "config.json").read_bytes() == (original / "config.json").read_bytes()
    assert (ours / "config.json.before-migration").read_text() == '{"listenPort": 5567}\n'
    assert (ours / "addons.before-migration" / "resize").is_dir()
    assert (ours / "addons" / "medtech32" / "run.sh").read_text() == "echo original\n"
    assert {p: p.read_bytes() for p in original.rglob("*") if p.is_file()} == before


@pytest_twisted.ensureDeferred
async def test_after_migrate_phones_paired_with_the_original_send_through_the_same_relay(tmp_path, http_client):
    # Steps 2 and 3 of "Moving from the original": migrate, start with the
    # same --data, "phones paired with the old server send to this one,
    # through the same relay" (a photo the phone sent while the original
    # was stopped included).
    readme_says("phones paired with the old server send to this one, through the same relay")
    paired_id = "bS6FpXvwagUbeMIXnM"
    relay_data, original, ours, target = (tmp_path / n for n in ("relay", "MedImage", "ours", "clinic"))
    for folder in (relay_data, original / "photos", target):
        folder.mkdir(parents=True)
    (relay_data / "config.json").write_text(json.dumps({"allowPhotosLeaving": True, "lanMode": False}))
    relay = spawn([str(COMMAND), "serve", "--data", str(relay_data), "--port", "0"], str(tmp_path))
    server = None
    try:
        relay_url = f"http://127.0.0.1:{await relay.port()}"
        photo = jpeg_bytes(40_000)
        code, body, _ = await upload_photo(http_client, relay_url, f"#{paired_id}-#ward5-arm-28-Nov-2026.jpg", photo)
        assert code == 200, body
        # The original's config, as its user guide shows a paired one.
        (original / "config.json").write_text(json.dumps({
            "backupTo": [target.as_posix()], "readProxy": f"{relay_url}/read/{paired_id}", "globalId": paired_id,
            "transfer": 45652482, "listenPort": 5566, "allowPhotosLeaving": False,
            "allowGettingRemotePhotos": True, "webProxy": None, "keepMaster": False, "lockDown": False,
            "basicAuthent": "changeme"}, indent=6))
        migrated = subprocess.run([str(COMMAND), "migrate", "--from", str(original), "--data", str(ours)],
                                  capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert migrated.returncode == 0, migrated.stderr
        server = spawn([str(COMMAND), "serve", "--data", str(ours), "--port", "0", "--no-lan"], str(tmp_path))
        await server.port()
        arrived = target / "ward5" / "arm-28-Nov-2026.jpg"
        await _until_file(arrived, 60)
        assert arrived.read_bytes() == photo
    finally:
        if server is not None:
            assert await stop(server) == -signal.SIGTERM
        assert await stop(relay) == -signal.SIGTERM


def on_this_disk(windows_path: str, root: Path) -> Path:
    """
    A Windows path of the README (C{C:\\MedImage}) as a folder under C{root}.
    """
    drive, _, rest = windows_path.partition(":")
    return root.joinpath(drive, *[part for part in rest.replace("\\", "/").split("/") if part])


@pytest_twisted.ensureDeferred
async def test_the_windows_steps_then_the_migration_steps_keep_the_pc_paired_and_its_folder(tmp_path):
    # Issue 20, item 4: on Windows the README put this server's data in
    # C:\MedImage, the original's own folder; its migration section then
    # renames the original's config.json there (step 4), and the next
    # start wrote a fresh one: unpaired, no folder.  The README's own
    # paths and commands, with C:\ made a folder of this test.
    windows = README[README.index("## Install on Windows"):README.index("## First start")]
    moving = README[README.index("## Moving from the original MedImage server"):README.index("## Add-ons")]
    first_start_data = re.search(r"medimage-tx serve --data (\S+)", windows).group(1)
    service_args = shlex.split(re.search(r"nssm install MedImageTx \S+ (serve .*)", windows).group(1)
                               .replace("\\", "/"))
    migrate_line = re.search(r"medimage-tx migrate --from (\S+)(?: --data ([A-Z]:\\\S+))?", moving)
    original = on_this_disk(migrate_line.group(1), tmp_path)
    # Step 2 with the service's folder when the README gives none ("with the same --data").
    migrate_data = migrate_line.group(2) or service_args[service_args.index("--data") + 1]
    readme_says("Rename the original's `config.json` to `config-old.json`")

    paired_id, practice = "bS6FpXvwagUbeMIXnM", tmp_path / "Practice" / "Photos"
    practice.mkdir(parents=True)
    original.mkdir(parents=True)
    (original / "config.json").write_text(json.dumps({
        "backupTo": [practice.as_posix()], "readProxy": f"https://relay.example/read/{paired_id}",
        "globalId": paired_id, "listenPort": 5566, "allowPhotosLeaving": False, "keepMaster": False,
        "lanMode": False}, indent=6))
    (original / "photos").mkdir()

    # Install on Windows, step 3: the first start, then Ctrl-C.
    first = spawn([str(COMMAND), "serve", "--data", str(on_this_disk(first_start_data, tmp_path)), "--port", "0",
                   "--no-lan"], str(tmp_path))
    try:
        await first.wait_for(rb"Start-up check done")
    finally:
        assert await stop(first) == -signal.SIGTERM
    # Moving, step 2, then step 4 (the original's config.json renamed).
    migrated = subprocess.run([str(COMMAND), "migrate", "--from", str(original), "--data",
                               str(on_this_disk(migrate_data, tmp_path))],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    (original / "config.json").rename(original / "config-old.json")
    # Step 3 / the NSSM service: this server, as the service starts it.
    data = on_this_disk(service_args[service_args.index("--data") + 1].replace("/", "\\"), tmp_path)
    server = spawn([str(COMMAND), "serve", "--data", str(data), "--port", "0", "--no-lan"], str(tmp_path))
    try:
        line = await server.wait_for(rb"photos arrive in (.*)\n")
        assert line.group(1).decode().endswith(f"and are copied to {practice}"), line.group(0)
        used = json.loads((data / "config.json").read_text())
        assert used["globalId"] == paired_id and used["backupTo"] == [practice.as_posix()]
    finally:
        assert await stop(server) == -signal.SIGTERM
