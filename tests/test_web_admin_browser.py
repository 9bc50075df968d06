"""
The clinic's web admin (issue 14) in real headless Chromium: a person's
clicks and typing (fields found by their labels, buttons by their words)
against real servers on loopback, with a screenshot of each page seen.
"""

from __future__ import annotations

import json
import re

import pytest
import pytest_twisted
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from browser import in_browser, screenshot_dir
from conftest import all_files, eventually, jpeg_bytes, multipart, post_upload, within

# Skipped where chromium is missing (failed in CI): the chromium fixture.
pytestmark = [pytest.mark.reactor, pytest.mark.usefixtures("chromium")]

PHOTO_NAME = "#ward5-arm-27-Nov-2026-10-11-12.jpg"


def read_config(server) -> dict:
    return json.loads((server.data / "config.json").read_text())


# A table heading or a folder's state broken inside a word ("Stat/e",
# "Paire/d", "work/s") reads badly: more lines than words means a word was
# split.  Checked at a PC's window widths and a phone's.
_SPLIT_WORDS = """() => [...document.querySelectorAll('main th, main td .ok, main td .bad')]
    .filter(cell => {
        const range = document.createRange(); range.selectNodeContents(cell);
        const lines = new Set([...range.getClientRects()].map(r => Math.round(r.top))).size;
        return lines > cell.innerText.trim().split(/\\s+/).length;
    }).map(cell => cell.innerText)"""


def words_split_at_widths(page) -> list:
    split = []
    for width in (1280, 1100, 390):
        page.set_viewport_size({"width": width, "height": 900})
        split += [(width, text) for text in page.evaluate(_SPLIT_WORDS)]
    return split


@pytest_twisted.ensureDeferred
async def test_home_page_splits_no_word_with_one_working_folder(start_server, tmp_path):
    # Seen walking the README: one folder that works showed "Stat|e" and
    # "work|s" beside its path at 1280 pixels.
    output = tmp_path / "clinic-photos"
    output.mkdir()
    pc = await start_server(backupTo=[output.as_posix()])

    def steps(page):
        page.goto(pc.url + "/")
        return words_split_at_widths(page)

    assert await in_browser(steps) == []


@pytest_twisted.ensureDeferred
async def test_home_page_says_what_a_clinic_needs(start_server, http_client, tmp_path):
    output = tmp_path / "clinic-photos"
    output.mkdir()
    pc = await start_server(backupTo=[output.as_posix(), (tmp_path / "unplugged-drive").as_posix()])
    code, _, _ = await post_upload(http_client, pc.url, *multipart(PHOTO_NAME, jpeg_bytes()))
    assert code == 200
    shots = screenshot_dir(tmp_path)

    def steps(page):
        page.goto(pc.url + "/")
        page.screenshot(path=shots / "home.png", full_page=True)
        split = words_split_at_widths(page)
        return page.locator("main").inner_text(), split

    text, split_headings = await in_browser(steps)
    assert split_headings == []
    assert "Needs attention" in text  # the second target is not there
    assert "Photos received today: 1." in text
    assert "ward5" in text and "arm-27" not in text  # the folder, never the file name
    assert "the folder does not exist" in text
    assert "default password" in text
    assert "Paired\tno" in text or "Paired\nno" in text or "Paired no" in text
    assert "medimage_tx" in text


