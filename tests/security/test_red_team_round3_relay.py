"""
Red team, round 3, on the relay's room defences (issue 19): attacks on a
real relay process over loopback.
"""

from __future__ import annotations

import pytest_twisted

from conftest import jpeg_bytes
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
