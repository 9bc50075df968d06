"""
The HTTP-level defences, in memory (issue 18): a real PC and a real relay
(config.json, photo store in tmp_path, resource tree, site, limits, as
C{build_service} wires them) on a L{MemoryReactorClock}, reached through
in-memory transports, time moved by the test (tests/memory_http.py).

Each test is the fast counterpart of a real-server test named in its
docstring (tests/security/..., loopback sockets or real twistd processes),
which stays.
"""

from __future__ import annotations

import errno
import json
import os
from urllib.parse import quote

import pytest
from twisted.logger import capturedLogs, formatEvent

import documented
from conftest import all_files, jpeg_bytes, multipart
from memory_http import PULLS, memory_server, pull_producers_in_memory

PAIRED_ID = "uPSE4UWHmJ8XqFUqvf"
APP_NAME = f"#{PAIRED_ID}-#NHID1234-arm-27-Nov-2026-10-11-12.jpg"
QUEUED_AS = f"/{PAIRED_ID}/NHID1234/arm-27-Nov-2026-10-11-12.jpg"
RECEIVED = b"Received upload successfully!"
ACK = "1"
EVIL = b"http://evil.example"
#: The idle timeout (docs/security.md): a kept-alive connection with no request.
IDLE_SECONDS = 75


@pytest.fixture(autouse=True)
def pulls(monkeypatch):
    pull_producers_in_memory(monkeypatch)


def aborted(transport) -> bool:
    # StringTransport.abortConnection marks it disconnected (loseConnection: only disconnecting).
    return transport.disconnected


def relay_name(n: int = 0) -> str:
    return f"#{PAIRED_ID}-#NHID1234-arm{n}-27-Nov.jpg"


# -- The injected reactor ------------------------------------------------------


def test_the_http_side_runs_on_the_injected_reactor_only(tmp_path):
    """
    Deadlines, the idle timeout, the request budget, long polls and the
    blocking calls of a PC and a relay all go through what build_service
    was given: nothing lands on the global reactor's clock.
    """
    from twisted.internet import reactor as global_reactor

    before = set(global_reactor.getDelayedCalls())
    for role, name in (("pc", "#NHID1234-arm.jpg"), ("relay", APP_NAME)):
        server = memory_server(tmp_path, role)
        assert server.answer(server.upload(name, jpeg_bytes()))[0] == 200
        assert server.threads.calls > 0  # stored through the injected runner
        server.get("/")
        server.connect()[0].dataReceived(b"GET / HTTP/1.1\r\n")  # headers still coming
        if role == "relay":
            server.get(f"/read/{PAIRED_ID}")
            server.client().get(server.url(f"/read/{PAIRED_ID}?wait=30"))
            server.flush()
        assert server.reactor.getDelayedCalls()
    assert set(global_reactor.getDelayedCalls()) - before == set()


# -- The channel: header deadline, body deadline, connection caps -----------


@pytest.mark.parametrize("role", ["pc", "relay"])
def test_the_header_deadline_runs_from_connect(tmp_path, role):
    """
    Real counterparts: security/test_connections.py::test_a_dribbled_request_line_is_cut_off_from_connect,
    security/test_faults.py::test_slowloris_headers_and_body_are_cut_off.
    """
    server = memory_server(tmp_path, role)
    deadline = server.site.limits.header_seconds
    silent = server.connect()
    dribbling = server.connect()
    dribbling[0].dataReceived(b"GET /")
    server.reactor.advance(deadline - 1)
    for byte in b"aaaa":  # a byte now and then buys nothing
        dribbling[0].dataReceived(bytes([byte]))
    assert not silent[1].disconnecting and not dribbling[1].disconnecting
    server.reactor.advance(1)
    for channel, transport in (silent, dribbling):
        assert aborted(transport) and transport.value() == b""
        server.hang_up(channel, transport)
    assert server.site.open_connections == 0