@pytest_twisted.ensureDeferred
async def test_pair_through_the_stand_in_service_and_read_the_code(start_server, central, tmp_path, monkeypatch):
    # The stand-in plays AtomJump's service: its codes are the app's.
    monkeypatch.setenv("MEDIMAGE_CENTRAL_PAIRING", central.url)
    relay = await start_server("relay", allowPhotosLeaving=True)
    pc = await start_server(proxy=relay.url)
    other_relay = "http://127.0.0.2:5566"
    shots = screenshot_dir(tmp_path)

    def steps(page):
        page.goto(pc.url + "/")
        page.get_by_role("link", name="Pair phones").first.click()
        page.get_by_label("Country of the AtomJump relay").select_option(label="Australia")
        page.screenshot(path=shots / "pairing.png", full_page=True)
        page.get_by_role("button", name="Pair through AtomJump").click()
        code = page.locator("#code").inner_text()
        page.screenshot(path=shots / "pairing-code.png", full_page=True)
        steps_text = page.locator("main").inner_text()
        # Switching to another relay asks first; "No" changes nothing.
        page.goto(pc.url + "/admin/pair")
        page.get_by_label("Your relay's address").fill(other_relay)
        page.get_by_role("button", name="Pair with this relay").click()
        warning = page.locator("main").inner_text()
        page.screenshot(path=shots / "pairing-switch.png", full_page=True)
        page.get_by_role("link", name="No, keep the current pairing").click()
        page.get_by_role("link", name="Home").click()
        home = page.locator("main").inner_text()
        return code, steps_text, warning, home

    code, steps_text, warning, home = await in_browser(steps)
    assert code in central.codes  # the code on the page is the one the service issued
    paired_id, relay_asked = central.codes[code]
    assert relay_asked == relay.url
    assert central.requests[0].form["country"] == ["AU"]
    assert "tap the large circle" in steps_text and "Pairing codes expire" in steps_text
    config = read_config(pc)
    assert config["readProxy"] == f"{relay.url}/read/{paired_id}"
    assert (config["countryCode"], config["proxy"]) == ("AU", relay.url)  # remembered
    assert "phones paired now stop sending to this PC" in warning
    assert len(central.requests) == 1  # the switch was never sent
    assert read_config(pc)["readProxy"] == config["readProxy"]
    assert f"yes, with {relay.url}" in home and paired_id not in home  # the id is a secret


