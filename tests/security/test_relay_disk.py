"""
Issue 9 finding 6: the relay's disk cannot be filled.  Room is reserved
before a photo is stored (parallel uploads cannot overshoot), the relay has
a total cap and keeps disk headroom, and photos nobody collects expire.
Real relays on loopback.
"""

from __future__ import annotations

import os
import time

import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from conftest import all_files, jpeg_bytes, multipart

PAIRED_ID = "uPSE4UWHmJ8XqFUqvf"


async def upload(client, server, name, content):
    body, content_type = multipart(name, content)
    response = await client.post(server.url + "/api/photo", data=body, headers={b"Content-Type": [content_type]})
    return response.code, await response.content(), response


async def start_relay(start_server, clock=None, **settings):
    return await start_server("relay", clock=clock or Clock(), allowPhotosLeaving=True,
                              allowGettingRemotePhotos=False, **settings)


def held_on_disk(relay) -> int:
    return sum(p.stat().st_size for p in all_files(relay.photos))


@pytest_twisted.ensureDeferred
async def test_parallel_uploads_to_one_id_stay_within_its_quota(start_server, http_client):
    photo_size = 20_000
    relay = await start_relay(start_server, relayQuotaBytes=10 * photo_size)
    # 30 different photos for one pairing at once: the quota fits 10.
    results = await defer.gatherResults([
        defer.ensureDeferred(upload(http_client, relay, f"#{PAIRED_ID}-#P{i}-x.jpg",
                                    jpeg_bytes(photo_size - 14, seed=i + 1)))
        for i in range(30)])
    codes = [code for code, _, _ in results]
    assert codes.count(200) <= 10
    assert set(codes) <= {200, 429}
    assert all(r.headers.getRawHeaders(b"retry-after") == [b"120"] for code, _, r in results if code == 429)
    assert held_on_disk(relay) <= 10 * photo_size
    assert relay.service.state.relay.store.queue.queued_bytes(PAIRED_ID) == held_on_disk(relay)
    assert all_files(relay.data / "tmp") == []


@pytest_twisted.ensureDeferred
async def test_fresh_ids_cannot_exceed_the_relays_total(start_server, http_client):
    photo_size = 20_000
    relay = await start_relay(start_server, relayQuotaBytes=10 * photo_size, relayTotalBytes=5 * photo_size)
    ids = [f"FreshPairingId{i:04d}" for i in range(25)]
    with capturedLogs() as events:
        results = await defer.gatherResults([
            defer.ensureDeferred(upload(http_client, relay, f"#{paired_id}-#P-x.jpg",
                                        jpeg_bytes(photo_size - 14, seed=i + 1)))
            for i, paired_id in enumerate(ids)])
    codes = [code for code, _, _ in results]
    assert codes.count(200) == 5
    refused = [(code, body, r) for code, body, r in results if code != 200]
    assert all(code == 507 and body == b"The relay is full. Try again later." for code, body, _ in refused)
    assert all(r.headers.getRawHeaders(b"retry-after") == [b"300"] for _, _, r in refused)
    assert held_on_disk(relay) <= 5 * photo_size
    full = [formatEvent(e) for e in events if "Relay: full" in formatEvent(e)]
    assert len(full) == 1  # one line when it fills, not one per refusal
    # Once a PC collects, there is room again.
    taken = await http_client.get(f"{relay.url}/read/{[i for i, (c, _, _) in zip(ids, results) if c == 200][0]}")
    await taken.content()
    code, _, _ = await upload(http_client, relay, f"#{ids[-1]}-#P-y.jpg", jpeg_bytes(photo_size - 14, seed=99))
    assert code == 200


@pytest_twisted.ensureDeferred
async def test_relay_keeps_disk_headroom(start_server, http_client):
    relay = await start_relay(start_server, relayMinFreeBytes=2 ** 62)  # more than any disk
    code, body, response = await upload(http_client, relay, f"#{PAIRED_ID}-#P-x.jpg", jpeg_bytes())
    assert (code, body) == (507, b"The relay is full. Try again later.")
    assert response.headers.getRawHeaders(b"retry-after") == [b"300"]
    assert all_files(relay.photos) == [] and all_files(relay.data / "tmp") == []
    assert relay.service.state.relay.store.queue.total_bytes() == 0  # the reservation was given back


@pytest_twisted.ensureDeferred
async def test_uncollected_photos_expire_and_are_logged_by_fingerprint(start_server, http_client):
    clock = Clock()
    clock.advance(time.time())
    relay = await start_relay(start_server, clock=clock, relayExpiryDays=7)
    expiry = relay.service.getServiceNamed("relay-expiry")
    old_name = f"#{PAIRED_ID}-#NHID1234-arm.jpg"
    assert (await upload(http_client, relay, old_name, jpeg_bytes(seed=1)))[0] == 200
    clock.advance(6 * 86400)
    assert (await upload(http_client, relay, f"#{PAIRED_ID}-#NHID5678-leg.jpg", jpeg_bytes(seed=2)))[0] == 200
    with capturedLogs() as events:
        clock.advance(86400 + 3600)  # the first is now over 7 days old; the hourly sweep runs
        await expiry.removing
    assert [p.relative_to(relay.photos).as_posix() for p in all_files(relay.photos)] == [
        f"{PAIRED_ID}/NHID5678/leg.jpg"]
    check = await http_client.get(relay.url + "/check=" + old_name.replace("#", "%23"))
    assert await check.content() == b"false"
    lines = [formatEvent(e) for e in events]
    expired = [line for line in lines if "not collected within 7 days" in line]
    assert len(expired) == 1 and "1 photo(s)" in expired[0]
    from medimage_tx.identity import fingerprint

    assert fingerprint(PAIRED_ID) in expired[0]
    assert not any(PAIRED_ID in line or "NHID" in line or "arm" in line for line in lines)
    assert relay.service.state.relay.store.queue.queued_bytes(PAIRED_ID) == held_on_disk(relay)


@pytest_twisted.ensureDeferred
async def test_photos_left_from_before_a_restart_expire_by_their_age(start_server, tmp_path):
    # A relay's photos folder as a previous run left it (the fixture's
    # data folder for "relay"): one photo 8 days old, one fresh.
    photos = tmp_path / "relay" / "photos" / PAIRED_ID / "P"
    photos.mkdir(parents=True)
    old, fresh = photos / "old.jpg", photos / "new.jpg"
    old.write_bytes(jpeg_bytes(seed=3))
    eight_days_ago = time.time() - 8 * 86400
    os.utime(old, (eight_days_ago, eight_days_ago))
    fresh.write_bytes(jpeg_bytes(seed=4))
    clock = Clock()
    clock.advance(time.time())
    relay = await start_relay(start_server, clock=clock)
    await relay.service.getServiceNamed("relay-expiry").removing
    assert all_files(relay.photos) == [fresh]
    queue = relay.service.state.relay.store.queue
    assert queue.holds(f"{PAIRED_ID}/P/new.jpg") and not queue.holds(f"{PAIRED_ID}/P/old.jpg")