def test_a_kept_alive_request_has_its_own_header_deadline(tmp_path):
    server = memory_server(tmp_path)
    channel, transport = server.connect()
    channel.dataReceived(b"GET /load/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    # Waiting for the next request is the idle timeout's business...
    server.reactor.advance(server.site.limits.header_seconds + 1)
    assert not transport.disconnecting
    # ...its first byte starts the header deadline again.
    channel.dataReceived(b"G")
    server.reactor.advance(server.site.limits.header_seconds)
    assert aborted(transport)
    server.hang_up(channel, transport)
    assert server.site.open_connections == 0


def test_an_idle_connection_is_closed_on_the_servers_clock(tmp_path):
    """
    The idle timeout runs on the server's reactor (here the fake one), as
    the deadlines do.
    """
    server = memory_server(tmp_path)
    channel, transport = server.connect()
    channel.dataReceived(b"GET /load/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    server.reactor.advance(IDLE_SECONDS - 1)
    assert not transport.disconnecting
    server.reactor.advance(1)
    assert transport.disconnecting
    server.hang_up(channel, transport)
    assert server.site.open_connections == 0


def test_a_body_that_stops_coming_is_cut_off_at_its_deadline(tmp_path):
    """
    Real counterpart: security/test_faults.py::test_slowloris_headers_and_body_are_cut_off.
    """
    server = memory_server(tmp_path)
    limits = server.site.limits
    channel, transport = server.connect()
    channel.dataReceived(b"POST /api/photo HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                         b"boundary=b\r\nContent-Length: 1000\r\n\r\n--b\r\n")
    allowed = limits.body_base_seconds + 1000 / limits.min_body_rate
    server.reactor.advance(allowed - 0.01)
    assert not transport.disconnecting
    server.reactor.advance(0.02)
    assert aborted(transport) and transport.value() == b""
    server.hang_up(channel, transport)
    assert all_files(server.data / "tmp") == []


def test_a_huge_declared_body_gets_no_more_time_than_the_largest_upload(tmp_path):
    """
    Real counterpart: security/test_faults.py::test_huge_declared_body_gets_no_more_time_than_the_largest_upload.
    """
    server = memory_server(tmp_path, maxUploadSize=100_000)
    limits = server.site.limits
    channel, transport = server.connect()
    channel.dataReceived(b"POST /api/photo HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                         b"Content-Length: 100000000000\r\n\r\n--b\r\n")
    # The largest upload (100 kB and its envelope) at the slowest rate, not 100 GB's worth.
    server.reactor.advance(limits.body_base_seconds + 200_000 / limits.min_body_rate)
    assert aborted(transport)


@pytest.mark.parametrize("role", ["pc", "relay"])
def test_connections_are_capped_per_address(tmp_path, role):
    """
    Real counterparts: security/test_defences.py::test_relay_caps_connections_per_address_at_the_documented_number,
    security/test_connections.py::test_connections_are_capped_per_address_on_the_pc.
    """
    server = memory_server(tmp_path, role)
    held = [server.connect("127.0.0.5") for _ in range(documented.CONNECTIONS_PER_ADDRESS)]
    assert not any(transport.disconnecting for _, transport in held)
    extra = server.connect("127.0.0.5")
    assert aborted(extra[1]), "one connection too many was let in"
    server.hang_up(*extra)
    other = server.connect("127.0.0.6")
    other[0].dataReceived(b"GET /load/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert other[1].value().startswith(b"HTTP/1.1 200 ")
    # One closed: room for one more from that address.
    server.hang_up(*held.pop())
    again = server.connect("127.0.0.5")
    assert not again[1].disconnecting
    assert server.site.connections["127.0.0.5"] == documented.CONNECTIONS_PER_ADDRESS


def test_connections_in_total_are_capped(tmp_path):
    """
    Real counterpart: security/test_connections.py::test_a_slow_connection_flood_from_many_addresses_passes.
    """
    server = memory_server(tmp_path, "relay")
    server.site.limits.connections_in_total = 40
    slow = [server.connect(f"127.0.2.{n + 1}") for n in range(50)]
    assert server.site.open_connections <= 40
    assert sum(aborted(transport) for _, transport in slow) >= 10
    server.reactor.advance(server.site.limits.header_seconds)
    for channel, transport in slow:
        assert aborted(transport)
        server.hang_up(channel, transport)
    assert server.site.open_connections == 0
    code, body, _ = server.answer(server.upload(relay_name(), jpeg_bytes(), peer="127.0.0.9"))
    assert (code, body) == (200, RECEIVED)


def test_ipv6_clients_count_by_their_64(tmp_path):
    """
    A device taking a new IPv6 address for each connection is one client.
    Real counterpart: security/test_round3.py::test_a_device_with_many_ipv6_addresses_is_one_client.
    """
    server = memory_server(tmp_path, "relay")
    held = [server.connect(f"2001:db8:1:2::{n + 1:x}") for n in range(documented.CONNECTIONS_PER_ADDRESS)]
    assert not any(transport.disconnecting for _, transport in held)
    assert aborted(server.connect("2001:db8:1:2::ffff")[1]), "a new address of the same /64 got in"
    assert not server.connect("2001:db8:1:3::1")[1].disconnecting  # another /64: another client


def test_a_device_with_many_addresses_cannot_take_every_connection(tmp_path):
    """
    The last quarter of the total is kept for clients holding few.  Real
    counterpart: security/test_round3.py::test_a_device_with_many_addresses_cannot_take_every_connection.
    """
    server = memory_server(tmp_path)
    server.site.limits.connections_in_total = 100
    device = [server.connect(f"10.0.0.{n // 10 + 1}") for n in range(100)]  # 10 addresses, 10 each
    # Each address's first few may use the kept slots; the rest stay free.
    assert len([c for c in device if not c[1].disconnecting]) < 100
    for n in range(5):  # phones, holding few, still get in
        channel, transport = server.connect(f"10.0.1.{n + 1}")
        channel.dataReceived(b"GET /load/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert transport.value().startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("request_head, answer", [
    # A request line past 8 KiB: Twisted's line reader closes without a word.
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b""),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % n for n in range(70)) + b"\r\n", b"HTTP/1.1 400 "),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (n, b"y" * 4000) for n in range(5)) + b"\r\n",
     b"HTTP/1.1 400 "),
], ids=["long request line", "70 headers", "20 KB of headers"])
def test_oversized_request_heads_are_refused(tmp_path, request_head, answer):
    """
    Real counterpart: security/test_hostile_inputs.py::test_hostile_corpus_against_real_servers
    (its raw protocol attacks).
    """
    server = memory_server(tmp_path, "relay")
    channel, transport = server.connect()
    channel.dataReceived(request_head)
    assert transport.disconnecting
    assert transport.value()[:len(answer) or None] == answer, transport.value()[:100]