@pytest_twisted.ensureDeferred
async def test_output_folder_changed_in_the_form_takes_the_next_upload(start_server, http_client, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    pc = await start_server(backupTo=[first.as_posix()], futureKey={"kept": True})
    service = pc.service
    code, _, _ = await post_upload(http_client, pc.url, *multipart("#ward5-one.jpg", jpeg_bytes()))
    assert code == 200 and (first / "ward5" / "one.jpg").exists()
    shots = screenshot_dir(tmp_path)

    def steps(page):
        page.goto(pc.url + "/")
        page.get_by_role("link", name="Settings", exact=True).click()
        field = page.get_by_label("Output photo folder")
        field.fill((tmp_path / "no-such-folder").as_posix())
        page.get_by_role("button", name="Save settings").click()
        refused = page.locator("main").inner_text()
        page.get_by_label("Output photo folder").fill(second.as_posix())
        page.get_by_role("button", name="Save settings").click()
        saved = page.locator("main").inner_text()
        page.screenshot(path=shots / "settings.png", full_page=True)
        return refused, saved

    refused, saved = await in_browser(steps)
    assert "does not exist" in refused and "Nothing was saved" in refused
    assert f"New photos go to {second.as_posix()}" in saved
    config = read_config(pc)
    assert config["backupTo"] == [second.as_posix()]
    assert config["futureKey"] == {"kept": True}  # unknown keys kept
    code, _, _ = await post_upload(http_client, pc.url, *multipart("#ward5-two.jpg", jpeg_bytes()))
    assert code == 200
    assert pc.service is service  # no restart
    await eventually(lambda: (second / "ward5" / "two.jpg").exists(), "the next photo in the new folder")
    assert not (first / "ward5" / "two.jpg").exists()


@pytest_twisted.ensureDeferred
async def test_a_just_received_photo_is_in_the_logs_view(start_server, http_client, tmp_path):
    pc = await start_server()
    code, _, _ = await post_upload(http_client, pc.url, *multipart(PHOTO_NAME, jpeg_bytes()))
    assert code == 200
    shots = screenshot_dir(tmp_path)

    def steps(page):
        page.goto(pc.url + "/")
        page.get_by_role("link", name="Logs").click()
        everything = page.locator("table.log").inner_text()
        page.screenshot(path=shots / "logs.png", full_page=True)
        page.get_by_label("Show").select_option(label="Errors only")
        page.get_by_role("button", name="Show lines").click()
        errors = page.locator("table.log").inner_text()
        return everything, errors

    everything, errors = await in_browser(steps)
    assert re.search(r"Received ward5/arm-27-Nov-2026-10-11-12\.jpg \(\d+ bytes\)", everything)
    assert "ward5" not in errors


@pytest_twisted.ensureDeferred
async def test_a_relay_logs_page_never_shows_file_names(start_server, http_client, tmp_path):
    relay = await start_server("relay", allowPhotosLeaving=True)
    name = "#uPSE4UWHmJ8XqFUqvf-#SmithJohn-arm-27-Nov-2026.jpg"
    code, _, _ = await post_upload(http_client, relay.url, *multipart(name, jpeg_bytes()))
    assert code == 200

    def steps(page):
        page.goto(relay.url + "/admin/logs")
        return page.locator("table.log").inner_text()

    text = await in_browser(steps)
    assert "Relay: queued a photo" in text
    assert "Smith" not in text and "arm-27" not in text


@pytest_twisted.ensureDeferred
async def test_lockdown_hides_settings_logs_and_addon_install(start_server, tmp_path):
    pc = await start_server(lockDown=True)
    shots = screenshot_dir(tmp_path)

    def steps(page):
        page.goto(pc.url + "/")
        links = page.get_by_role("navigation").inner_text()
        page.screenshot(path=shots / "lockdown-home.png", full_page=True)
        settings = page.goto(pc.url + "/admin/settings")
        logs = page.goto(pc.url + "/admin/logs")
        page.goto(pc.url + "/admin/addons")
        install_buttons = page.get_by_role("button", name="Install from address").count()
        page.goto(pc.url + "/admin/pair")
        pair_button = page.get_by_role("button", name="Pair through AtomJump").count()
        return links, settings.status, logs.status, install_buttons, pair_button

    links, settings, logs, install_buttons, pair_button = await in_browser(steps)
    assert "Settings" not in links and "Logs" not in links and "Pair phones" in links
    assert (settings, logs) == (404, 404)
    assert install_buttons == 0
    assert pair_button == 1  # pairing works in lockDown: it is how clinics add phones


class AttackerPage(Resource):
    """
    Another site's page (another loopback port: another origin) that posts
    to the PC's settings, as any page the clinic opens could.
    """

    def __init__(self, target: str, evil_folder: str):
        super().__init__()
        form = (f"<form id='f' method='post' action='{target}/admin/settings'>"
                f"<input name='output' value='{evil_folder}'><input name='csrf' value='guess'>"
                "<input name='type:.jpg' value='on'></form>"
                "<script>document.getElementById('f').submit()</script>")
        self.putChild(b"", Data(form.encode(), "text/html"))
        fetch = ("<script>fetch('" + target + "/admin/settings', {method: 'POST', mode: 'no-cors', "
                 "body: new URLSearchParams({output: '" + evil_folder + "'})}).then("
                 "() => document.title = 'sent', () => document.title = 'failed')</script>")
        self.putChild(b"fetch", Data(fetch.encode(), "text/html"))


@pytest_twisted.ensureDeferred
async def test_another_origin_cannot_change_anything(start_server, tmp_path):
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint

    evil = tmp_path / "evil"
    evil.mkdir()
    pc = await start_server()
    before = (pc.data / "config.json").read_bytes()
    attacker = await within(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Site(AttackerPage(pc.url, evil.as_posix()))))
    attacker_url = f"http://127.0.0.1:{attacker.getHost().port}"
    pc_port = pc.url.rsplit(":", 1)[1]
    shots = screenshot_dir(tmp_path)

    def steps(page):
        page.goto(attacker_url + "/")
        page.wait_for_url(pc.url + "/admin/settings")
        forged = page.locator("body").inner_text()
        page.screenshot(path=shots / "forged-post.png", full_page=True)
        page.goto(attacker_url + "/fetch")
        page.wait_for_function("document.title !== ''")
        # DNS rebinding: a name of the attacker's that now points at the PC.
        rebound = page.goto(f"http://rebind.test:{pc_port}/admin/settings")
        rebound_text = page.locator("body").inner_text()
        page.goto(f"http://rebind.test:{pc_port}/")
        posted = page.evaluate("""async () => {
            const r = await fetch('/admin/settings', {method: 'POST',
                body: new URLSearchParams({output: 'x'})});
            return r.status; }""")
        return forged, rebound.status, rebound_text, posted

    try:
        forged, rebound, rebound_text, posted = await in_browser(
            steps, "--host-resolver-rules=MAP rebind.test 127.0.0.1")
    finally:
        await attacker.stopListening()
    assert "Nothing was changed" in forged
    assert rebound == 403 and "Wrong address" in rebound_text
    assert posted == 403
    assert (pc.data / "config.json").read_bytes() == before
    assert all_files(evil) == []


