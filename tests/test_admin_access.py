"""
The access layer of the PC's own pages (medimage_tx/admin): own names for
C{Host}, password sessions, and what a browser page of another origin (or a
rebound DNS name) gets from a real server on loopback.
"""

from __future__ import annotations

import json
import re

import pytest
import pytest_twisted
from twisted.internet.task import Clock

import documented

from medimage_tx.admin.hosts import OwnNames, split_host
from medimage_tx.admin.sessions import PasswordNotSet, SessionStore, TooManyAttempts, WrongPassword
from medimage_tx.identity import fingerprint

PAIRED_ID = "uPSE4UWHmJ8XqFUqvf"
EVIL = b"http://evil.example"


@pytest.mark.parametrize("header, name", [
    ("localhost:5566", "localhost"), ("LOCALHOST.:5566", "localhost"), ("[::1]:5566", "::1"),
    ("192.0.2.7", "192.0.2.7"), ("pc-7:80", "pc-7"),
    ("", None), ("evil.example:x", None), ("::1", None), ("a b", None), ("user@pc", None),
    ("[::1", None), ("pc:123456", None),
])
def test_host_header_parsing(header, name):
    assert split_host(header) == name


def test_own_names():
    clock = Clock()
    addresses = ["192.0.2.7", "fe80::1%eth0", "2001:db8::7"]
    names = OwnNames(clock.seconds, lambda: "Clinic-PC", "192.0.2.99",
                     addresses=lambda: list(addresses), names=lambda: ["pc-7", "pc-7.example.org"])
    for host in ["localhost:5566", "127.0.0.1:5566", "127.9.9.9", "[::1]:5566", "192.0.2.7:5566",
                 "[2001:DB8:0::7]:5566", "[fe80::1]:5566", "pc-7:5566", "PC-7.example.org",
                 "clinic-pc:5566", "clinic-pc.local:5566", "192.0.2.99"]:
        assert names.allows(host), host
    for host in [None, "", "evil.example:5566", "192.0.2.8:5566", "127.0.0.1.evil.example",
                 "localhost.evil.example", "pc-7.evil.example", "clinic-pc.example"]:
        assert not names.allows(host), host
    assert names.is_own_address("192.0.2.7") and names.is_own_address("2001:db8::7")
    assert not names.is_own_address("192.0.2.8") and not names.is_own_address("pc-7")
    # A new address is known after the refresh interval, a gone one forgotten.
    addresses[0] = "192.0.2.8"
    assert names.allows("192.0.2.7")
    clock.advance(5)
    assert names.allows("192.0.2.8") and not names.allows("192.0.2.7")


def sessions(clock, password="correct horse battery"):
    current = {"password": password}
    return SessionStore(lambda: current["password"], clock.seconds), current


def test_sessions_open_expire_and_close():
    clock = Clock()
    store, current = sessions(clock)
    session = store.login("correct horse battery", "192.0.2.5")
    assert store.valid(session) and not store.valid("x" + session) and not store.valid(None)
    clock.advance(documented.SESSION_IDLE_SECONDS - 1)
    assert store.valid(session)  # use keeps it alive
    clock.advance(documented.SESSION_IDLE_SECONDS)
    assert not store.valid(session)  # idle too long
    session = store.login("correct horse battery", "192.0.2.5")
    assert store.logout(session) and not store.valid(session)
    session = store.login("correct horse battery", "192.0.2.5")
    current["password"] = "another password here"
    assert not store.valid(session)  # a changed password ends every session


@pytest.mark.parametrize("password", ["", "changeme", "short"])
def test_sessions_are_off_without_a_real_password(password):
    store, _ = sessions(Clock(), password)
    with pytest.raises(PasswordNotSet):
        store.login(password, "192.0.2.5")


