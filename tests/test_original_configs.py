"""
The original MedImage server's config shapes load unchanged and do what
their keys say: its shipped Windows, Mac and Linux files (our own fixtures in
tests/fixtures/original-shapes/, reproducing their shapes), null for "not
set", headers in its list form, and its built-in default types.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest
import pytest_twisted

from conftest import all_files, jpeg_bytes, upload_photo
from processes import spawn

from medimage_tx.config import DEFAULT_ALLOWED_CHARS, load_config, save_config

SHAPES = Path(__file__).parent / "fixtures" / "original-shapes"
TWISTD = Path(sys.executable).parent / "twistd"
PAIRED_ID = "uPSE4UWHmJ8XqFUqvf"


def shape(name: str) -> dict:
    return json.loads((SHAPES / f"{name}.json").read_text())


async def upload(client, url: str, name: str, content: bytes):
    code, body, _ = await upload_photo(client, url, name, content)
    return code, body


@pytest.mark.parametrize("name, role", [
    ("windows", "pc"), ("mac", "pc"), ("linux", "relay"), ("written-by-original", "pc"),
])
def test_each_shape_loads_unchanged(tmp_path, name, role):
    path = tmp_path / "config.json"
    path.write_bytes((SHAPES / f"{name}.json").read_bytes())
    config = load_config(path)
    assert config.role == role
    # null is "not set": the defaults, as the original reads it.
    assert config.readProxy == "" and config.webProxy == ""
    assert config.listenPort == 5566
    assert config.allowedChars == DEFAULT_ALLOWED_CHARS
    # No allowedTypes key here: the types the original's shipped files list.
    assert {t.extension for t in config.allowedTypes} == {
        ".jpg", ".pdf", ".mp4", ".mp3", ".m4v", ".m4a", ".csv", ".json", ".heic", ".heif"}


def test_linux_shape_has_no_targets_and_is_locked_down(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes((SHAPES / "linux.json").read_bytes())
    config = load_config(path)
    assert config.backupTo == () and config.lockDown is True
    assert config.allowGettingRemotePhotos is False and config.httpsKey == ""


def test_headers_list_form_is_read_and_kept_on_save(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes((SHAPES / "written-by-original.json").read_bytes())
    config = load_config(path)
    assert config.headers == {"Access-Control-Allow-Origin": "*", "X-Clinic-Note": "original list form"}
    assert config.backupTo == ()  # [""] is no folder, as in the original
    save_config(config, transfer=1234)
    saved = json.loads(path.read_text())
    assert saved["transfer"] == 1234
    # Written back in the form it was found, and the other shapes too.
    assert saved["headers"] == shape("written-by-original")["headers"]
    assert saved["listenPort"] == "5566" and saved["globalId"] is None


def test_an_early_originals_uuid_id_loads(tmp_path):
    # Early original servers made their id with uuid.v4() and still read it.
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"globalId": "3b241101-e2bb-4255-8caf-4136c566a962", "readProxy": None}))
    assert load_config(path).globalId == "3b241101-e2bb-4255-8caf-4136c566a962"


def test_bad_header_list_entry_is_one_clear_line(tmp_path):
    from medimage_tx.config import ConfigError

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"headers": [{"header": "X-A"}]}))
    with pytest.raises(ConfigError, match="key 'headers': each entry needs"):
        load_config(path)


@pytest_twisted.ensureDeferred
async def test_windows_shape_serves_a_clinic_pc(start_server, http_client):
    server = await start_server(**shape("windows"))
    photo = jpeg_bytes(30_000)
    assert await upload(http_client, server.url, "#NHID1234-arm-27-Nov-2026.jpg", photo) == (
        200, b"Received upload successfully!")
    # No backupTo: the photo waits in the staging folder, keepMaster or not.
    assert (server.photos / "NHID1234" / "arm-27-Nov-2026.jpg").read_bytes() == photo
    # Not a relay: nothing can be read from it; readProxy null: no puller.
    response = await http_client.get(server.url + f"/read/{PAIRED_ID}")
    assert response.code == 400
    assert server.service.state.config.readProxy == ""


@pytest_twisted.ensureDeferred
async def test_mac_shape_copies_to_its_folder_and_keeps_no_master(start_server, http_client, tmp_path):
    target = tmp_path / "Users" / "doctor" / "medimage" / "photos"
    target.mkdir(parents=True)
    settings = shape("mac")
    settings["backupTo"] = [target.as_posix()]  # the only change: a folder that exists here
    server = await start_server(**settings)
    photo = jpeg_bytes(30_000)
    assert (await upload(http_client, server.url, "#moles-John123-27-Nov-2026.jpg", photo))[0] == 200
    assert (target / "moles" / "John123-27-Nov-2026.jpg").read_bytes() == photo
    assert all_files(server.photos) == []  # keepMaster: false


@pytest_twisted.ensureDeferred
async def test_written_by_original_shape_sends_list_headers_and_takes_default_types(
        start_server, http_client):
    server = await start_server(**shape("written-by-original"))
    # As the browser app's LAN scan reads it: cross-origin (the PC's own
    # view of / carries no config headers).
    response = await http_client.get(server.url + "/", headers={b"Origin": [b"file://"]})
    assert response.headers.getRawHeaders(b"x-clinic-note") == [b"original list form"]
    await response.content()
    samples = {
        "a.pdf": b"%PDF-1.4\n" + b"x" * 500,
        "b.mp4": b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00" * 500,
        "c.m4v": b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x01" * 500,
        "d.mp3": b"ID3\x03\x00\x00\x00\x00\x00\x00" + b"\x00" * 500,
        "e.m4a": b"\x00\x00\x00\x18ftypM4A \x00\x00\x00\x00M4A mp42" + b"\x00" * 500,
        "f.csv": b"patient,wound,area\nJohn123,arm,12\n",
        "g.json": b'{"patient": "John123", "area": 12}\n',
    }
    for name, content in samples.items():
        code, body = await upload(http_client, server.url, f"#T-{name}", content)
        assert code == 200, (name, body)
        assert (server.photos / "T" / name).read_bytes() == content
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 500
    code, body = await upload(http_client, server.url, "#T-h.png", png)
    assert code == 400 and b"File type not allowed" in body
    assert not (server.photos / "T" / "h.png").exists()


pytestmark_twistd = pytest.mark.skipif(
    not TWISTD.exists(), reason=f"no twistd beside {sys.executable}: run the tests with `make test`")


@pytestmark_twistd
@pytest_twisted.ensureDeferred
async def test_linux_shape_runs_a_relay_in_twistd(tmp_path, http_client):
    data = tmp_path / "relay"
    data.mkdir()
    (data / "config.json").write_bytes((SHAPES / "linux.json").read_bytes())
    process = spawn([str(TWISTD), "--nodaemon", "--pidfile=", "medimage", "--no-lan",
                     "--data", str(data), "--port", "0", "--interface", "127.0.0.1"], str(tmp_path))
    try:
        port = await process.port()
        url = f"http://127.0.0.1:{port}"
        photo = jpeg_bytes(40_000)
        name = f"#{PAIRED_ID}-#NHID1234-arm-27-Nov-2026.jpg"
        code, body = await upload(http_client, url, name, photo)
        assert code == 200, (body, process.output.decode(errors="replace"))
        # A relay: the PC reads it, and the phone's check follows it.
        check = await http_client.get(f"{url}/check={name.replace('#', '%23')}")
        assert await check.content() == b"true"
        read = await http_client.get(f"{url}/read/{PAIRED_ID}")
        assert read.headers.getRawHeaders(b"file-name") == [f"/{PAIRED_ID}/NHID1234/arm-27-Nov-2026.jpg".encode()]
        assert await read.content() == photo
        # A photo without a pairing is refused, not stored.
        code, body = await upload(http_client, url, "#NHID1234-arm.jpg", jpeg_bytes(1_000))
        assert code == 400 and b"Please reconnect your app" in body
    finally:
        if not process.ended.called:
            process.transport.signalProcess(signal.SIGTERM)
    assert await process.exited() == -signal.SIGTERM
    assert b"relay" in process.output.lower()
    # The relay's file is as it was: nothing rewritten into it.
    assert (data / "config.json").read_bytes() == (SHAPES / "linux.json").read_bytes()


@pytestmark_twistd
@pytest_twisted.ensureDeferred
async def test_a_fresh_install_takes_heic_and_heif_as_the_originals_shipped_configs_do(tmp_path, http_client):
    # config-original/{win,mac,lin}ORIGINALconfig.json list .heic (image/heic)
    # and .heif (image/heif) after the eight of bin/server.js: iPhones send HEIC.
    data = tmp_path / "data"
    process = spawn([str(TWISTD), "--nodaemon", "--pidfile=", "medimage", "--no-lan",
                     "--data", str(data), "--port", "0", "--interface", "127.0.0.1"], str(tmp_path))
    try:
        url = f"http://127.0.0.1:{await process.port()}"
        written = json.loads((data / "config.json").read_text())["allowedTypes"]
        assert {"extension": ".heic", "mime": "image/heic"} in written
        assert {"extension": ".heif", "mime": "image/heif"} in written
        heic = iso_media(b"heic", b"mif1", b"heic")
        heif = iso_media(b"mif1", b"mif1", b"heic")
        for name, content in (("#moles-John123.heic", heic), ("#moles-John124.heif", heif)):
            code, body = await upload(http_client, url, name, content)
            assert code == 200, body
        assert (data / "photos" / "moles" / "John123.heic").read_bytes() == heic
        assert (data / "photos" / "moles" / "John124.heif").read_bytes() == heif
    finally:
        if not process.ended.called:
            process.transport.signalProcess(signal.SIGTERM)
    assert await process.exited() == -signal.SIGTERM


def iso_media(brand: bytes, *compatible: bytes) -> bytes:
    body = brand + b"\x00\x00\x00\x00" + b"".join(compatible)
    return (8 + len(body)).to_bytes(4, "big") + b"ftyp" + body + b"\x00" * 2000
