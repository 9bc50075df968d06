"""
The home page and Settings never lie or lose edits (issue 20): real
`medimage-tx serve` processes on loopback, their home page and Settings
read and posted as the admin on the PC itself does.
"""

from __future__ import annotations

import errno
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted

from conftest import eventually, jpeg_bytes, upload_photo, within, write_config
from processes import spawn
from test_web_admin import csrf_of, page, post

pytestmark = pytest.mark.reactor

COMMAND = Path(sys.executable).parent / "medimage-tx"
PAIRED_ID = "uPSE4UWHmJ8XqFUqvf"


async def serve(tmp_path: Path, data: Path, *more: str):
    """
    A real `medimage-tx serve` on 127.0.0.1, any free port: (process, url).
    """
    assert COMMAND.exists(), "run with `make test` (needs the installed medimage-tx)"
    process = spawn([str(COMMAND), "serve", "--no-lan", "--data", str(data), "--port", "0",
                     "--interface", "127.0.0.1", *more], str(tmp_path))
    return process, f"http://127.0.0.1:{await process.port()}"


async def stop(process) -> None:
    if not process.ended.called:
        process.transport.signalProcess(signal.SIGTERM)
    await within(process.exited(30), 40)


def main_text(body: str) -> str:
    """
    The words of a page's main part, tags dropped, as a person reads them.
    """
    main = body.split("<main", 1)[-1].split("</main>", 1)[0]
    return " ".join(re.sub(r"<[^>]+>", " ", main).replace("&amp;", "&").split())


async def home(http_client, url: str) -> str:
    response, body = await page(http_client, url + "/")
    assert response.code == 200
    return main_text(body)


def fill(folder: Path) -> Path:
    """
    Fill the file system of C{folder} to the last byte.
    """
    filler = folder / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


@pytest_twisted.ensureDeferred
async def test_home_page_says_not_working_while_uploads_would_be_refused_and_recovers(
        tiny_disk, tmp_path, http_client):
    data = tiny_disk / "data"
    write_config(data / "config.json", lanMode=False, minFreeBytes=0)  # the floor: see the next test
    process, url = await serve(tmp_path, data)
    try:
        assert "Working" in await home(http_client, url)
        filler = fill(tiny_disk)
        code, _, _ = await upload_photo(http_client, url, "#moles-John123-arm.jpg", jpeg_bytes(50_000))
        assert code == 507
        text = await home(http_client, url)
        assert "Not working" in text and "disk is full" in text, text
        assert "Working" not in text.replace("Not working", "")
        filler.unlink()
        text = await home(http_client, url)
        assert "Not working" not in text and "Working" in text  # by itself: nothing restarted
        # A folder it cannot write (a read-only file system) is the same for a phone.
        subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
        try:
            code, _, _ = await upload_photo(http_client, url, "#moles-John123-leg.jpg", jpeg_bytes(5_000))
            assert code == 500
            text = await home(http_client, url)
            assert "Not working" in text and "Read-only file system" in text, text
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(tiny_disk)], check=True)
        assert "Not working" not in await home(http_client, url)
        code, _, _ = await upload_photo(http_client, url, "#moles-John123-leg.jpg", jpeg_bytes(5_000))
        assert code == 200
    finally:
        await stop(process)


@pytest.mark.parametrize("role, floor", [("pc", "minFreeBytes"), ("relay", "relayMinFreeBytes")])
@pytest_twisted.ensureDeferred
async def test_below_the_free_space_floor_says_not_working(role, floor, tiny_disk, tmp_path, http_client):
    data = tiny_disk / role
    settings = {"lanMode": False, "allowPhotosLeaving": role == "relay"}  # each floor's default: 1 GiB
    config = write_config(data / "config.json", **settings)
    name = f"#{PAIRED_ID}-#moles-John123-arm.jpg" if role == "relay" else "#moles-John123-arm.jpg"
    process, url = await serve(tmp_path, data)
    try:
        code, _, _ = await upload_photo(http_client, url, name, jpeg_bytes())
        assert code == 507
        text = await home(http_client, url)
        assert "Not working" in text and floor in text, text
        config.write_text(json.dumps({**settings, floor: 0}))
        await eventually(lambda: home_says(http_client, url, "Working"), "Working once the floor is lowered")
        assert "Not working" not in await home(http_client, url)
        code, _, _ = await upload_photo(http_client, url, name, jpeg_bytes())
        assert code == 200
    finally:
        await stop(process)


