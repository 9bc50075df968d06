"""
Every upload that was not stored gets, for each app family (told by its
multipart boundary), the answer that family keeps the photo on
(app_families.py; docs/protocol.md "Answers the apps understand"):

- legacy Android (+++++): never 400 or more; 206 with a body without "200";
- legacy iOS and the browser app: never a 2xx and never 503; try-later as a
  4xx/5xx with Retry-After, refusals 400; a short readable reason phrase.

Real servers on loopback; the full disk is a real tmpfs.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from conftest import all_files, eventually, jpeg_bytes, multipart, post_upload, within, write_config

PAIRED_ID = "uPSE4UWHmJ8XqFUqvf"

FAMILIES = {
    "legacy Android": "+++++",
    "legacy iOS": "+++++org.apache.cordova.formBoundary",
    "browser app": "----WebKitFormBoundaryq2Y7bX9kLm3ZpT0a",
}


async def post(client, url: str, body: bytes, boundary: str):
    _, answer, response = await post_upload(client, url, body, f"multipart/form-data; boundary={boundary}".encode())
    return response, answer


def kept_by(family: str, response, body: bytes, permanent: bool) -> None:
    """
    Assert that C{family}'s app keeps the photo (and sends it again) on
    this answer.
    """
    code, phrase = response.code, response.phrase
    if family == "legacy Android":
        assert code == 206, (code, body)
        assert b"200" not in body
        assert json.loads(body)["stored"] is False
        return
    assert not 200 <= code < 300 and code != 503, (code, body)
    assert phrase and len(phrase) <= 120 and phrase.decode("ascii").isprintable()
    if permanent:
        assert code == 400
        assert phrase.decode("ascii") in body.decode("utf-8")  # the one-line reason, in both
    else:
        assert code in (429, 500, 507)
        assert response.headers.getRawHeaders(b"retry-after")[0].isdigit()
        assert b"photo stays on the phone" in phrase


def upload_body(name: str, content: bytes, boundary: str) -> bytes:
    return multipart(name, content, boundary=boundary)[0]


def nothing_stored(data) -> None:
    assert all_files(data / "photos") == []
    assert all_files(data / "tmp") == []


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("outcome", ["too large", "wrong type", "bad body"])
async def test_pc_refusals_keep_the_photo_for_every_family(start_server, http_client, outcome):
    server = await start_server(maxUploadSize=50_000,
                                allowedTypes=[{"extension": ".jpg", "mime": "image/jpeg"}])
    for family, boundary in FAMILIES.items():
        if outcome == "too large":
            body = upload_body("#P-big.jpg", jpeg_bytes(80_000), boundary)
        elif outcome == "wrong type":
            body = upload_body("#P-scan.pdf", b"%PDF-1.4\n" + b"x" * 1000, boundary)
        else:  # ends before its closing boundary
            body = upload_body("#P-cut.jpg", jpeg_bytes(5_000), boundary)[:-20]
        response, answer = await post(http_client, server.url, body, boundary)
        kept_by(family, response, answer, permanent=True)
    nothing_stored(server.data)


@pytest_twisted.ensureDeferred
async def test_relay_without_id_keeps_the_photo_for_every_family(start_server, http_client):
    relay = await start_server("relay", clock=Clock(), allowPhotosLeaving=True,
                               allowGettingRemotePhotos=False)
    for family, boundary in FAMILIES.items():
        body = upload_body("#NHID1234-arm.jpg", jpeg_bytes(5_000), boundary)
        response, answer = await post(http_client, relay.url, body, boundary)
        kept_by(family, response, answer, permanent=True)
        if family == "browser app":
            assert response.phrase.startswith(b"Error uploading file - Please reconnect your app.")
    nothing_stored(relay.data)


@pytest_twisted.ensureDeferred
async def test_relay_quota_keeps_the_photo_for_every_family(start_server, http_client):
    relay = await start_server("relay", clock=Clock(), allowPhotosLeaving=True,
                               allowGettingRemotePhotos=False, relayQuotaBytes=30_000)
    first = upload_body(f"#{PAIRED_ID}-#P-first.jpg", jpeg_bytes(20_000), FAMILIES["browser app"])
    response, _ = await post(http_client, relay.url, first, FAMILIES["browser app"])
    assert response.code == 200
    for family, boundary in FAMILIES.items():
        body = upload_body(f"#{PAIRED_ID}-#P-{len(family)}.jpg", jpeg_bytes(20_000), boundary)
        response, answer = await post(http_client, relay.url, body, boundary)
        kept_by(family, response, answer, permanent=False)
        if family == "browser app":
            assert response.code == 429
    assert [p.name for p in all_files(relay.data / "photos")] == ["first.jpg"]


@pytest_twisted.ensureDeferred
async def test_full_disk_keeps_the_photo_for_every_family(tiny_disk, tmp_path, http_client):
    from twisted.internet import reactor

    from medimage_tx.tap import build_service

    config = write_config(tmp_path / "config.json", lanMode=False, maxUploadSize=4_000_000,
                          minFreeBytes=0)  # the full disk itself, not the floor below it
    service = build_service(reactor, tiny_disk, config, port=0, interface="127.0.0.1")
    service.startService()
    try:
        port = await service.http.listening
        url = f"http://127.0.0.1:{port.getHost().port}"
        for family, boundary in FAMILIES.items():
            body = upload_body("#BIG-x.jpg", jpeg_bytes(2_000_000), boundary)
            response, answer = await post(http_client, url, body, boundary)
            kept_by(family, response, answer, permanent=False)
            if family == "browser app":
                assert response.code == 507
        nothing_stored(tiny_disk)
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_stored_photo_is_200_for_every_family(start_server, http_client):
    server = await start_server()
    for family, boundary in FAMILIES.items():
        photo = jpeg_bytes(10_000)
        response, answer = await post(http_client, server.url,
                                      upload_body(f"#P-{len(family)}.jpg", photo, boundary), boundary)
        assert (response.code, answer) == (200, b"Received upload successfully!")
        assert (server.photos / "P" / f"{len(family)}.jpg").read_bytes() == photo


def test_legacy_android_body_never_contains_200():
    from twisted.python.failure import Failure

    from medimage_tx.web.app_families import AppFamily
    from medimage_tx.errors import Rejected
    from medimage_tx.web.answers import answer_for_failure

    answer = answer_for_failure(Failure(Rejected("Upload too large: the limit is 2000000 bytes")),
                                AppFamily.LEGACY_ANDROID)
    assert answer.code == 206 and b"200" not in answer.body


@pytest.mark.parametrize("content_type, family", [
    (b"multipart/form-data; boundary=+++++", "LEGACY_ANDROID"),
    (b'multipart/form-data; boundary="+++++"', "LEGACY_ANDROID"),
    (b"multipart/form-data; boundary=+++++org.apache.cordova.formBoundary", "LEGACY_IOS"),
    (b"multipart/form-data; boundary=----WebKitFormBoundaryq2Y7bX9kLm3ZpT0a", "STANDARD"),
    (b"multipart/form-data; boundary=++++++", "STANDARD"),
    (b"text/plain", "STANDARD"),
])
def test_app_family_by_boundary(content_type, family):
    from medimage_tx.web.app_families import AppFamily, app_family

    assert app_family(content_type) is AppFamily[family]


@pytest.mark.parametrize("code, retried", [
    (200, False), (206, True), (299, True), (400, False), (404, False), (413, False),
    (429, True), (500, True), (503, True), (507, True),
])
def test_send_retries_on_every_try_later_answer(code, retried):
    from medimage_tx.cli.phone_client import should_retry

    assert should_retry(code) is retried


class WatchedClock(Clock):
    """
    The clock send_file waits on: C{next_wait()} fires with its next wait.
    """

    def __init__(self):
        super().__init__()
        self._next: list = []

    def next_wait(self):
        from twisted.internet import defer

        waited = defer.Deferred()
        self._next.append(waited)
        return waited

    def callLater(self, *args, **kwargs):
        call = super().callLater(*args, **kwargs)
        waiting, self._next = self._next, []
        for waited in waiting:
            waited.callback(call)
        return call


class AnswersSeen:
    """
    An HTTP client that notes each upload's answer: status and Retry-After.
    """

    def __init__(self, client):
        self.client, self.seen = client, []

    async def post(self, *args, **kwargs):
        response = await self.client.post(*args, **kwargs)
        self.seen.append((response.code, response.headers.getRawHeaders(b"retry-after", [b""])[0]))
        return response


def first_of(*deferreds):
    """
    Fires when the first of C{deferreds} has fired; their results are left alone.
    """
    from twisted.internet import defer

    first = defer.Deferred()

    def fired(result):
        if not first.called:
            first.callback(None)
        return result

    for d in deferreds:
        d.addBoth(fired)
    return first


@pytest_twisted.ensureDeferred
async def test_send_waits_out_a_full_relay_and_stops_on_a_refusal(start_server, http_client, tmp_path, log_lines):
    from twisted.internet import defer

    from documented import QUOTA_RETRY_AFTER_SECONDS
    from medimage_tx.cli.phone_client import SendFailed, send_file

    relay = await start_server("relay", clock=Clock(), allowPhotosLeaving=True,
                               allowGettingRemotePhotos=False, relayQuotaBytes=30_000)
    client = AnswersSeen(http_client)
    first, second = tmp_path / "first.jpg", tmp_path / "second.jpg"
    first.write_bytes(jpeg_bytes(20_000))
    second.write_bytes(jpeg_bytes(20_000))
    # One try: a try-later answer fails at once, saying which it was.
    assert await within(send_file(Clock(), client, relay.url, first, f"#{PAIRED_ID}-#P-first.jpg",
                                  attempts=1)) == "Received upload successfully!"
    clock = WatchedClock()
    waited = clock.next_wait()
    sending = defer.ensureDeferred(send_file(clock, client, relay.url, second, f"#{PAIRED_ID}-#P-second.jpg"))
    await within(first_of(waited, sending))
    assert waited.called and not sending.called, f"not waiting; the relay answered {client.seen}: {log_lines}"
    assert client.seen[-1] == (429, str(QUOTA_RETRY_AFTER_SECONDS).encode()), (client.seen, log_lines)  # quota full
    assert (await waited).getTime() == 30  # Retry-After 120, capped at 30 s
    read = await within(http_client.get(f"{relay.url}/read/{PAIRED_ID}"))  # the PC collects
    await within(read.content())
    # The relay frees the quota after the photo is sent, then removes it
    # and its emptied folders: only then is there room for certain.
    await eventually(lambda: not (relay.photos / PAIRED_ID).exists(), "the relay removes the collected photo")
    waited = clock.next_wait()
    clock.advance(30)
    await within(first_of(waited, sending))
    assert sending.called, f"waiting again; the relay answered {client.seen}: {log_lines}"
    assert await sending == "Received upload successfully!"
    assert (relay.photos / PAIRED_ID / "P" / "second.jpg").read_bytes() == second.read_bytes()
    # A refusal is final: no waiting, a clear error.
    clock = WatchedClock()
    waited = clock.next_wait()
    with pytest.raises(SendFailed, match="400 Error uploading file - Please reconnect your app"):
        await within(send_file(clock, client, relay.url, second, "#P-no-pairing.jpg"))
    assert not waited.called
