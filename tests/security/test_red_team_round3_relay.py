"""
Red team, round 3, on the relay's room defences (issue 19): attacks on a
real relay process over loopback.
"""

from __future__ import annotations

import json

import pytest_twisted
from twisted.internet.task import Clock

from conftest import eventually, jpeg_bytes
from medimage_tx.relay_store.known_ids import RESTAMP_SECONDS
from medimage_tx.relay_store.local import KNOWN_SAVE_SECONDS
from test_relay_room import phone_upload

BROWSER_IMAGE = {b"Sec-Fetch-Site": [b"cross-site"], b"Sec-Fetch-Mode": [b"no-cors"],
                 b"Sec-Fetch-Dest": [b"image"], b"Referer": [b"https://attacker.example/page"]}


@pytest_twisted.ensureDeferred
async def test_a_web_page_cannot_make_its_visitors_browsers_make_ids_known(start_server, http_client):
    # Any web page can have each visitor's browser fetch
    # <img src="https://relay/read/MadeUpId...">: every visitor's address
    # would make 4 made-up ids known (then each holds relayQuotaBytes, and
    # 25,000 visitors fill the 100,000 ids for good, since one address may
    # keep them read).  A browser's cross-site fetch says so
    # (Sec-Fetch-Site); a clinic PC's puller is no browser.
    relay = await start_server("relay", allowPhotosLeaving=True, allowGettingRemotePhotos=False,
                               relayUnknownBytes=0)
    made_up = "MadeUpByWebPage0001"
    polled = await http_client.get(f"{relay.url}/read/{made_up}", headers=BROWSER_IMAGE)
    assert polled.code == 200
    await polled.content()
    assert await phone_upload(http_client, relay.url, f"#{made_up}-#P-junk.jpg", jpeg_bytes()) == 507
    # A clinic PC's poll (no browser headers) still makes its id known.
    clinic = "ClinicPcPolls00001"
    polled = await http_client.get(f"{relay.url}/read/{clinic}")
    await polled.content()
    assert await phone_upload(http_client, relay.url, f"#{clinic}-#P-arm.jpg", jpeg_bytes()) == 200


@pytest_twisted.ensureDeferred
async def test_a_clinic_pcs_daily_poll_does_not_rewrite_the_whole_book_of_known_ids(
        tmp_path, start_server, http_client):
    # Each known id's time is saved again once a day (RESTAMP_SECONDS): with
    # the book full (100,000 ids, 11.9 MB of JSON; an attacker with one
    # IPv6 /48 fills it, or a large relay's clinics), that is more than one
    # restamp a second, and each rewrote the whole file: 200 polls of
    # restamped ids took 5.6 s of the relay's CPU and wrote 190 MB (a
    # terabyte a day).  Restamps are saved together, once a minute.
    clock = Clock()
    old = clock.seconds() - 2 * RESTAMP_SECONDS
    book = tmp_path / "relay" / "relay-known.json"
    book.parent.mkdir(parents=True)
    book.write_text(json.dumps({"known": [[f"KnownClinic{i:08d}", old, f"192.0.2.{i % 250}"]
                                          for i in range(1000)]}))
    relay = await start_server("relay", clock=clock, allowPhotosLeaving=True, allowGettingRemotePhotos=False,
                               relayUnknownBytes=0)
    before = book.read_bytes()
    for i in range(50):
        polled = await http_client.get(f"{relay.url}/read/KnownClinic{i:08d}")
        await polled.content()
    assert book.read_bytes() == before, "the book was rewritten for a restamp"
    clock.advance(KNOWN_SAVE_SECONDS)

    await eventually(lambda: book.read_bytes() != before, "the restamps saved together")
    times = {paired_id: last for paired_id, last, _ in json.loads(book.read_text())["known"]}
    assert all(times[f"KnownClinic{i:08d}"] == clock.seconds() - KNOWN_SAVE_SECONDS for i in range(50))
    assert times["KnownClinic00000999"] == old