def test_wrong_passwords_are_throttled_per_address_and_in_total():
    clock = Clock()
    store, _ = sessions(clock)
    for _ in range(documented.SIGNIN_FAILURES_PER_ADDRESS):
        with pytest.raises(WrongPassword):
            store.login("guess", "192.0.2.66")
    with pytest.raises(TooManyAttempts):
        store.login("correct horse battery", "192.0.2.66")  # even the right one
    assert store.valid(store.login("correct horse battery", "192.0.2.5"))
    for n in range(documented.SIGNIN_FAILURES_IN_TOTAL - documented.SIGNIN_FAILURES_PER_ADDRESS):
        with pytest.raises(WrongPassword):
            store.login("guess", f"10.0.{n // 250}.{n % 250}")
    with pytest.raises(TooManyAttempts) as refused:
        store.login("correct horse battery", "192.0.2.5")
    assert 0 < refused.value.retry_after <= documented.SIGNIN_BUCKET_SECONDS
    clock.advance(refused.value.retry_after)
    assert store.valid(store.login("correct horse battery", "192.0.2.66"))  # a new bucket


async def get(http_client, url, **headers):
    response = await http_client.get(url, headers={k.encode(): [v] for k, v in headers.items()})
    return response, (await response.content())


def cors(response):
    return response.headers.getRawHeaders(b"access-control-allow-origin")


@pytest_twisted.ensureDeferred
async def test_cross_origin_reader_of_the_status_page_learns_nothing(start_server, http_client, tmp_path):
    target = tmp_path / "clinic-folder"
    target.mkdir()
    pc = await start_server("pc", backupTo=[target.as_posix()], globalId=PAIRED_ID,
                            readProxy=f"http://127.0.0.1:9/read/{PAIRED_ID}")
    secrets = [str(target), str(pc.photos), PAIRED_ID, fingerprint(PAIRED_ID), "Photos received",
               "Bytes", "Paired"]
    for headers in ({"Origin": EVIL}, {"Origin": b"null"}, {"Sec-Fetch-Site": b"cross-site"},
                    {"Referer": EVIL + b"/page.html"},
                    {"Origin": EVIL, "Host": pc.url[7:].encode()}):
        response, body = await get(http_client, pc.url + "/", **headers)
        assert response.code == 200 and body.strip(), headers
        assert cors(response) == [b"*"]  # the browser app's LAN scan reads it
        text = body.decode()
        assert not [s for s in secrets if s in text], (headers, text)
        assert len(body) < 400
    # The PC itself, from its own page, sees everything, without CORS.
    response, body = await get(http_client, pc.url + "/")
    assert str(target) in body.decode() and "Photos received" in body.decode()
    assert cors(response) is None
    assert response.headers.getRawHeaders(b"x-frame-options") == [b"DENY"]
    response, body = await get(http_client, pc.url + "/", Origin=pc.url.encode())
    assert str(target) in body.decode() and cors(response) is None


@pytest_twisted.ensureDeferred
async def test_cors_headers_only_on_the_routes_the_apps_call(start_server, http_client):
    pc = await start_server("pc")
    for path in ["/discovery", "/pair", "/load/", "/admin/login", "/nowhere"]:
        response, _ = await get(http_client, pc.url + path, Origin=EVIL)
        assert cors(response) is None, path
        options = await http_client.request("OPTIONS", pc.url + path, headers={b"Origin": [EVIL]})
        await options.content()
        assert cors(options) is None, path
    for path in ["/", "/api/photo", "/check=x.jpg", "/read/AbCdEfGhIjKlMnOpQr"]:
        options = await http_client.request("OPTIONS", pc.url + path, headers={b"Origin": [EVIL]})
        await options.content()
        assert (options.code, cors(options)) == (200, [b"*"]), path
    for path in ["/check=x.jpg", "/read/AbCdEfGhIjKlMnOpQr"]:
        response, _ = await get(http_client, pc.url + path, Origin=EVIL)
        assert cors(response) == [b"*"], path


@pytest_twisted.ensureDeferred
async def test_rebound_dns_name_gets_no_admin_page(start_server, http_client, tmp_path):
    """
    DNS rebinding: a page at http://evil.example:PORT whose name now points
    at the PC is "same-origin" in the browser; the PC refuses that name.
    """
    target = tmp_path / "clinic-folder"
    target.mkdir()
    pc = await start_server("pc", backupTo=[target.as_posix()], globalId=PAIRED_ID,
                            serverName="Reception")
    port = pc.url.rsplit(":", 1)[1]
    rebound = f"evil.example:{port}".encode()
    for path in ["/discovery", "/pair", "/admin/login"]:
        response, body = await get(http_client, pc.url + path, Host=rebound)
        assert response.code == 403, path
        assert b"own names" in body
    response, body = await get(http_client, pc.url + "/", Host=rebound)
    assert response.code == 200 and str(target) not in body.decode()
    # The server's own names do work.
    for host in [f"localhost:{port}", f"127.0.0.1:{port}", f"reception:{port}", f"Reception.local:{port}"]:
        response, body = await get(http_client, pc.url + "/discovery", Host=host.encode())
        assert response.code == 200, host
    # A cross-origin page is refused by the admin pages even through a good name.
    response, body = await get(http_client, pc.url + "/discovery", Origin=EVIL)
    assert response.code == 403 and b"Advertised" not in body