# -- The request budget -------------------------------------------------------


def pipelined(request: bytes, count: int) -> bytes:
    return request * count


@pytest.mark.parametrize("role", ["pc", "relay"])
def test_a_flooding_address_is_paused_while_another_uploads(tmp_path, role):
    """
    Real counterpart: security/test_request_budget.py::test_a_flooding_address_is_paused_while_another_uploads.
    """
    from medimage_tx.web.request_budget import PER_ADDRESS_BURST, PER_ADDRESS_RATE

    server = memory_server(tmp_path, role)
    cheap = b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % (b"/check=x.jpg" if role == "relay" else b"/load/")
    flooder = server.connect("127.0.8.1")
    flooder[0].dataReceived(pipelined(cheap, int(PER_ADDRESS_BURST + PER_ADDRESS_RATE) + 1))

    def answered() -> int:
        return flooder[1].value().count(b"HTTP/1.1 200 ")

    assert answered() == PER_ADDRESS_BURST
    assert flooder[1].producerState == "paused", "the flooder's connection is still read"
    name = relay_name() if role == "relay" else "#P1-arm.jpg"
    code, body, _ = server.answer(server.upload(name, jpeg_bytes(), peer="127.0.8.2"))
    assert (code, body) == (200, RECEIVED)
    assert answered() == PER_ADDRESS_BURST
    server.reactor.advance(1.0)  # a second of budget: its rate, and no more
    assert answered() == PER_ADDRESS_BURST + PER_ADDRESS_RATE
    assert flooder[1].producerState == "paused"


# -- Bodies: sizes, parts, chunked -------------------------------------------

PART = b'--b\r\nContent-Disposition: form-data; name="f"\r\n\r\nv\r\n'
FILE_PART = (b'--b\r\nContent-Disposition: form-data; name="file1"; filename="#P-x.jpg"\r\n'
             b"Content-Type: image/jpeg\r\n\r\n\xff\xd8\xff\xe0")
