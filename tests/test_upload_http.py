"""
Uploads over real sockets, exactly as the MedImage app sends them.
"""

from __future__ import annotations

import hashlib
import io

import pytest_twisted
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.web.client import FileBodyProducer
from twisted.web.iweb import UNKNOWN_LENGTH

from conftest import all_files, jpeg_bytes, multipart, post_upload

APP_NAME = "#NHID1234-arm-27-Nov-2026-10-11-12.jpg"


@pytest_twisted.ensureDeferred
async def test_upload_lands_byte_identical_in_target_folder(start_server, http_client, tmp_path):
    target = tmp_path / "clinic"
    target.mkdir()
    server = await start_server(backupTo=[target.as_posix()])
    photo = jpeg_bytes(300_000)
    code, body, response = await post_upload(http_client, server.url, *multipart(APP_NAME, photo))
    assert (code, body) == (200, b"Received upload successfully!")
    assert response.headers.getRawHeaders(b"access-control-allow-origin") == [b"*"]
    landed = target / "NHID1234" / "arm-27-Nov-2026-10-11-12.jpg"
    assert landed.read_bytes() == photo
    assert (server.photos / "NHID1234" / "arm-27-Nov-2026-10-11-12.jpg").read_bytes() == photo
    assert all_files(server.data / "tmp") == []
    assert all_files(server.data / "pending") == []


@pytest_twisted.ensureDeferred
async def test_global_id_folder_is_dropped_and_master_moved(start_server, http_client, tmp_path):
    target = tmp_path / "clinic"
    target.mkdir()
    server = await start_server(
        backupTo=[target.as_posix()], keepMaster=False, globalId="uPSE4UWHmJ8XqFUqvf"
    )
    photo = jpeg_bytes()
    code, _, _ = await post_upload(
        http_client, server.url,
        *multipart("#uPSE4UWHmJ8XqFUqvf-#NHID1234-arm-27-Nov-2026-10-11-12.jpg", photo, title=None),
    )
    assert code == 200
    assert (target / "NHID1234" / "arm-27-Nov-2026-10-11-12.jpg").read_bytes() == photo
    assert all_files(server.photos) == []  # keepMaster false: moved, not kept


@pytest_twisted.ensureDeferred
async def test_retry_of_same_bytes_is_no_duplicate_and_new_bytes_get_suffix(start_server, http_client, tmp_path):
    target = tmp_path / "clinic"
    target.mkdir()
    server = await start_server(backupTo=[target.as_posix()])
    first, second = jpeg_bytes(seed=1), jpeg_bytes(seed=2)
    for content in (first, first, second):
        code, _, _ = await post_upload(http_client, server.url, *multipart(APP_NAME, content))
        assert code == 200
    names = [p.relative_to(target).as_posix() for p in all_files(target)]
    assert names == ["NHID1234/arm-27-Nov-2026-10-11-12-1.jpg", "NHID1234/arm-27-Nov-2026-10-11-12.jpg"]
    assert (target / names[1]).read_bytes() == first
    assert (target / names[0]).read_bytes() == second
    assert server.service.state.stats.photos_received == 2


@pytest_twisted.ensureDeferred
async def test_allowed_pdf_is_stored_with_its_own_extension(start_server, http_client):
    server = await start_server(
        allowedTypes=[{"extension": ".pdf", "mime": "application/pdf"}]
    )
    pdf = b"%PDF-1.7\n" + b"x" * 1000 + b"\n%%EOF\n"
    code, _, _ = await post_upload(http_client, server.url, *multipart("#letters-referral.pdf", pdf))
    assert code == 200
    assert (server.photos / "letters" / "referral.pdf").read_bytes() == pdf


async def assert_rejected(client, server, body, content_type, reason_part: str, headers=None):
    before = all_files(server.data)
    code, reason, _ = await post_upload(client, server.url, body, content_type, headers)
    assert code == 400, reason
    assert reason_part.encode() in reason
    assert b"\n" not in reason.strip()
    # Not a file more than the server had before (its config.json, the
    # add-on registry and the standard add-on pages it writes at start).
    assert all_files(server.data) == before
    assert server.data / "config.json" in before