@pytest_twisted.ensureDeferred
async def test_addons_page_installs_from_a_file_and_removes(start_server, tmp_path):
    from test_addons_web import addon_zip

    pc = await start_server()
    package = tmp_path / "myaddon-1.0.zip"
    package.write_bytes(addon_zip())
    shots = screenshot_dir(tmp_path)

    def steps(page):
        page.on("dialog", lambda dialog: dialog.accept())  # "Remove the add-on myaddon?"
        page.goto(pc.url + "/")
        page.get_by_role("link", name="Add-ons").click()
        before = page.locator("main table").inner_text()
        page.get_by_label("Add-on file (.zip)").set_input_files(str(package))
        page.get_by_role("button", name="Install from file").click()
        page.get_by_role("button", name="Remove myaddon").wait_for()  # the page reloads with it
        listed = page.locator("main table").inner_text()
        page.screenshot(path=shots / "addons.png", full_page=True)
        page.get_by_role("button", name="Remove myaddon").click()
        page.get_by_text("No add-ons installed.").wait_for()
        return before, listed

    before, listed = await in_browser(steps)
    assert "No add-ons installed." in before
    assert "myaddon" in listed and "Test add-on" in listed
    assert not (pc.data / "addons" / "myaddon").exists()


@pytest_twisted.ensureDeferred
async def test_photos_waiting_for_a_gone_folder_are_filed_to_the_new_one(start_server, http_client, tmp_path):
    blocked = tmp_path / "share-file"
    blocked.write_text("a file where the share's folder should be")
    new = tmp_path / "new-share"
    new.mkdir()
    pc = await start_server(backupTo=[(blocked / "photos").as_posix()])
    code, _, _ = await post_upload(http_client, pc.url, *multipart("#ward5-waiting.jpg", jpeg_bytes()))
    assert code == 200  # stored in the photos folder, waiting for its target

    def steps(page):
        page.goto(pc.url + "/admin/settings")
        page.get_by_label("Output photo folder").fill(new.as_posix())
        page.get_by_role("button", name="Save settings").click()
        return page.locator("main").inner_text()

    saved = await in_browser(steps)
    assert "1 photo(s) that were waiting were filed there too." in saved
    assert (new / "ward5" / "waiting.jpg").exists()


UNLABELLED = """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
    .filter(control => control.labels.length === 0).map(control => control.name)"""


@pytest_twisted.ensureDeferred
async def test_every_page_fits_a_phone_and_every_field_has_a_label(start_server, tmp_path):
    pc = await start_server(backupTo=[(tmp_path / "a-rather-long-folder-name-for-a-network-share").as_posix()])
    shots = screenshot_dir(tmp_path)

    def steps(page):
        page.set_viewport_size({"width": 375, "height": 812})
        found = {}
        for path in ("/", "/admin/pair", "/admin/settings", "/admin/logs", "/admin/addons"):
            page.goto(pc.url + path)
            found[path] = page.evaluate(
                "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
            ), page.evaluate(UNLABELLED)
        page.goto(pc.url + "/")
        page.screenshot(path=shots / "home-phone.png", full_page=True)
        page.keyboard.press("Tab")
        focused = page.evaluate("() => document.activeElement.textContent")
        return found, focused

    found, focused = await in_browser(steps)
    for path, ((scroll_width, width), unlabelled) in found.items():
        assert scroll_width <= width, f"{path} scrolls sideways on a phone ({scroll_width} > {width})"
        assert unlabelled == [], f"{path}: fields without a label: {unlabelled}"
    assert focused == "Home"  # the keyboard starts at the pages' links