@pytest_twisted.ensureDeferred
async def test_settings_never_overwrite_a_broken_config_and_the_home_page_says_why(tmp_path, http_client,
                                                                                  central):
    folder = tmp_path / "clinic"
    folder.mkdir()
    data = tmp_path / "data"
    config = write_config(data / "config.json", lanMode=False)
    process, url = await serve(tmp_path, data)
    try:
        token, cookie = csrf_of(*await page(http_client, url + "/admin/settings"))
        # The admin adds a password by hand and leaves a trailing comma.
        edited = '{"lanMode": false, "basicAuthent": "a-long-new-password",}\n'
        config.write_text(edited)
        text = await home(http_client, url)
        assert "config.json" in text and "line 1" in text and "cannot be used" in text, text
        _, body = await page(http_client, url + "/admin/settings")
        assert "cannot be used" in main_text(body) and "line 1" in main_text(body)  # said before a save
        response, body = await post(http_client, url + "/admin/settings",
                                    {"output": str(folder), "type:.jpg": "on", "csrf": token}, url, cookie)
        assert response.code == 409
        assert "Nothing was saved" in main_text(body) and "line 1" in main_text(body)
        assert config.read_text() == edited  # the hand edits are still there
        # A value of the wrong kind is as broken as bad JSON.
        edited = '{"lanMode": "no", "basicAuthent": "a-long-new-password"}\n'
        config.write_text(edited)
        response, body = await post(http_client, url + "/admin/settings",
                                    {"output": str(folder), "type:.jpg": "on", "csrf": token}, url, cookie)
        assert response.code == 409 and "lanMode" in main_text(body)
        assert config.read_text() == edited
        # Pairing neither: checked before a code is asked for, on both pairing pages.
        for path in ("/admin/pair", "/pair"):
            response, body = await post(http_client, url + path, {
                "way": "own", "proxyServer": "http://127.0.0.1:9", "customPairing": central.url,
                "csrf": token}, url, cookie)
            assert response.code == 409 and "lanMode" in main_text(body), path
        assert central.requests == [] and config.read_text() == edited
        # Fixed: the home page says nothing more, and Settings save over it keeping the edit.
        config.write_text('{"lanMode": false, "basicAuthent": "a-long-new-password"}\n')
        assert "cannot be used" not in await home(http_client, url)
        response, body = await post(http_client, url + "/admin/settings",
                                    {"output": str(folder), "type:.jpg": "on", "csrf": token}, url, cookie)
        assert response.code == 200 and "Saved." in body
        assert json.loads(config.read_text())["basicAuthent"] == "a-long-new-password"
    finally:
        await stop(process)


@pytest_twisted.ensureDeferred
async def test_likely_typos_get_one_warning_line_at_start_and_on_the_home_page(tmp_path, http_client):
    clinic = tmp_path / "clinic"
    clinic.mkdir()
    missing = tmp_path / "not-mounted" / "photos"
    data = tmp_path / "data"
    write_config(data / "config.json", lanMode=False, backupto=[clinic.as_posix()],
                 backupTo=[missing.as_posix()], KeepMaster=False, someFutureKey=1)
    process, url = await serve(tmp_path, data)
    try:
        text = await home(http_client, url)
        await stop(process)
        lines = process.output.decode(errors="replace").splitlines()
        typo = [line for line in lines if '"backupto"' in line]
        case = [line for line in lines if '"KeepMaster"' in line]
        folder = [line for line in lines if str(missing) in line and "does not exist" in line]
        assert len(typo) == 1 and '"backupTo"' in typo[0], lines
        assert len(case) == 1 and '"keepMaster"' in case[0], lines
        assert len(folder) == 1, lines
        assert not any("someFutureKey" in line for line in lines)  # unknown, not a typo: kept quietly
        assert '"backupto"' in text and '"KeepMaster"' in text and "someFutureKey" not in text
        assert f"{missing} does not exist" in text
    finally:
        await stop(process)


@pytest_twisted.ensureDeferred
async def test_a_paired_pc_that_does_not_collect_says_so(tmp_path, http_client):
    data = tmp_path / "data"
    write_config(data / "config.json", lanMode=False, allowGettingRemotePhotos=False,
                 readProxy=f"http://127.0.0.1:9/read/{PAIRED_ID}", globalId=PAIRED_ID)
    process, url = await serve(tmp_path, data)
    try:
        text = await home(http_client, url)
        assert "Connected yes" not in text
        assert "Connected no" in text and "allowGettingRemotePhotos" in text, text
        assert "Needs attention" in text
        assert PAIRED_ID not in text
    finally:
        await stop(process)


@pytest_twisted.ensureDeferred
async def test_photos_received_today_survive_a_restart(tmp_path, http_client):
    for keep_master in (True, False):
        clinic, data = tmp_path / f"clinic-{keep_master}", tmp_path / f"data-{keep_master}"
        clinic.mkdir()
        write_config(data / "config.json", lanMode=False, backupTo=[clinic.as_posix()], keepMaster=keep_master)
        process, url = await serve(tmp_path, data)
        try:
            for index in range(2):
                code, _, _ = await upload_photo(http_client, url, f"#moles-John123-{index}.jpg",
                                                jpeg_bytes(seed=index + 1))
                assert code == 200
            assert "Photos received today: 2." in await home(http_client, url)
        finally:
            await stop(process)
        process, url = await serve(tmp_path, data)
        try:
            await eventually(lambda: home_says(http_client, url, "Photos received today: 2."),
                             f"the count of today's photos after the restart (keepMaster {keep_master})")
        finally:
            await stop(process)


async def home_says(http_client, url: str, words: str) -> bool:
    return words in await home(http_client, url)