ATTACKS = {
    # name: (start of the body, what repeats, the reason in the answer, bytes the server may take)
    "many parts": (PART, PART, b"Too many parts", 64 * 1024),
    "endless field name": (b'--b\r\nContent-Disposition: form-data; name="', b"A" * 4096,
                           b"headers in the upload are too long", 64 * 1024),
    "endless header lines": (b'--b\r\nContent-Disposition: form-data; name="f"\r\n', b"X-A: b\r\n",
                             b"headers in the upload are too long", 64 * 1024),
    "endless file without a length": (FILE_PART, b"\x00" * 4096, b"Upload too large", 1024 * 1024 + 64 * 1024),
}


@pytest.mark.parametrize("role", ["pc", "relay"])
@pytest.mark.parametrize("shape", list(ATTACKS))
def test_endless_chunked_bodies_are_refused_at_their_bound(tmp_path, role, shape):
    """
    Real counterpart: security/test_body_limits.py::test_endless_chunked_bodies_are_refused_at_their_bound.
    """
    server = memory_server(tmp_path, role, maxUploadSize=1024 * 1024)
    start, repeat, reason, bound = ATTACKS[shape]
    channel, transport = server.connect()
    channel.dataReceived(b"POST /api/photo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                         b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
    sent = 0
    piece = start
    while not transport.disconnecting and sent < 8 * bound:
        channel.dataReceived(b"%x\r\n%s\r\n" % (len(piece), piece))
        sent += len(piece)
        piece = repeat * max(1, 16 * 1024 // len(repeat))
    assert transport.disconnecting, "the server read on and on"
    assert sent <= bound + 16 * 1024 + len(start)
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 400 ") and reason in answer, answer[:300]
    assert b"connection: close" in answer.lower() and answer.count(b"HTTP/1.1 ") == 1
    server.hang_up(channel, transport)
    assert all_files(server.data / "tmp") == []


def test_an_upload_declared_too_large_is_refused_up_front(tmp_path):
    """
    Real counterpart: security/test_defences.py::test_upload_declared_too_large_is_refused_up_front.
    """
    server = memory_server(tmp_path, maxUploadSize=100_000)
    boundary = "----medimage-declared"
    photo_part, _ = multipart("#P-small.jpg", jpeg_bytes(1_000), boundary=boundary)
    extra = (f'--{boundary}\r\nContent-Disposition: form-data; name="file2"; filename="x.bin"\r\n\r\n'.encode()
             + b"x" * 300_000 + b"\r\n")
    body = photo_part.replace(f"--{boundary}--\r\n".encode(), extra + f"--{boundary}--\r\n".encode())
    code, answer, response = server.answer(
        server.post(body, f"multipart/form-data; boundary={boundary}".encode()))
    assert code == 400
    assert response.phrase.startswith(b"Upload too large: %d bytes declared" % len(body)), response.phrase
    assert all_files(server.photos) == [] and all_files(server.data / "tmp") == []


def test_a_chunked_upload_over_the_limit_is_refused(tmp_path):
    """
    Real counterpart: test_upload_http.py::test_over_size_undeclared_rejected.
    """
    server = memory_server(tmp_path, maxUploadSize=100_000)
    code, _, _ = server.answer(server.upload("#P-big.jpg", jpeg_bytes(200_000), chunked=True))
    assert code == 400
    code, body, _ = server.answer(server.upload("#P-small.jpg", jpeg_bytes(50_000), chunked=True))
    assert (code, body) == (200, RECEIVED)
    assert [p.name for p in all_files(server.photos)] == ["small.jpg"]


# -- 200 means on disk; never 503 ---------------------------------------------


@pytest.mark.parametrize("role", ["pc", "relay"])
def test_200_only_once_the_photo_is_on_disk(tmp_path, role):
    """
    Blocking calls are held until the test runs them: no answer while the
    photo is not yet stored; the 200 comes with the file in place.  Real
    counterparts: security/test_defences.py::test_upload_and_backup_copy_are_fsynced_before_they_are_linked
    (strace), security/test_crash.py (a server killed at random loses no acknowledged photo).
    """
    server = memory_server(tmp_path, role, hold_threads=True)
    photo = jpeg_bytes()
    response = server.upload(relay_name() if role == "relay" else "#NHID1234-arm.jpg", photo)
    seen = []
    response.addCallback(lambda r: seen.append([p.read_bytes() for p in all_files(server.photos)]) or r)
    server.flush()
    assert server.threads.held, "the photo was stored on the reactor thread"
    while server.threads.held:
        assert not seen, "answered before the photo was stored"
        server.threads.run_next()
        server.flush()
    assert seen == [[photo]]
    code, body, _ = server.answer(response)
    assert (code, body) == (200, RECEIVED)


BOUNDARIES = {"standard": b"----medimage1234", "legacy Android": b"+++++",
              "legacy iOS": b"+++++org.apache.cordova.formBoundary"}


@pytest.mark.parametrize("family", list(BOUNDARIES))
def test_a_full_disk_is_never_a_503(tmp_path, family, monkeypatch):
    """
    Real counterpart: security/test_faults.py::test_disk_full_answers_507_and_recovers (a tiny tmpfs).
    """
    server = memory_server(tmp_path)
    body, content_type = multipart("#P-x.jpg", jpeg_bytes(), boundary=BOUNDARIES[family].decode())

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(os, "fsync", disk_full)  # flushing the photo finds the disk full
        code, answer, response = server.answer(server.post(body, content_type))
    assert code != 503 and answer.strip()
    if family == "standard":
        assert code == 507 and response.headers.getRawHeaders(b"retry-after") == [b"30"]
    if family == "legacy iOS":
        assert not 200 <= code < 300
    assert all_files(server.photos) == [] and all_files(server.data / "tmp") == []
    # Room again: stored.
    code, answer, _ = server.answer(server.post(body, content_type))
    assert code == 200, answer
    assert len(all_files(server.photos)) == 1


# -- CORS, Host, GETs ---------------------------------------------------------


def cors(response):
    return response.headers.getRawHeaders(b"access-control-allow-origin")


def test_cors_headers_only_on_the_routes_the_apps_call(tmp_path):
    """
    Real counterpart: test_admin_access.py::test_cors_headers_only_on_the_routes_the_apps_call.
    """
    pc = memory_server(tmp_path)
    for path in ["/discovery", "/pair", "/load/", "/admin/login", "/admin/settings", "/nowhere"]:
        response, _ = pc.get(path, Origin=EVIL)
        assert cors(response) is None, path
        response, _ = pc.get(path, method="OPTIONS", Origin=EVIL)
        assert cors(response) is None, path
    for path in ["/", "/api/photo", "/check=x.jpg", "/read/AbCdEfGhIjKlMnOpQr"]:
        response, _ = pc.get(path, method="OPTIONS", Origin=EVIL)
        assert (response.code, cors(response)) == (200, [b"*"]), path
    for path in ["/check=x.jpg", "/read/AbCdEfGhIjKlMnOpQr"]:
        response, _ = pc.get(path, Origin=EVIL)
        assert cors(response) == [b"*"], path


def test_a_rebound_dns_name_gets_no_admin_page(tmp_path):
    """
    Real counterpart: test_admin_access.py::test_rebound_dns_name_gets_no_admin_page.
    """
    target = tmp_path / "clinic-folder"
    target.mkdir()
    pc = memory_server(tmp_path, backupTo=[target.as_posix()], globalId=PAIRED_ID, serverName="Reception")
    rebound = b"evil.example:8080"
    for path in ["/discovery", "/pair", "/admin/login", "/admin/pair", "/admin/settings"]:
        response, body = pc.get(path, Host=rebound)
        assert response.code == 403 and b"own names" in body, path
    response, body = pc.get("/", Host=rebound)
    assert response.code == 200 and str(target) not in body.decode()
    for host in [b"localhost:8080", b"127.0.0.1:8080", b"reception:8080", b"Reception.local:8080"]:
        response, _ = pc.get("/discovery", Host=host)
        assert response.code == 200, host
    response, body = pc.get("/discovery", Origin=EVIL)
    assert response.code == 403 and b"Advertised" not in body


def test_an_admin_session_ends_at_twelve_hours(tmp_path):
    """
    A browser on another computer, signed in with the password and using
    the logs page every 30 minutes, is sent to sign in again at 12 hours.
    Real counterpart: security/test_round3.py::test_the_admin_pages_end_a_session_at_twelve_hours.
    """
    pc = memory_server(tmp_path, basicAuthent="correct horse battery")
    browser = "192.0.2.5"
    assert pc.get("/admin/logs", peer=browser)[0].code == 403  # not the PC itself
    _, body = pc.get("/addon/get-session?pass=correct%20horse%20battery", peer=browser)
    cookie = b"medimage_session=" + json.loads(body)["sessionId"].encode()
    started = pc.reactor.seconds()
    while pc.reactor.seconds() - started + 1800 < documented.SESSION_MAX_AGE_SECONDS:
        pc.advance(1800)
        assert pc.get("/admin/logs", peer=browser, Cookie=cookie)[0].code == 200
    pc.advance(documented.SESSION_MAX_AGE_SECONDS - (pc.reactor.seconds() - started))
    response, body = pc.get("/admin/logs", peer=browser, Cookie=cookie)
    assert response.code == 403 and b"Sign in first" in body


def test_no_get_changes_anything(tmp_path):
    """
    GETs (and HEADs) of every page, with the fields a form would post, as
    the PC itself: config.json, the photos and the registry stay as they
    were.  Real counterpart: test_web_admin.py::test_no_get_changes_anything_and_posts_need_the_token.
    """
    pc = memory_server(tmp_path, globalId=PAIRED_ID)
    assert pc.answer(pc.upload("#NHID1234-arm.jpg", jpeg_bytes()))[0] == 200

    def snapshot():
        return {p.relative_to(pc.data).as_posix(): p.read_bytes() for p in all_files(pc.data)
                if p.suffix != ".log"}

    before = snapshot()
    fields = ("?serverName=Evil&backupTo=/tmp&readProxy=http://evil.example/read/x&globalId=x&code=abcd"
              "&pass=x&uninstall=all&install=http://evil.example/a.zip&country=FR&unpair=1&confirm=1"
              "&output=&copies=&lanMode=on&type:.jpg=on&type:.pdf=on")  # the settings page's own fields
    paths = ["/", "/pair", "/discovery", "/admin/settings", "/admin/pair", "/admin/logs",
             "/admin/addons", "/admin/login", "/admin/logout", "/addon/get-session", "/med-genid.php",
             "/api/photo", "/read/" + PAIRED_ID, "/check=x.jpg"]
    failed = []
    for path in paths:
        for method in ("GET", "HEAD"):
            response, _ = pc.get(path + fields, method=method)
            if response.code >= 500:
                failed.append((method, path, response.code))
    assert failed == [], failed
    assert snapshot() == before
    assert pc.state.config.serverName == json.loads(before["config.json"]).get("serverName", pc.state.config.serverName)


# -- The relay: /read, /check=, leases, its log ------------------------------


def test_relay_reads_and_checks(tmp_path):
    """
    Real counterparts: security/test_defences.py::test_jsonp_read_never_takes_the_photo,
    ::test_leased_photo_stays_hidden_for_the_documented_five_minutes,
    ::test_long_poll_answers_none_after_wait_seconds.
    """
    relay = memory_server(tmp_path, "relay")
    read = f"/read/{PAIRED_ID}"
    photo = jpeg_bytes()
    assert relay.answer(relay.upload(APP_NAME, photo))[:2] == (200, RECEIVED)
    check = "/check=" + quote(APP_NAME)
    assert relay.get(check)[1] == b"true"
    for _ in range(2):  # JSONP says what waits, and never takes it
        response, body = relay.get(read + "?callback=medImage.got")
        assert body == f'medImage.got("{QUEUED_AS}")'.encode()
        assert response.headers.getRawHeaders(b"file-name") is None
    response, body = relay.get(read, method="HEAD")
    assert response.headers.getRawHeaders(b"file-name") == [QUEUED_AS.encode()] and body == b""
    first, body = relay.get(read, X_MedImage_Ack=ACK)
    assert body == photo and first.headers.getRawHeaders(b"file-name") == [QUEUED_AS.encode()]
    receipt = first.headers.getRawHeaders(b"x-medimage-receipt")[0].decode()
    relay.advance(documented.LEASE_SECONDS - 1)
    assert relay.get(read, X_MedImage_Ack=ACK)[1] == b"none", "given out again before its lease ran out"
    assert relay.get(check)[1] == b"true"  # leased, not yet confirmed
    relay.advance(2)
    again, body = relay.get(read, X_MedImage_Ack=ACK)
    assert body == photo
    receipt = again.headers.getRawHeaders(b"x-medimage-receipt")[0].decode()
    assert relay.get(f"{read}/{receipt}", method="DELETE")[1] == b"deleted"
    assert relay.get(check)[1] == b"false"
    # A long poll with nothing to read is held for its wait, then answered "none".
    poll = relay.client().get(relay.url(read + "?wait=5"), headers={b"X-MedImage-Ack": [b"1"]})
    relay.advance(4.9)
    assert not relay.ready(poll), "answered before its wait was over"
    relay.advance(0.2)
    response = relay.done(poll)
    assert (response.code, relay.done(response.content())) == (200, b"none")
    # A long poll is woken by an upload.
    poll = relay.client().get(relay.url(read + "?wait=30"), headers={b"X-MedImage-Ack": [b"1"]})
    assert not relay.ready(poll)
    second = jpeg_bytes(seed=2)
    assert relay.answer(relay.upload(relay_name(2), second))[0] == 200
    response = relay.done(poll)
    assert relay.done(response.content()) == second


def test_a_plain_read_that_fails_to_send_puts_the_photo_back(tmp_path):
    """
    Real counterpart: security/test_defences.py::test_plain_read_that_fails_to_send_puts_the_photo_back.
    """
    relay = memory_server(tmp_path, "relay", maxUploadSize=4_000_000)
    photo = jpeg_bytes(1_000_000)
    assert relay.answer(relay.upload(APP_NAME, photo))[0] == 200
    channel, transport = relay.connect()
    channel.dataReceived(f"GET /read/{PAIRED_ID} HTTP/1.1\r\nHost: relay\r\n\r\n".encode())
    PULLS.run_one()  # the headers and the first piece of the photo
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    sent = len(transport.value())
    assert sent < len(photo), sent
    relay.hang_up(channel, transport)
    relay.flush()
    response, _ = relay.get(f"/read/{PAIRED_ID}", method="HEAD")
    assert response.headers.getRawHeaders(b"file-name") == [QUEUED_AS.encode()]
    assert relay.get(f"/read/{PAIRED_ID}")[1] == photo
    assert relay.get(f"/read/{PAIRED_ID}")[1] == b"none"


def test_a_pairing_over_its_relay_quota_is_told_to_try_later(tmp_path):
    """
    Real counterpart: security/test_faults.py::test_relay_quota_per_pairing_answers_429.
    """
    relay = memory_server(tmp_path, "relay", relayQuotaBytes=50_000)
    for n in range(2):
        assert relay.answer(relay.upload(relay_name(n), jpeg_bytes(20_000, seed=n + 1)))[0] == 200
    code, body, response = relay.answer(relay.upload(relay_name(2), jpeg_bytes(20_000, seed=3)))
    assert code == 429 and b"holds too much" in body
    assert response.headers.getRawHeaders(b"retry-after") == [b"%d" % documented.QUOTA_RETRY_AFTER_SECONDS]
    other = "AnotherPairingId0001"
    assert relay.answer(relay.upload(f"#{other}-#P-x.jpg", jpeg_bytes(20_000, seed=4)))[0] == 200
    relay.get(f"/read/{PAIRED_ID}")  # the PC collects one: room again
    assert relay.answer(relay.upload(relay_name(2), jpeg_bytes(20_000, seed=3)))[0] == 200
    assert all_files(relay.data / "tmp") == []


def test_the_relay_never_logs_ids_folders_or_names(tmp_path):
    """
    Real counterpart: security/test_defences.py::test_relay_log_never_holds_ids_folders_or_names
    (a real twistd's whole output).
    """
    relay = memory_server(tmp_path, "relay")
    read = f"/read/{PAIRED_ID}"
    with capturedLogs() as events:
        for index in range(3):
            assert relay.answer(relay.upload(relay_name(index), jpeg_bytes(seed=index + 1)))[0] == 200
        relay.get(read, method="HEAD")
        relay.get(read + "?callback=cb")
        relay.get("/check=" + quote(relay_name(0)))
        relay.get(read)
        leased, _ = relay.get(read + "?wait=1", X_MedImage_Ack=ACK)
        receipt = leased.headers.getRawHeaders(b"x-medimage-receipt")[0].decode()
        assert relay.get(f"{read}/{receipt}", method="DELETE")[1] == b"deleted"
        relay.get(f"{read}/unknownreceipt", method="DELETE")
        relay.get("/read/NotAnIdAtAll..")
        relay.answer(relay.upload(f"#{PAIRED_ID}-#NHID1234-bad.exe", b"MZ not a photo"))
    lines = [formatEvent(event) for event in events]
    assert any("Relay: queued a photo" in line for line in lines)
    assert any("delivery confirmed" in line for line in lines)
    secrets = (PAIRED_ID, "NHID1234", "arm0", "arm1", "arm2", "27-Nov", receipt, "/read/", "check=", "bad.exe")
    assert [line for line in lines if any(secret in line for secret in secrets)] == []


def issue_code(relay) -> tuple[str, str]:
    url = relay.url("")
    code, answer, _ = relay.answer(relay.post(f"proxyServer={url}".encode(),
                                              b"application/x-www-form-urlencoded", path="/med-genid.php"))
    words = answer.decode().split()
    assert code == 200 and len(words) >= 2, answer
    return words[0], words[1]


def wrong_code(right: str) -> str:
    return "ZZZZ" if right != "ZZZZ" else "YYYY"


def test_pairing_guesses_are_limited_per_address(tmp_path):
    """
    Real counterpart: security/test_defences.py::test_guess_limit_per_address_is_the_documented_ten.
    """
    relay = memory_server(tmp_path, "relay")
    url = relay.url("")
    right, paired_id = issue_code(relay)
    wrong = wrong_code(right)

    def compare(guess: str, peer: str = "127.0.0.7") -> str:
        return relay.get(f"/med-genid.php?compare={guess}", peer=peer)[1].decode()

    for _ in range(documented.GUESSES_PER_ADDRESS - 1):
        assert compare(wrong) == "nomatch"
    assert compare(right) == f"{url}/write/{paired_id}"
    assert compare(wrong) == "nomatch"
    assert compare(right) == "nomatch"  # ten failures: locked out
    assert compare(right, "127.0.0.8") == f"{url}/write/{paired_id}"


def test_pairing_guesses_in_total_are_limited_per_hour(tmp_path):
    """
    Real counterpart: security/test_defences.py::test_guess_limit_in_total_is_the_documented_hundred_per_hour.
    """
    relay = memory_server(tmp_path, "relay")
    url = relay.url("")
    right, paired_id = issue_code(relay)

    def compare(guess: str, peer: str) -> str:
        return relay.get(f"/med-genid.php?compare={guess}", peer=peer)[1].decode()

    per_address = documented.GUESSES_PER_ADDRESS
    attackers = documented.GUESSES_IN_TOTAL // per_address
    for n in range(attackers):
        for _ in range(per_address - (1 if n == attackers - 1 else 0)):
            assert compare(wrong_code(right), f"10.0.1.{n + 1}") == "nomatch"
    # 99 failures in all: a new address still pairs; the 100th locks everyone out.
    assert compare(right, "10.0.2.1") == f"{url}/write/{paired_id}"
    assert compare(wrong_code(right), f"10.0.1.{attackers}") == "nomatch"
    assert compare(right, "10.0.2.1") == "nomatch"
    # The hour has passed (failures count in one-minute buckets): room again.
    relay.advance(documented.GUESS_WINDOW_SECONDS + 61)
    right, paired_id = issue_code(relay)
    assert compare(right, "10.0.2.1") == f"{url}/write/{paired_id}"


def test_names_are_stored_flat_and_device_names_defused(tmp_path):
    """
    Whatever allowedChars lets through, '/ \\ : NUL' never make folders or
    cut a name, and Windows device names are defused.  Real counterparts:
    security/test_defences.py::test_permissive_allowed_chars_still_store_flat_names,
    ::test_device_names_are_stored_defused_on_the_pc.
    """
    pc = memory_server(tmp_path, allowedChars="\\s\\S")
    for index, never in enumerate(("/", "\\", ":", "\x00")):
        photo = jpeg_bytes(2_000, seed=index + 1)
        code, body, _ = pc.answer(pc.upload(f"#a{never}b-x{index}{never}y.jpg", photo))
        assert code == 200, (never, body)
        assert (pc.photos / "ab" / f"x{index}y.jpg").read_bytes() == photo
    for index, device in enumerate(("COM1", "lpt9", "Com5")):
        assert pc.answer(pc.upload(f"#{device}-{device}.jpg", jpeg_bytes(seed=index + 10)))[0] == 200
    assert sorted(p.relative_to(pc.photos).as_posix() for p in all_files(pc.photos)) == [
        "_COM1/_COM1.jpg", "_Com5/_Com5.jpg", "_lpt9/_lpt9.jpg"] + [f"ab/x{i}y.jpg" for i in range(4)]