@pytest_twisted.ensureDeferred
async def test_unknown_type_rejected(start_server, http_client):
    server = await start_server()
    await assert_rejected(http_client, server, *multipart("#p-x.bin", b"\x00\x01garbage" * 100), "File type not allowed")


@pytest_twisted.ensureDeferred
async def test_type_renamed_to_jpg_rejected(start_server, http_client):
    server = await start_server()
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 500
    await assert_rejected(http_client, server, *multipart(APP_NAME, png), "image/png")


@pytest_twisted.ensureDeferred
async def test_over_size_declared_rejected(start_server, http_client):
    server = await start_server(maxUploadSize=100_000)
    await assert_rejected(http_client, server, *multipart(APP_NAME, jpeg_bytes(400_000)), "too large")


@pytest_twisted.ensureDeferred
async def test_over_size_undeclared_rejected(start_server, http_client):
    """
    Chunked transfer: no Content-Length, so the limit applies while streaming.
    """
    server = await start_server(maxUploadSize=100_000)
    body, content_type = multipart(APP_NAME, jpeg_bytes(150_000))
    producer = FileBodyProducer(io.BytesIO(body))
    producer.length = UNKNOWN_LENGTH
    await assert_rejected(http_client, server, producer, content_type, "too large")


@pytest_twisted.ensureDeferred
async def test_missing_file1_rejected(start_server, http_client):
    server = await start_server()
    await assert_rejected(http_client, server, *multipart(APP_NAME, jpeg_bytes(), field="photo"), "file1")


@pytest_twisted.ensureDeferred
async def test_malformed_multipart_rejected(start_server, http_client):
    server = await start_server()
    body, content_type = multipart(APP_NAME, jpeg_bytes())
    await assert_rejected(http_client, server, body[: len(body) // 2], content_type, "Malformed")


@pytest_twisted.ensureDeferred
async def test_not_multipart_rejected(start_server, http_client):
    server = await start_server()
    await assert_rejected(http_client, server, jpeg_bytes(), b"image/jpeg", "multipart/form-data")


@pytest_twisted.ensureDeferred
async def test_twenty_parallel_uploads_all_stored_intact(start_server, http_client, tmp_path):
    target = tmp_path / "clinic"
    target.mkdir()
    server = await start_server(backupTo=[target.as_posix()], keepMaster=False)
    photos = {f"#P{i:02d}-photo-{i}.jpg": jpeg_bytes(200_000 + i * 1000, seed=i + 1) for i in range(20)}
    results = await gatherResults(
        [ensureDeferred(post_upload(http_client, server.url, *multipart(name, content))) for name, content in photos.items()]
    )
    assert [code for code, _, _ in results] == [200] * 20
    for i, content in enumerate(photos.values()):
        stored = target / f"P{i:02d}" / f"photo-{i}.jpg"
        assert hashlib.sha256(stored.read_bytes()).digest() == hashlib.sha256(content).digest()
    assert len(all_files(target)) == 20


@pytest_twisted.ensureDeferred
async def test_options_and_other_routes(start_server, http_client):
    server = await start_server()
    response = await http_client.request("OPTIONS", server.url + "/api/photo")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"access-control-allow-origin") == [b"*"]
    home = await http_client.get(server.url + "/")
    assert home.code == 200
    assert b"medimage_tx" in await home.content()
    discovery = await http_client.get(server.url + "/discovery")
    assert "LAN mode</th><td>off" in (await discovery.content()).decode()
    load = await http_client.get(server.url + "/load/")
    assert load.code == 200
    assert len(await load.json()) == 3
    check = await http_client.get(server.url + "/check=%23NHID1234-arm.jpg")
    assert check.code == 400
    assert (await check.content()).startswith(b"Sorry, you cannot read from this server.")