@pytest_twisted.ensureDeferred
async def test_the_pc_log_names_its_photos_and_a_relay_never(tmp_path, http_client):
    pc_data, relay_data = tmp_path / "pc", tmp_path / "relay"
    write_config(pc_data / "config.json", lanMode=False)
    write_config(relay_data / "config.json", lanMode=False, allowPhotosLeaving=True)
    pc, pc_url = await serve(tmp_path, pc_data)
    relay, relay_url = await serve(tmp_path, relay_data)
    try:
        code, _, _ = await upload_photo(http_client, pc_url, "#moles-John123-arm.jpg", jpeg_bytes())
        assert code == 200
        code, _, _ = await upload_photo(http_client, relay_url, f"#{PAIRED_ID}-#moles-John123-arm.jpg",
                                        jpeg_bytes())
        assert code == 200
        await pc.wait_for(rb"Received moles/John123-arm\.jpg")  # the clinic's own record, on its console
        _, logs = await page(http_client, pc_url + "/admin/logs")
        assert "Received moles/John123-arm.jpg" in logs
        assert "name the photos received, patient ids included" in main_text(logs)
        _, relay_logs = await page(http_client, relay_url + "/admin/logs")
        assert "Relay: queued a photo" in relay_logs
        assert "John123" not in relay_logs and "moles" not in relay_logs
        assert "never name a patient" in main_text(relay_logs)
    finally:
        await stop(pc)
        await stop(relay)
    relay_console = relay.output.decode(errors="replace")
    assert "Relay: queued a photo" in relay_console
    assert "John123" not in relay_console and "moles" not in relay_console
    # The README says the same as the code, both ways.
    readme = " ".join((Path(__file__).parent.parent / "README.md").read_text().split())
    assert "the clinic PC's own log names the photos it receives (folder and file name, so patient ids)" in readme
    assert "a relay's log never names a patient folder or file" in readme


#: Words (letters only) of the main part's tables that a line break cuts in
#: two; folder paths and addresses (in <code>) may break anywhere.
BROKEN_WORDS = """() => {
    const broken = [];
    for (const cell of document.querySelectorAll('main table th, main table td')) {
        const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
        for (let node = walker.nextNode(); node; node = walker.nextNode()) {
            if (node.parentElement.closest('code')) continue;
            for (const word of node.textContent.matchAll(/[A-Za-z]+/g)) {
                const range = document.createRange();
                range.setStart(node, word.index);
                range.setEnd(node, word.index + word[0].length);
                const lines = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
                if (lines.size > 1) broken.push(word[0]);
            }
        }
    }
    return broken;
}"""


@pytest_twisted.ensureDeferred
async def test_home_page_never_breaks_a_word_and_every_page_has_the_layout(start_server, http_client, tmp_path):
    from browser import in_browser, screenshot_dir

    long_folder = tmp_path / "a-rather-long-folder-name-for-the-practice-network-share" / "photos"
    long_folder.mkdir(parents=True)
    pc = await start_server(backupTo=[long_folder.as_posix(), (tmp_path / "unplugged-drive").as_posix()],
                            readProxy=f"http://127.0.0.1:9/read/{PAIRED_ID}", globalId=PAIRED_ID)
    code, _, _ = await upload_photo(http_client, pc.url, "#ward5-arm.jpg", jpeg_bytes())
    assert code == 200
    shots = screenshot_dir(tmp_path)

    def steps(page):
        missing = []
        page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)
        broken = {}
        for width in (320, 375, 600, 800, 1000, 1100, 1400):
            page.set_viewport_size({"width": width, "height": 900})
            page.goto(pc.url + "/")
            broken[width] = page.evaluate(BROKEN_WORDS)
            page.screenshot(path=shots / f"home-{width}.png", full_page=True)
        layouts = {}
        for path in ("/discovery", "/pair"):
            page.set_viewport_size({"width": 375, "height": 812})
            page.goto(pc.url + path)
            navigation = page.get_by_role("navigation")
            layouts[path] = (navigation.inner_text() if navigation.count() else "",
                             page.locator("main h1").count(),
                             page.evaluate("() => getComputedStyle(document.body).fontFamily"),
                             page.evaluate("() => document.documentElement.scrollWidth "
                                           "<= document.documentElement.clientWidth"))
            page.screenshot(path=shots / f"{path.strip('/')}.png", full_page=True)
        page.goto(pc.url + "/favicon.ico")
        return broken, layouts, missing

    broken, layouts, missing = await in_browser(steps)
    assert {width: words for width, words in broken.items() if words} == {}
    for path, (navigation, headings, font, fits) in layouts.items():
        assert "Home" in navigation and "Pair phones" in navigation, path
        assert headings == 1 and "system-ui" in font and fits, path
    assert missing == []  # no favicon 404, nothing else missing
    response = await within(http_client.get(pc.url + "/favicon.ico"))
    icon = await within(response.content())
    assert response.code == 200 and icon[:4] == b"\0\0\1\0" and len(icon) < 2000  # an icon, small
    assert response.headers.getRawHeaders(b"content-type") == [b"image/x-icon"]
