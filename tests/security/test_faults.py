"""
Slow clients, a relay filling up, and a full disk: refused or cut off, never
a crash, nothing half-written, and recovery on its own.
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock

import documented
from conftest import all_files, jpeg_bytes, upload_photo, within

PAIRED_ID = "uPSE4UWHmJ8XqFUqvf"


class Slow(protocol.Protocol):
    def __init__(self, first: bytes):
        self.first = first
        self.closed = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.first)

    def connectionLost(self, reason):
        self.closed.callback(None)


@pytest_twisted.ensureDeferred
async def test_slowloris_headers_and_body_are_cut_off(start_server, http_client):
    server = await start_server()
    limits = server.service.http.factory.limits
    limits.header_seconds = 0.3
    limits.body_base_seconds = 0.3
    port = int(server.url.rsplit(":", 1)[1])
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    # Headers that never end, and a body that never comes.
    headers_forever = Slow(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: a")
    body_forever = Slow(b"POST /api/photo HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                        b"boundary=b\r\nContent-Length: 1000\r\n\r\n--b\r\n")
    await connectProtocol(endpoint, headers_forever)
    await connectProtocol(endpoint, body_forever)
    await within(defer.gatherResults([headers_forever.closed, body_forever.closed]))
    # Others are still served, and nothing was left behind.
    assert (await http_client.get(server.url + "/")).code == 200
    assert all_files(server.data / "tmp") == []


@pytest_twisted.ensureDeferred
async def test_relay_quota_per_pairing_answers_429(start_server, http_client):
    relay = await start_server("relay", clock=Clock(), allowPhotosLeaving=True,
                               allowGettingRemotePhotos=False, relayQuotaBytes=50_000)
    for i in range(2):
        code, _, _ = await upload_photo(http_client, relay.url, f"#{PAIRED_ID}-#P-x{i}.jpg", jpeg_bytes(20_000, seed=i + 1))
        assert code == 200
    code, body, response = await upload_photo(http_client, relay.url, f"#{PAIRED_ID}-#P-x2.jpg", jpeg_bytes(20_000, seed=3))
    assert code == 429 and b"holds too much" in body
    assert response.headers.getRawHeaders(b"retry-after") == [b"%d" % documented.QUOTA_RETRY_AFTER_SECONDS]
    assert b"photo stays on the phone" in response.phrase
    other_pairing = "AnotherPairingId0001"
    code, _, _ = await upload_photo(http_client, relay.url, f"#{other_pairing}-#P-x.jpg", jpeg_bytes(20_000, seed=4))
    assert code == 200  # the quota is per pairing
    taken = await http_client.get(f"{relay.url}/read/{PAIRED_ID}")
    await taken.content()
    code, _, _ = await upload_photo(http_client, relay.url, f"#{PAIRED_ID}-#P-x2.jpg", jpeg_bytes(20_000, seed=3))
    assert code == 200  # room again once the PC collected one
    assert all_files(relay.data / "tmp") == []


@pytest_twisted.ensureDeferred
async def test_disk_full_answers_507_and_recovers(tiny_disk, tmp_path, http_client):
    from medimage_tx.tap import build_service
    from conftest import write_config

    config = write_config(tmp_path / "config.json", lanMode=False, maxUploadSize=4_000_000,
                          minFreeBytes=0)  # the full disk itself, not the floor below it
    service = build_service(reactor, tiny_disk, config, port=0, interface="127.0.0.1")
    service.startService()
    try:
        port = await service.http.listening
        url = f"http://127.0.0.1:{port.getHost().port}"
        code, body, response = await upload_photo(http_client, url, "#BIG-x.jpg", jpeg_bytes(2_000_000))
        assert code == 507, body
        assert response.headers.getRawHeaders(b"retry-after") == [b"30"]
        assert b"disk is full" in response.phrase
        assert b"cannot store the photo right now" in body
        assert all_files(tiny_disk / "tmp") == []
        assert all_files(tiny_disk / "photos") == []
        # Space is there for a small one: the server recovered on its own.
        small = jpeg_bytes(100_000)
        code, body, _ = await upload_photo(http_client, url, "#SMALL-x.jpg", small)
        assert code == 200, body
        assert (tiny_disk / "photos" / "SMALL" / "x.jpg").read_bytes() == small
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_huge_declared_body_gets_no_more_time_than_the_largest_upload(start_server):
    server = await start_server(maxUploadSize=100_000)
    limits = server.service.http.factory.limits
    limits.body_base_seconds = 0.2
    limits.min_body_rate = 1_000_000  # the largest upload may take 0.2 s + 0.16 s
    port = int(server.url.rsplit(":", 1)[1])
    liar = Slow(b"POST /api/photo HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 100000000000\r\n\r\n--b\r\n")
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), liar)
    # Cut off after the largest upload's time, not the 100000 s its length would buy
    # (the bound only turns a hang into a failure).
    await within(liar.closed)
    assert liar.transport.disconnected
