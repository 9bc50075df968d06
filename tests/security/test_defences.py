"""
One test (or more) for each defence that a deliberate fault once slipped
past (issue 11).  Each asserts what a phone, a reader of the folders, a log
reader or an attacker sees: bytes on disk, answers, log lines, counts.
docs/testing.md maps each fault to the tests that catch it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs, formatEvent
from twisted.python.filepath import FilePath
from twisted.web import proxy, server
from twisted.web.client import Agent
from treq.client import HTTPClient

import documented
from conftest import (
    all_files, eventually, jpeg_bytes, multipart, post_upload, upload_photo, within, write_config,
)
from medimage_tx.config import DEFAULT_ALLOWED_CHARS
from medimage_tx.errors import Rejected
from medimage_tx.photos.naming import map_upload_name
from medimage_tx.photos.paths import inside
from processes import spawn

PAIRED_ID = "uPSE4UWHmJ8XqFUqvf"
APP_NAME = f"#{PAIRED_ID}-#NHID1234-arm-27-Nov-2026-10-11-12.jpg"
QUEUED_AS = f"/{PAIRED_ID}/NHID1234/arm-27-Nov-2026-10-11-12.jpg"
DELIVERED_AS = "NHID1234/arm-27-Nov-2026-10-11-12.jpg"
ACK = {b"X-MedImage-Ack": [b"1"]}
TWISTD = Path(sys.executable).parent / "twistd"


async def start_relay(start_server, clock=None, **settings):
    return await start_server("relay", clock=clock if clock is not None else Clock(),
                              allowPhotosLeaving=True, allowGettingRemotePhotos=False, **settings)


def port_of(server) -> int:
    return int(server.url.rsplit(":", 1)[1])


async def text_of(response) -> bytes:
    return await within(response.content())


# 1. The upload is fsynced before it is linked into place.


@pytest.mark.skipif(not TWISTD.exists(), reason="needs twistd beside the test's Python (make test)")
@pytest_twisted.ensureDeferred
async def test_upload_and_backup_copy_are_fsynced_before_they_are_linked(tmp_path, http_client):
    """
    Seen from outside the real process (strace): the temporary file's
    descriptor is fsynced before the file is linked into photos/, and the
    copy in the target's hidden incoming folder before it is linked into
    the target.
    """
    strace = shutil.which("strace")
    if strace is None:
        if os.environ.get("CI"):
            pytest.fail("strace is needed in CI (.ci/run installs it)")
        pytest.skip("strace is not installed")
    data, target = tmp_path / "data", tmp_path / "clinic"
    target.mkdir()
    write_config(data / "config.json", backupTo=[str(target)], keepMaster=True, lanMode=False)
    trace = tmp_path / "trace.txt"
    pidfile = tmp_path / "twistd.pid"
    process = spawn(
        [strace, "-f", "-y", "-qq", "-o", str(trace), "-e", "trace=fsync,fdatasync,link,linkat,rename,renameat,renameat2",
         str(TWISTD), "--nodaemon", f"--pidfile={pidfile}", "medimage", "--no-lan",
         "--data", str(data), "--port", "0", "--interface", "127.0.0.1"], str(tmp_path))
    port = await process.port()
    photo = jpeg_bytes(300_000)
    code, _, _ = await upload_photo(http_client, f"http://127.0.0.1:{port}", "#NHID1234-arm.jpg", photo)
    assert code == 200
    assert (target / "NHID1234" / "arm.jpg").read_bytes() == photo
    os.kill(int(pidfile.read_text()), signal.SIGTERM)
    await process.exited(30)
    lines = trace.read_text().splitlines()

    def first(pattern: str) -> int:
        for number, line in enumerate(lines):
            if re.search(pattern, line):
                return number
        raise AssertionError(f"no {pattern!r} in the trace:\n" + "\n".join(lines[-40:]))

    temp = re.escape(str(data / "tmp")) + r"/(upload-[^>\"]+\.part)"
    linked = first(r"link(at)?\(.*" + temp + r".*" + re.escape(str(data / "photos" / "NHID1234" / "arm.jpg")))
    name = re.search(temp, lines[linked]).group(1)
    synced = first(r"f(data)?sync\(\d+<" + re.escape(str(data / "tmp" / name)) + r">")
    assert synced < linked, "the upload was linked into place before it was flushed"
    copy_linked = first(r"link(at)?\(.*\.medimage-incoming/[^\"]+\.part\".*" + re.escape(str(target / "NHID1234" / "arm.jpg")))
    copy = re.search(r"(\.medimage-incoming/[^\"]+\.part)", lines[copy_linked]).group(1)
    copy_synced = first(r"f(data)?sync\(\d+<" + re.escape(str(target / copy)) + r">")
    assert copy_synced < copy_linked, "the copy was linked into the target before it was flushed"
    # And the folder entry itself is flushed after the link.
    assert any(re.search(r"fsync\(\d+<" + re.escape(str(data / "photos" / "NHID1234")) + r">", line)
               for line in lines[linked:])


# 2. An upload declared too large is refused from Content-Length, up front.


@pytest_twisted.ensureDeferred
async def test_upload_declared_too_large_is_refused_up_front(start_server, http_client):
    """
    A body whose photo is small but that declares more than the limit
    (here: a large second part the streaming check never counts) is
    refused from its Content-Length, and nothing is stored.
    """
    server = await start_server(maxUploadSize=100_000)
    boundary = "----medimage-declared"
    photo_part, _ = multipart("#P-small.jpg", jpeg_bytes(1_000), boundary=boundary)
    extra = (f'--{boundary}\r\nContent-Disposition: form-data; name="file2"; filename="x.bin"\r\n\r\n'.encode()
             + b"x" * 300_000 + b"\r\n")
    body = photo_part.replace(f"--{boundary}--\r\n".encode(), extra + f"--{boundary}--\r\n".encode())
    code, reason, _ = await post_upload(http_client, server.url, body,
                                        f"multipart/form-data; boundary={boundary}".encode())
    assert code == 400, reason
    assert reason.startswith(b"Upload too large: %d bytes declared" % len(body))
    assert all_files(server.photos) == [] and all_files(server.data / "tmp") == []


# 3. Pairing: at most 10 failed compares per address and 100 in total.


def client_from(source: str) -> HTTPClient:
    """
    An HTTP client whose connections come from C{source} (any 127.x.y.z is
    this machine), so one test can be many attackers.
    """

    class FromSource:
        def endpointForURI(self, uri):
            return TCP4ClientEndpoint(reactor, uri.host.decode(), uri.port, bindAddress=(source, 0))

    return HTTPClient(Agent.usingEndpointFactory(reactor, FromSource()))


async def issue_code(client, relay) -> tuple[str, str]:
    response = await within(client.post(f"{relay.url}/med-genid.php", data={"proxyServer": relay.url}))
    words = (await text_of(response)).decode().split()
    assert response.code == 200 and len(words) >= 2, words
    return words[0], words[1]


async def compare(client, relay, code: str) -> str:
    response = await within(client.get(f"{relay.url}/med-genid.php?compare={code}"))
    return (await text_of(response)).decode()


def wrong_code(right: str) -> str:
    return "ZZZZ" if right != "ZZZZ" else "YYYY"


@pytest_twisted.ensureDeferred
async def test_guess_limit_per_address_is_the_documented_ten(start_server, http_client):
    relay = await start_relay(start_server)
    code, paired_id = await issue_code(http_client, relay)
    attacker = client_from("127.0.0.7")
    for _ in range(documented.GUESSES_PER_ADDRESS - 1):
        assert await compare(attacker, relay, wrong_code(code)) == "nomatch"
    # Nine failures: the tenth compare is still answered honestly...
    assert await compare(attacker, relay, code) == f"{relay.url}/write/{paired_id}"
    assert await compare(attacker, relay, wrong_code(code)) == "nomatch"
    # ...ten failures: from here on even the right code is "nomatch".
    assert await compare(attacker, relay, code) == "nomatch"
    # Another address is not affected.
    assert await compare(client_from("127.0.0.8"), relay, code) == f"{relay.url}/write/{paired_id}"


@pytest_twisted.ensureDeferred
async def test_guess_limit_in_total_is_the_documented_hundred_per_hour(start_server, http_client):
    clock = Clock()
    relay = await start_relay(start_server, clock)
    code, paired_id = await issue_code(http_client, relay)
    per_address = documented.GUESSES_PER_ADDRESS
    attackers = documented.GUESSES_IN_TOTAL // per_address
    for n in range(attackers):
        bot = client_from(f"127.0.1.{n + 1}")
        for _ in range(per_address - (1 if n == attackers - 1 else 0)):
            assert await compare(bot, relay, wrong_code(code)) == "nomatch"
    phone = client_from("127.0.2.1")
    # 99 failures in all: a new address still pairs; the 100th failure locks everyone out.
    assert await compare(phone, relay, code) == f"{relay.url}/write/{paired_id}"
    assert await compare(client_from(f"127.0.1.{attackers}"), relay, wrong_code(code)) == "nomatch"
    assert await compare(phone, relay, code) == "nomatch"
    # The hour has passed (failures count in one-minute buckets, so for up
    # to a minute more): room again.
    clock.advance(documented.GUESS_WINDOW_SECONDS + 61)
    code, paired_id = await issue_code(http_client, relay)
    assert await compare(phone, relay, code) == f"{relay.url}/write/{paired_id}"


# 4. '/ \ : NUL' are dropped from names whatever allowedChars says.


@pytest.mark.parametrize("allowed", [DEFAULT_ALLOWED_CHARS, "\\s\\S", "a-zA-Z0-9#._/:\\\\\\x00-"])
def test_separators_never_survive_name_mapping(allowed):
    for never in ("/", "\\", ":", "\x00"):
        mapped = map_upload_name(f"#a{never}b-x{never}y.jpg", allowed_chars=allowed)
        assert mapped.folders == ("ab",) and mapped.stem == "xy", (never, mapped)


@pytest_twisted.ensureDeferred
async def test_permissive_allowed_chars_still_store_flat_names(start_server, http_client):
    """
    A clinic that lets every character through still gets one folder
    level per '#' word: '/' and '\\' never make folders, ':' never a drive
    or stream, NUL never cuts a name.
    """
    server = await start_server(allowedChars="\\s\\S")
    for index, never in enumerate(("/", "\\", ":", "\x00")):
        photo = jpeg_bytes(2_000, seed=index + 1)
        code, reason, _ = await upload_photo(http_client, server.url, f"#a{never}b-x{index}{never}y.jpg", photo)
        assert code == 200, (never, reason)
        assert (server.photos / "ab" / f"x{index}y.jpg").read_bytes() == photo
    assert [p.relative_to(server.photos).as_posix() for p in all_files(server.photos)] == [
        f"ab/x{i}y.jpg" for i in range(4)]


# 5. paths.inside(): the second layer, tested with what the first layer stops.


@pytest.mark.parametrize("relative", [
    "../outside.jpg", "a/../../outside.jpg", "/etc/passwd", "//server/share/x.jpg", "a//b.jpg",
    "./a.jpg", "a/./b.jpg", "..", ".", "", "C:/x.jpg", "C:x.jpg", "a\\..\\..\\x.jpg", "a\x00b.jpg",
    "a/ ..", " a.jpg", "a.jpg ", "a/", "a/../b.jpg",
])
def test_inside_refuses_every_path_that_is_not_plainly_inside(tmp_path, relative):
    with pytest.raises(Rejected) as refused:
        inside(tmp_path, relative)
    assert str(refused.value) == "Invalid file path"  # the one line a client sees


def test_inside_accepts_plain_relative_paths(tmp_path):
    assert inside(tmp_path, "NHID1234/arm.jpg") == tmp_path / "NHID1234" / "arm.jpg"
    assert inside(tmp_path, "x..y.jpg") == tmp_path / "x..y.jpg"


def test_store_refuses_parts_that_escape_even_when_given_directly(tmp_path):
    from medimage_tx.photos.store import PhotoStore

    store = PhotoStore(tmp_path / "data", [], keep_master=True)
    store.prepare()
    for parts in (("..", "escaped.jpg"), ("..", "..", "escaped.jpg"), ("/tmp", "escaped.jpg")):
        temp = store.temp / "upload-x.part"
        temp.write_bytes(b"photo")
        with pytest.raises(Rejected):
            store.store(temp, None, parts)
        assert not temp.exists()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest_twisted.ensureDeferred
async def test_tampered_pending_marker_cannot_copy_files_from_outside(start_server, tmp_path):
    """
    A pending-copy marker naming a path outside photos/ (written by
    anything that could write there) copies nothing at start.
    """
    target = tmp_path / "clinic"
    target.mkdir()
    data = tmp_path / "pc"
    (data / "pending").mkdir(parents=True)
    (data / "secret.txt").write_bytes(b"not a photo")
    (data / "pending" / ("0" * 32 + ".json")).write_text(json.dumps({"path": "../secret.txt"}))
    (data / "pending" / ("1" * 32 + ".json")).write_text(json.dumps({"path": "../../escape.txt"}))
    await start_server(backupTo=[target.as_posix()], keepMaster=True)
    assert all_files(target) == []
    assert not (tmp_path / "secret.txt").exists() and not (tmp_path / "escape.txt").exists()


# 6. Windows device names are defused, all of them.

DEVICE_NAMES = ["CON", "PRN", "AUX", "NUL"] + [f"COM{n}" for n in range(1, 10)] + [f"LPT{n}" for n in range(1, 10)]


@pytest.mark.parametrize("device", DEVICE_NAMES)
def test_every_windows_device_name_is_defused(device):
    for spelling in (device, device.lower(), device.title()):
        mapped = map_upload_name(f"#{spelling}-{spelling}.jpg", allowed_chars=DEFAULT_ALLOWED_CHARS)
        assert mapped.folders == (f"_{spelling}",) and mapped.stem == f"_{spelling}"
        with_dot = map_upload_name(f"#{spelling}.txt-x.jpg", allowed_chars=DEFAULT_ALLOWED_CHARS)
        assert with_dot.folders == (f"_{spelling}.txt",)


@pytest_twisted.ensureDeferred
async def test_device_names_are_stored_defused_on_the_pc(start_server, http_client):
    server = await start_server()
    for index, device in enumerate(("COM1", "lpt9", "Com5")):
        code, _, _ = await upload_photo(http_client, server.url, f"#{device}-{device}.jpg", jpeg_bytes(seed=index + 1))
        assert code == 200
    assert sorted(p.relative_to(server.photos).as_posix() for p in all_files(server.photos)) == [
        "_COM1/_COM1.jpg", "_Com5/_Com5.jpg", "_lpt9/_lpt9.jpg"]


# 7. The PC checks the relay's Digest: a damaged photo is neither stored nor confirmed.


def damaging_front(relay_port: int, damaged: list):
    """
    A reverse proxy in front of the relay that flips one byte in the body
    of the first photo it passes on, keeping the relay's headers (and so
    its Digest).  C{damaged} collects what it damaged.
    """

    class Damaging(proxy.ProxyClient):
        def handleHeader(self, key, value):
            if key.lower() == b"file-name":
                self.carries_photo = True
            super().handleHeader(key, value)

        def handleResponsePart(self, buffer):
            if getattr(self, "carries_photo", False) and not damaged and len(buffer) > 100:
                damaged.append(self.rest)
                buffer = buffer[:100] + bytes([buffer[100] ^ 0xFF]) + buffer[101:]
            super().handleResponsePart(buffer)

    class Factory(proxy.ProxyClientFactory):
        protocol = Damaging

    class Front(proxy.ReverseProxyResource):
        proxyClientFactoryClass = Factory

        def getChild(self, path, request):
            return Front(self.host, self.port, self.path + b"/" + path, self.reactor)

    return Front("127.0.0.1", relay_port, b"")


def next_delivery(pc) -> defer.Deferred:
    d = defer.Deferred()

    def once(relative):
        pc.service.puller.delivered.remove(once)
        d.callback(relative)

    pc.service.puller.delivered.append(once)
    return d


def fast_retries(service):
    service.puller.backoff_start = 0.01
    service.puller.backoff_max = 0.05
    service.puller.legacy_interval = 0.02


@pytest_twisted.ensureDeferred
async def test_photo_damaged_on_the_way_is_not_stored_or_confirmed(start_server, http_client, tmp_path):
    clock = Clock()
    relay = await start_relay(start_server, clock)
    photo = jpeg_bytes(200_000)
    assert (await upload_photo(http_client, relay.url, APP_NAME, photo))[0] == 200
    damaged: list = []
    front = reactor.listenTCP(0, server.Site(damaging_front(port_of(relay), damaged)), interface="127.0.0.1")
    target = tmp_path / "clinic"
    target.mkdir()
    try:
        with capturedLogs() as events:
            pc = await start_server("pc", tune=fast_retries, globalId=PAIRED_ID, keepMaster=False,
                                    backupTo=[target.as_posix()],
                                    readProxy=f"http://127.0.0.1:{front.getHost().port}/read/{PAIRED_ID}")
            delivered = next_delivery(pc)
            await eventually(lambda: delivered.called or any("arrived damaged" in formatEvent(e) for e in events),
                             "the PC noticed the damage")
        assert damaged, "the front never carried the photo: " + "\n".join(formatEvent(e) for e in events)[-3000:]
        # The damaged copy is neither stored nor confirmed: the relay still holds it, leased.
        assert all_files(target) == [] and all_files(pc.photos) == []
        assert len(all_files(relay.photos)) == 1
        clock.advance(documented.LEASE_SECONDS + 1)  # the lease runs out: sent again, intact
        assert await within(delivered) == DELIVERED_AS
    finally:
        await front.stopListening()
    assert [p.relative_to(target).as_posix() for p in all_files(target)] == [DELIVERED_AS]
    assert (target / DELIVERED_AS).read_bytes() == photo
    await eventually(lambda: all_files(relay.photos) == [], "the relay dropped the confirmed photo")


# 8-10, 15. Relay reads: failed sends, JSONP, long polls, leases.


def read_headers_then_reset(port: int, path: str) -> bytes:
    """
    An old reader that asks for a photo, reads the answer's headers and
    then drops the connection (RST) with most of the photo unsent.
    """
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: relay\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            assert chunk, "the relay closed before answering"
            head += chunk
        return head.split(b"\r\n\r\n")[0]
    finally:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()


@pytest_twisted.ensureDeferred
async def test_plain_read_that_fails_to_send_puts_the_photo_back(start_server, http_client):
    relay = await start_relay(start_server, maxUploadSize=40_000_000)
    read = f"{relay.url}/read/{PAIRED_ID}"
    photo = jpeg_bytes(12_000_000)  # far more than the socket buffers hold
    assert (await upload_photo(http_client, relay.url, APP_NAME, photo))[0] == 200
    head = await deferToThread(read_headers_then_reset, port_of(relay), f"/read/{PAIRED_ID}")
    assert head.startswith(b"HTTP/1.1 200") and f"file-name: {QUEUED_AS}".lower().encode() in head.lower()

    async def offered() -> bool:
        response = await within(http_client.head(read))
        await text_of(response)
        return response.headers.getRawHeaders(b"file-name") == [QUEUED_AS.encode()]

    await eventually(offered, "the photo was offered again after the failed send")
    again = await within(http_client.get(read))
    assert await text_of(again) == photo
    assert await text_of(await within(http_client.get(read))) == b"none"


@pytest_twisted.ensureDeferred
async def test_jsonp_read_never_takes_the_photo(start_server, http_client):
    relay = await start_relay(start_server)
    read = f"{relay.url}/read/{PAIRED_ID}"
    photo = jpeg_bytes()
    assert (await upload_photo(http_client, relay.url, APP_NAME, photo))[0] == 200
    for _ in range(2):
        response = await within(http_client.get(read + "?callback=medImage.got"))
        assert await text_of(response) == f'medImage.got("{QUEUED_AS}")'.encode()
        assert response.headers.getRawHeaders(b"file-name") is None
    check = await within(http_client.get(relay.url + "/check=" + quote(APP_NAME)))
    assert await text_of(check) == b"true"
    taken = await within(http_client.get(read))
    assert await text_of(taken) == photo


@pytest_twisted.ensureDeferred
async def test_long_poll_answers_none_after_wait_seconds(start_server, http_client):
    """
    On the real clock: a poll with C{wait=1} and nothing to read is held
    for that second (not answered at once) and then answered C{none}.
    """
    relay = await start_relay(start_server, clock=reactor)
    started = time.monotonic()
    response = await within(http_client.get(f"{relay.url}/read/{PAIRED_ID}?wait=1", headers=ACK),
                            rule="a long poll with wait=1 and nothing to read is answered 'none' "
                                 "once its second is over")
    assert (response.code, await text_of(response)) == (200, b"none")
    assert time.monotonic() - started >= 0.9, "answered before its wait was over"


@pytest_twisted.ensureDeferred
async def test_leased_photo_stays_hidden_for_the_documented_five_minutes(start_server, http_client):
    clock = Clock()
    relay = await start_relay(start_server, clock)
    read = f"{relay.url}/read/{PAIRED_ID}"
    photo = jpeg_bytes()
    assert (await upload_photo(http_client, relay.url, APP_NAME, photo))[0] == 200
    first = await within(http_client.get(read, headers=ACK))
    assert await text_of(first) == photo
    clock.advance(documented.LEASE_SECONDS - 1)
    hidden = await within(http_client.get(read, headers=ACK))
    assert await text_of(hidden) == b"none", "given out again before its lease ran out"
    clock.advance(2)
    again = await within(http_client.get(read, headers=ACK))
    assert await text_of(again) == photo


# 11. The relay's log: no id, no patient folder, no file name, on any line.


@pytest.mark.skipif(not TWISTD.exists(), reason="needs twistd beside the test's Python (make test)")
@pytest_twisted.ensureDeferred
async def test_relay_log_never_holds_ids_folders_or_names(tmp_path, http_client):
    data = tmp_path / "relay"
    write_config(data / "config.json", allowPhotosLeaving=True, allowGettingRemotePhotos=False, lanMode=False)
    process = spawn([str(TWISTD), "--nodaemon", "--pidfile=", "medimage", "--no-lan", "--data", str(data),
                             "--port", "0", "--interface", "127.0.0.1"], str(tmp_path))
    url = f"http://127.0.0.1:{await process.port()}"
    read = f"{url}/read/{PAIRED_ID}"
    for index in range(3):
        code, _, _ = await upload_photo(http_client, url, f"#{PAIRED_ID}-#NHID1234-arm{index}-27-Nov.jpg",
                                        jpeg_bytes(seed=index + 1))
        assert code == 200
    for response in [await within(http_client.head(read)),
                     await within(http_client.get(read + "?callback=cb")),
                     await within(http_client.get(f"{url}/check=" + quote(f"#{PAIRED_ID}-#NHID1234-arm0-27-Nov.jpg"))),
                     await within(http_client.get(read))]:
        await text_of(response)
    leased = await within(http_client.get(read + "?wait=1", headers=ACK))
    await text_of(leased)
    receipt = leased.headers.getRawHeaders(b"x-medimage-receipt")[0].decode()
    confirmed = await within(http_client.delete(f"{read}/{receipt}"))
    assert await text_of(confirmed) == b"deleted"
    await text_of(await within(http_client.delete(f"{read}/unknownreceipt")))
    await text_of(await within(http_client.get(f"{url}/read/NotAnIdAtAll..")))
    process.transport.signalProcess(signal.SIGTERM)
    await process.exited(30)
    log = process.output.decode(errors="replace")
    assert "Relay: queued a photo" in log and "delivery confirmed" in log  # the log was captured
    secrets = (PAIRED_ID, "NHID1234", "arm0", "arm1", "arm2", "27-Nov", receipt, "/read/", "check=")
    leaks = [line for line in log.splitlines() if any(secret in line for secret in secrets)]
    assert leaks == []


# 12. The relay's per-address connection cap.


class Connection(protocol.Protocol):
    def __init__(self):
        self.received = b""
        self.closed: defer.Deferred = defer.Deferred()

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.closed.callback(None)


@pytest_twisted.ensureDeferred
async def test_relay_caps_connections_per_address_at_the_documented_number(start_server):
    relay = await start_relay(start_server)
    cap = documented.CONNECTIONS_PER_ADDRESS

    async def connect(source: str) -> Connection:
        connection = Connection()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port_of(relay), bindAddress=(source, 0))
        await within(connectProtocol(endpoint, connection))
        return connection

    held = [await connect("127.0.0.5") for _ in range(cap)]
    extra = await connect("127.0.0.5")
    other = await connect("127.0.0.6")
    try:
        for connection in (extra, other, held[-1]):
            connection.transport.write(b"GET /load/ HTTP/1.1\r\nHost: relay\r\n\r\n")
        await within(extra.closed)
        assert extra.received == b"", "one connection too many was served"
        await eventually(lambda: b"\r\n\r\n" in other.received and b"\r\n\r\n" in held[-1].received,
                         "the held connections and another address are served")
        assert other.received.startswith(b"HTTP/1.1 200") and held[-1].received.startswith(b"HTTP/1.1 200")
        # One closed: room for one more from that address.
        held[0].transport.loseConnection()
        await within(held[0].closed)
        again = await connect("127.0.0.5")
        again.transport.write(b"GET /load/ HTTP/1.1\r\nHost: relay\r\n\r\n")
        await eventually(lambda: b"\r\n\r\n" in again.received, "a freed place is served")
        held.append(again)
    finally:
        for connection in held + [extra, other]:
            connection.transport.abortConnection()


# 13. UDP scan replies: at most 5 a second per sender.


class Replies(DatagramProtocol):
    def __init__(self):
        self.count = 0
        self.marker: defer.Deferred = defer.Deferred()

    def datagramReceived(self, data, address):
        if json.loads(data).get("medimage") == "server":
            self.count += 1
            if not self.marker.called:
                self.marker.callback(None)


@pytest_twisted.ensureDeferred
async def test_a_sender_gets_at_most_the_documented_replies_per_second(start_server):
    from medimage_tx.discovery import DiscoveryService, ScanResponder
    from medimage_tx.lan.rules import Interface, make_probe

    pc = await start_server(globalId=PAIRED_ID)
    loopback = [Interface("lo", "127.0.0.1", "255.0.0.0")]
    discovery = DiscoveryService(pc.service.state, reactor, lambda: port_of(pc), interfaces=lambda: loopback)
    discovery.status.interfaces = loopback
    responder = reactor.listenUDP(0, ScanResponder(discovery), interface="127.0.0.1")
    flooder, flood = Replies(), None
    try:
        flood = reactor.listenUDP(0, flooder, interface="127.0.0.1")
        target = ("127.0.0.1", responder.getHost().port)
        for n in range(40):
            flood.write(make_probe(f"{n:04x}"), target)
        # A probe from another sender, after the flood: its reply means every
        # flood probe has been handled (one socket, handled in order).
        for marker_source in ("127.0.0.2", "127.0.0.3"):
            other = Replies()
            port = reactor.listenUDP(0, other, interface=marker_source)
            try:
                port.write(make_probe("abcd"), target)
                await within(other.marker)
            finally:
                await port.stopListening()
    finally:
        await responder.stopListening()
        if flood is not None:
            await flood.stopListening()
    per_second = documented.UDP_REPLIES_PER_SENDER_PER_SECOND
    # 40 probes within far less than a second: the documented number, or
    # twice it if the flood happened to straddle the start of a new second.
    assert per_second <= flooder.count <= 2 * per_second, flooder.count


# 14. backupTo copies never appear half-written.


@pytest_twisted.ensureDeferred
async def test_reader_of_the_target_never_sees_a_half_written_copy(start_server, http_client, tmp_path):
    """
    Watching the target folder as the practice software could (inotify):
    a photo's name appears there complete, by a link, and is never written
    to afterwards; only the hidden incoming folder sees writes.
    """
    from twisted.internet import inotify

    target = tmp_path / "clinic"
    (target / "NHID1234").mkdir(parents=True)
    server = await start_server(backupTo=[target.as_posix()], keepMaster=True)
    events: list = []
    sentinel_seen: defer.Deferred = defer.Deferred()

    def seen(ignored, path, mask):
        path = path.asTextMode()
        events.append((path.path, inotify.humanReadableMask(mask)))
        if path.basename() == "sentinel" and not sentinel_seen.called:
            sentinel_seen.callback(None)

    notifier = inotify.INotify()
    notifier.startReading()
    try:
        notifier.watch(FilePath(str(target / "NHID1234")), callbacks=[seen],
                       mask=inotify.IN_WATCH_MASK | inotify.IN_OPEN | inotify.IN_CLOSE_WRITE)
        photo = jpeg_bytes(3_000_000)
        code, _, _ = await upload_photo(http_client, server.url, "#NHID1234-arm.jpg", photo)
        assert code == 200
        (target / "NHID1234" / "sentinel").write_bytes(b"")
        await within(sentinel_seen)  # every earlier event has been read by now
    finally:
        notifier.stopReading()
        notifier.loseConnection()
    assert (target / "NHID1234" / "arm.jpg").read_bytes() == photo
    photo_events = [mask for path, mask in events if path.endswith("/arm.jpg")]
    # A link makes the name ("create") and counts the link ("attrib"); a
    # copy written in place would also show "modify" and "close_write".
    assert ["create"] in photo_events, photo_events
    assert all(set(mask) <= {"create", "attrib"} for mask in photo_events), photo_events