@pytest_twisted.ensureDeferred
async def test_password_sessions_over_http(start_server, http_client):
    pc = await start_server("pc", basicAuthent="correct horse battery")
    url = pc.url + "/addon/get-session"
    response, body = await get(http_client, url + "?pass=wrong")
    assert json.loads(body) == {"success": False, "error": "Sorry, that is the wrong password."}
    response, body = await get(http_client, url + "?pass=correct%20horse%20battery")
    answer = json.loads(body)
    assert answer["success"] is True and len(answer["sessionId"]) >= 40
    assert cors(response) is None
    cookie = response.headers.getRawHeaders(b"set-cookie")[0].decode()
    assert "medimage_session=" + answer["sessionId"] in cookie
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    response, body = await get(http_client, f"{url}?sessionId={answer['sessionId']}")
    assert json.loads(body) == {"success": True}
    response, body = await get(http_client, f"{url}?sessionId={answer['sessionId']}&logout=true")
    assert json.loads(body) == {"success": True}
    response, body = await get(http_client, f"{url}?sessionId={answer['sessionId']}")
    assert json.loads(body) == {"success": False}
    # Another site's page cannot use it to guess.
    response, body = await get(http_client, url + "?pass=correct%20horse%20battery", Origin=EVIL)
    assert response.code == 403 and "sessionId" not in json.loads(body)
    # Guessing is throttled: past the limit even the right password is refused.
    for _ in range(documented.SIGNIN_FAILURES_PER_ADDRESS):
        await get(http_client, url + "?pass=guess")
    response, body = await get(http_client, url + "?pass=correct%20horse%20battery")
    assert response.code == 429 and json.loads(body)["success"] is False


@pytest_twisted.ensureDeferred
async def test_shipped_password_never_opens_a_session(start_server, http_client):
    pc = await start_server("pc")  # basicAuthent: "changeme", the original's default
    response, body = await get(http_client, pc.url + "/addon/get-session?pass=changeme")
    answer = json.loads(body)
    assert answer["success"] is False and "basicAuthent" in answer["error"]
    assert response.headers.getRawHeaders(b"set-cookie") is None


@pytest_twisted.ensureDeferred
async def test_login_form_needs_the_csrf_token_and_same_origin(start_server, http_client):
    pc = await start_server("pc", basicAuthent="correct horse battery")
    response, body = await get(http_client, pc.url + "/admin/login")
    token = re.search(rb"name='csrf' value='([0-9a-f]+)'", body).group(1)
    csrf_cookie = response.headers.getRawHeaders(b"set-cookie")[0].split(b";")[0]

    async def post(form: bytes, **headers):
        all_headers = {b"Content-Type": [b"application/x-www-form-urlencoded"], b"Cookie": [csrf_cookie]}
        all_headers.update({k.encode(): [v] for k, v in headers.items()})
        answer = await http_client.post(pc.url + "/admin/login", data=form, headers=all_headers,
                                       allow_redirects=False)
        return answer, await answer.content()

    good = b"password=correct+horse+battery&csrf=" + token
    for form, headers in [(good, {"Origin": EVIL}), (good, {}),
                          (b"password=correct+horse+battery&csrf=0", {"Origin": pc.url.encode()}),
                          (good, {"Origin": pc.url.encode(), "Cookie": b"medimage_csrf=other"})]:
        answer, _ = await post(form, **headers)
        assert answer.code == 403 and answer.headers.getRawHeaders(b"set-cookie") is None, (form, headers)
    answer, _ = await post(good, Origin=pc.url.encode())
    assert answer.code == 303
    assert b"medimage_session=" in answer.headers.getRawHeaders(b"set-cookie")[0]
    answer, _ = await post(good, Referer=(pc.url + "/admin/login").encode())
    assert answer.code == 303
