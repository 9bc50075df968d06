"""
Security round 3 (issue 19): who counts as one client, and who counts as
the PC itself, on real `medimage-tx serve` processes over loopback (many
client addresses from 127.0.0.0/8).  Each attack test failed on the code
before its fix; the pinning tests fail when the defence they name is
broken on purpose.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.web import resource, server

import documented
from addon_helpers import PYTHON, RECORD_ARGS, calls, write_registry, write_script
from browser import in_browser
from conftest import skip_here_fail_in_ci, write_config
from connection_flood import exchange, hold_connections, phone_uploads, request
from processes import spawn
from test_pairing_limits import in_thread
from test_lan_netns import cannot_build_lan, run_in
from test_twistd import TWISTD

COMMAND = TWISTD.parent / "medimage-tx"
PASSWORD = "clinic-password-1"

pytestmark = pytest.mark.skipif(not COMMAND.exists(), reason="run with `make test` (needs medimage-tx)")


def serve(tmp_path: Path, data: Path):
    return spawn([str(COMMAND), "serve", "--no-lan", "--data", str(data), "--port", "0",
                  "--interface", "127.0.0.1"], str(tmp_path))


async def stop(process) -> None:
    if not process.ended.called:
        process.transport.signalProcess(signal.SIGTERM)
    await process.exited()


def proxy_header(client: str, port: int) -> bytes:
    return f"PROXY TCP4 {client} 127.0.0.1 40000 {port}\r\n".encode()


# -- 1. One device with many addresses cannot take every connection ----------

@pytest_twisted.ensureDeferred
async def test_a_device_with_many_addresses_cannot_take_every_connection(tmp_path):
    """
    A LAN device holding 32 IPv4 addresses opens 32 connections from each
    (the per-address cap) to a PC: 1,024 tries at the PC's 1,000.  Before
    the fix it held all 1,000 and every phone upload was reset (6 of 6);
    now part of the slots is kept for addresses holding few connections,
    so the phone's 6 uploads are stored.
    """
    data = tmp_path / "pc"
    write_config(data / "config.json", lanMode=False)
    process = serve(tmp_path, data)
    held: list[socket.socket] = []
    try:
        port = await process.port()
        attacker = [f"127.0.1.{n}" for n in range(1, 33)]
        held, closed = await in_thread(hold_connections, "127.0.0.1", port, attacker,
                                       documented.CONNECTIONS_PER_ADDRESS)
        print(f"the device holds {len(held)} connections; {closed} were closed")
        stored = await in_thread(phone_uploads, "127.0.0.1", port, "127.0.0.200", 6)
        assert stored == 6, f"{stored} of 6 phone uploads stored while the device holds {len(held)}"
        assert len(list((data / "photos").rglob("*.jpg"))) == 6
        assert len(held) < 1000
    finally:
        for s in held:
            s.close()
        await stop(process)


@pytest.fixture
def namespace():
    """
    A network namespace of the test's own (loopback only), removed after.
    """
    reason = cannot_build_lan()
    if reason:
        skip_here_fail_in_ci(reason)
    existing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    name = "mtx" + secrets.token_hex(4)
    while name in existing:
        name = "mtx" + secrets.token_hex(4)
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest_twisted.ensureDeferred
async def test_a_device_with_many_ipv6_addresses_is_one_client(tmp_path, namespace):
    """
    The same device over IPv6, in a namespace of the test's own: 40
    addresses of one /64 (as privacy addresses give it), 32 connections
    from each.  Counted by exact address, as before the fix, it held all
    1,000 slots and the phone (another /64) stored 0 of 6 (by exact address
    with the kept share: 846, and the phone's 6 stored); counted by /64 it
    holds 32.
    """
    server, phone = "fd00:1:2:ff::1", "fd00:1:2:4::1"
    device = [f"fd00:1:2:3::{n:x}" for n in range(1, 41)]
    for address in [server, phone, *device]:
        subprocess.run(["ip", "-n", namespace, "-6", "addr", "add", f"{address}/128", "dev", "lo", "nodad"],
                       check=True, capture_output=True)
    data = tmp_path / "pc"
    write_config(data / "config.json", lanMode=False)
    process = run_in(namespace, str(COMMAND), "serve", "--no-lan", "--data", str(data), "--port", "0",
                     "--interface", server)
    try:
        port = await process.port()
        flood = run_in(namespace, sys.executable, str(Path(__file__).parent.parent / "connection_flood.py"),
                       server, str(port), str(documented.CONNECTIONS_PER_ADDRESS), phone, *device)
        assert await flood.exited(120) == 0, flood.output
        got = json.loads(flood.output.decode().strip().splitlines()[-1])
        print(f"IPv6: {got}")
        assert got["held"] == documented.CONNECTIONS_PER_ADDRESS and got["stored"] == 6, got
        assert len(list((data / "photos").rglob("*.jpg"))) == 6
    finally:
        await stop(process)


def test_ipv6_addresses_count_by_their_64():
    """
    A device that takes a new IPv6 address for each connection (privacy
    addresses: any number in its /64) is one client.
    """
    from medimage_tx.web.connection_limits import ConnectionCaps

    caps = ConnectionCaps(per_address=documented.CONNECTIONS_PER_ADDRESS, total=1000)
    admitted = sum(caps.admit(f"2001:db8:1:2::{n:x}") for n in range(1, 200))
    assert admitted == documented.CONNECTIONS_PER_ADDRESS
    assert caps.admit("2001:db8:1:3::1")  # the next /64 is another client
    caps.release("2001:db8:1:2::5")
    assert caps.admit("2001:db8:1:2::ffff")  # room again in its own /64
    assert caps.open == documented.CONNECTIONS_PER_ADDRESS + 1
    # IPv4 addresses count one by one; an IPv4-mapped address as its IPv4 one.
    assert caps.admit("192.0.2.1") and caps.admit("192.0.2.2")
    for _ in range(documented.CONNECTIONS_PER_ADDRESS - 1):
        assert caps.admit("::ffff:192.0.2.1")
    assert not caps.admit("192.0.2.1")


def test_room_is_kept_for_addresses_not_yet_seen():
    """
    Busy clients fill what they may and are then refused while there is
    still room; clients holding few connections take the rest, up to the
    total.
    """
    from medimage_tx.web.connection_limits import ConnectionCaps

    caps = ConnectionCaps(per_address=32, total=100)
    busy = sum(caps.admit(f"2001:db8:{n:x}::1") for n in range(4) for _ in range(32))
    assert busy < 100
    assert not caps.admit("2001:db8:0::2")  # a busy client, though there is room
    newcomers = sum(caps.admit(f"192.0.2.{n}") for n in range(1, 200))
    assert caps.open == 100 and newcomers == 100 - busy
    assert not caps.admit("192.0.2.250")  # the total is still the total


# -- 2. A proxied or relayed client is never the PC itself ---------------------

def relay_config(data: Path, **more) -> None:
    write_config(data / "config.json", lanMode=False, allowPhotosLeaving=True,
                 allowGettingRemotePhotos=False, basicAuthent=PASSWORD, **more)


@pytest_twisted.ensureDeferred
async def test_a_forged_proxy_header_gets_no_admin_page_and_locks_no_one_out(tmp_path):
    """
    A relay node with C{proxyProtocol}, reachable directly (no firewall).
    Before the fix anyone could send the PROXY header: one naming
    127.0.0.1 got the admin pages, and five naming a clinic's address
    with wrong passwords locked that clinic out of signing in.  Now only
    the balancers in C{proxyProtocolFrom} may send it (others are dropped),
    and a client the balancer names is never the admin, even as 127.0.0.1.
    """
    data = tmp_path / "relay"
    balancer, attacker, clinic = "127.0.0.5", "127.0.0.9", "198.51.100.7"
    relay_config(data, proxyProtocol=True, proxyProtocolFrom=[balancer])
    process = serve(tmp_path, data)
    try:
        port = await process.port()
        logs = proxy_header("127.0.0.1", port) + request(port, "/admin/logs")
        assert await in_thread(exchange, port, logs, attacker) is None  # dropped, not the admin
        for _ in range(documented.SIGNIN_FAILURES_PER_ADDRESS):
            wrong = proxy_header(clinic, port) + request(port, "/addon/get-session?pass=wrong-guess")
            assert await in_thread(exchange, port, wrong, attacker) is None
        # Through the balancer: the clinic signs in; "127.0.0.1" is not the admin.
        right = proxy_header(clinic, port) + request(port, f"/addon/get-session?pass={PASSWORD}")
        [(status, _, body)] = await in_thread(exchange, port, right, balancer)
        assert (status, json.loads(body)["success"]) == (200, True)
        [(status, _, body)] = await in_thread(exchange, port, logs, balancer)
        assert status == 403 and b"Sign in first" in body
        # Phones through the balancer are served as before.
        [(status, _, _)] = await in_thread(exchange, port, proxy_header("203.0.113.4", port)
                                           + request(port, "/"), balancer)
        assert status == 200
        await process.wait_for(rb"not a balancer listed in proxyProtocolFrom")
    finally:
        await stop(process)


@pytest_twisted.ensureDeferred
async def test_proxy_protocol_is_taken_from_loopback_only_by_default(tmp_path):
    """
    Without C{proxyProtocolFrom}, only a balancer on the relay's own
    machine may send the header; what it names is still not the admin.
    """
    data = tmp_path / "relay"
    relay_config(data, proxyProtocol=True)
    process = serve(tmp_path, data)
    try:
        port = await process.port()
        logs = proxy_header("127.0.0.1", port) + request(port, "/admin/logs")
        [(status, _, _)] = await in_thread(exchange, port, logs, "127.0.0.1")
        assert status == 403
    finally:
        await stop(process)


def test_balancers_are_matched_by_address_or_network():
    from medimage_tx.config import ConfigError, parse_config
    from medimage_tx.web.proxy_protocol import listed

    config = parse_config({"proxyProtocol": True, "proxyProtocolFrom": ["10.0.0.5", "fd00:1::/64"]},
                          Path("config.json"))
    sources = config.proxyProtocolFrom
    assert listed("10.0.0.5", sources) and listed("::ffff:10.0.0.5", sources)
    assert listed("fd00:1::abcd", sources) and listed("fd00:1::1%lo", sources)
    assert not listed("10.0.0.6", sources) and not listed("fd00:2::1", sources)
    assert not listed("127.0.0.1", sources) and not listed("", sources)
    default = parse_config({}, Path("config.json")).proxyProtocolFrom
    assert listed("127.0.0.1", default) and listed("127.9.9.9", default) and listed("::1", default)
    assert not listed("10.0.0.5", default)
    with pytest.raises(ConfigError, match="proxyProtocolFrom.*'haproxy.example'"):
        parse_config({"proxyProtocolFrom": ["haproxy.example"]}, Path("config.json"))


FORWARDING = ["X-Forwarded-For: 203.0.113.9", "Forwarded: for=203.0.113.9", "X-Real-IP: 203.0.113.9",
              "X-Forwarded-Host: relay.example", "Via: 1.1 proxy"]


@pytest.mark.parametrize("role", ["pc", "relay"])
@pytest_twisted.ensureDeferred
async def test_a_request_a_local_reverse_proxy_relayed_is_not_the_admin(tmp_path, role):
    """
    A reverse proxy on the same machine without C{proxyProtocol} connects
    from loopback for every visitor.  Before the fix each visitor was the
    admin; now a request carrying the headers a proxy adds is not.
    """
    data = tmp_path / role
    if role == "relay":
        relay_config(data)
    else:
        write_config(data / "config.json", lanMode=False, basicAuthent=PASSWORD)
    process = serve(tmp_path, data)
    try:
        port = await process.port()
        for header in FORWARDING:
            [(status, _, body)] = await in_thread(exchange, port, request(port, "/admin/logs", header))
            assert status == 403 and b"Sign in first" in body, header
        # The PC itself, asking directly, is still the admin.
        [(status, _, _)] = await in_thread(exchange, port, request(port, "/admin/logs"))
        assert status == 200
    finally:
        await stop(process)


# -- 3. Wrong passwords from many addresses leave a clean address its sign-in --

@pytest_twisted.ensureDeferred
async def test_guessers_on_eleven_addresses_do_not_lock_out_the_right_password(tmp_path):
    """
    5 wrong passwords from each of 11 LAN addresses (55, past the 50 in
    total a bucket allows).  Before the fix the admin's right password,
    from an address that had guessed nothing, was refused 429 for the
    rest of the 15 minutes; now it signs in.  The guessers stay refused,
    and fewer wrong passwords were tried than before (the total still holds).
    """
    data = tmp_path / "pc"
    write_config(data / "config.json", lanMode=False, basicAuthent=PASSWORD)
    process = serve(tmp_path, data)
    try:
        port = await process.port()
        tried = 0
        for n in range(11):
            for _ in range(documented.SIGNIN_FAILURES_PER_ADDRESS):
                [(status, _, _)] = await in_thread(
                    exchange, port, request(port, "/addon/get-session?pass=wrong-guess"), f"127.0.2.{n + 1}")
                assert status in (200, 429)
                tried += status == 200
        print(f"wrong passwords checked: {tried} of 55")
        # The first addresses use up what is not kept (25: five of them),
        # then each other address has its one first try.
        shared = documented.SIGNIN_FAILURES_IN_TOTAL - documented.SIGNIN_FAILURES_KEPT_FOR_FIRST_TRIES
        assert tried == shared + 11 - shared // documented.SIGNIN_FAILURES_PER_ADDRESS
        right = request(port, f"/addon/get-session?pass={PASSWORD}")
        [(status, _, body)] = await in_thread(exchange, port, right, "127.0.2.100")
        assert (status, json.loads(body)["success"]) == (200, True)
        [(status, _, _)] = await in_thread(exchange, port, right, "127.0.2.1")
        assert status == 429  # a guesser's address stays refused, the right password too
    finally:
        await stop(process)


def test_first_tries_cannot_raise_the_total():
    """
    The room kept for addresses that have not guessed does not add to the
    total: at most SIGNIN_FAILURES_IN_TOTAL wrong passwords per bucket,
    however many addresses guess.
    """
    from medimage_tx.admin.sessions import SessionStore, TooManyAttempts, WrongPassword

    clock = Clock()
    store = SessionStore(lambda: PASSWORD, clock.seconds)
    checked = 0
    for n in range(400):
        try:
            store.login("guess", f"10.0.{n // 200}.{n % 200}")
        except WrongPassword:
            checked += 1
        except TooManyAttempts:
            pass
    assert checked == documented.SIGNIN_FAILURES_IN_TOTAL
    with pytest.raises(TooManyAttempts):
        store.login(PASSWORD, "192.0.2.200")


# -- 4. Defences that no test pinned -------------------------------------------

def pc_with_addon(data: Path, **settings) -> None:
    write_config(data / "config.json", lanMode=False, **settings)
    write_script(data, "record.py", RECORD_ARGS + "print('returnParams:?MESSAGE=Saved')\n")
    pages = data / "public" / "pages"
    pages.mkdir(parents=True)
    (pages / "done.html").write_text("MESSAGE")
    write_registry(data, urlRequest=[{
        "addon": "test", "scriptURLName": "change-folder", "active": True, "priority": "medium",
        "runProcess": f"{PYTHON} parentdir/addons/test/record.py param1",
        "waitForRequestFinish": "done.html"}])


def csrf_from_login_page(port: int) -> tuple[str, str]:
    """
    (the medimage_csrf cookie, the form's token), as the PC's browser gets them.
    """
    [(status, headers, body)] = exchange(port, request(port, "/admin/login"))
    cookie = re.search(r"medimage_csrf=([^;]+)", headers["set-cookie"]).group(1)
    token = re.search(rb"name='csrf' value='([^']+)'", body).group(1).decode()
    return cookie, token


@pytest_twisted.ensureDeferred
async def test_a_post_that_is_not_a_urlencoded_form_still_needs_the_token(tmp_path):
    """
    POSTs from the PC's own browser without a CSRF token, with bodies that
    are not C{application/x-www-form-urlencoded}: C{text/plain} (a form with
    C{enctype=text/plain} makes one), JSON, and no type.  Same-origin, the
    admin's own pages (settings, add-on install) refuse each, and nothing
    runs or changes; an add-on's own page may post without our token
    (issue 20: the original's pages cannot send it), but only same-origin:
    with no Origin or Referer, or another site's, it is refused whatever
    the body.  The same fields as a form with the token go through.
    """
    data = tmp_path / "pc"
    pc_with_addon(data)
    config = (data / "config.json").read_text()
    process = serve(tmp_path, data)
    try:
        port = await process.port()
        origin = f"Origin: http://127.0.0.1:{port}"
        cookie, token = await in_thread(csrf_from_login_page, port)
        routes = [("/admin/settings", b"backupTo=/tmp/attacker&allowedTypes=.jpg", [origin]),
                  ("/addon/install-addon", b"uninstall=test", [origin]),
                  ("/addon/change-folder", b"newFolder=/tmp/attacker", []),
                  ("/addon/change-folder", b"newFolder=/tmp/attacker", ["Origin: http://evil.example"])]
        answered = {}
        for path, body, sent_from in routes:
            for kind in ("text/plain", "application/json", None):
                headers = [*sent_from, f"Cookie: medimage_csrf={cookie}"]
                if kind:
                    headers.append(f"Content-Type: {kind}")
                [(status, _, _)] = await in_thread(
                    exchange, port, request(port, path, *headers, method="POST", body=body))
                answered[path, tuple(sent_from), kind] = status
        assert set(answered.values()) == {403}, answered
        assert calls(data) == []
        assert (data / "config.json").read_text() == config
        assert (data / "addons" / "test" / "record.py").exists()
        # The control: the add-on's form with the token runs it.
        form = f"newFolder=/tmp/ok&csrf={token}".encode()
        [(status, _, answer)] = await in_thread(exchange, port, request(
            port, "/addon/change-folder", origin, f"Cookie: medimage_csrf={cookie}",
            "Content-Type: application/x-www-form-urlencoded", method="POST", body=form))
        assert (status, answer) == (200, b"Saved")
        assert len(calls(data)) == 1
    finally:
        await stop(process)


@pytest_twisted.ensureDeferred
async def test_a_page_on_another_port_of_the_pc_is_another_origin(tmp_path):
    """
    C{Origin} and C{Referer} must name this server's port too: a page
    served on another port of the same machine (another program's web
    page) is another origin.  Raw requests from the PC itself: a GET with
    that C{Referer}, and a form POST with a valid token and that
    C{Origin}, are refused and run nothing; the same from the server's own
    port run it.
    """
    data = tmp_path / "pc"
    pc_with_addon(data)
    process = serve(tmp_path, data)
    try:
        port = await process.port()
        other = port + 1 if port < 65535 else port - 1
        cookie, token = await in_thread(csrf_from_login_page, port)
        form = f"newFolder=/tmp/attacker&csrf={token}".encode()

        def attempts(origin_port: int):
            return [
                request(port, "/addon/change-folder?newFolder=/tmp/attacker",
                        f"Referer: http://127.0.0.1:{origin_port}/"),
                request(port, "/addon/change-folder", f"Origin: http://127.0.0.1:{origin_port}",
                        f"Cookie: medimage_csrf={cookie}", "Content-Type: application/x-www-form-urlencoded",
                        method="POST", body=form),
                request(port, "/admin/settings", f"Origin: http://127.0.0.1:{origin_port}",
                        f"Cookie: medimage_csrf={cookie}", "Content-Type: application/x-www-form-urlencoded",
                        method="POST", body=f"backupTo=/tmp/attacker&csrf={token}".encode()),
            ]
        config = (data / "config.json").read_text()
        for raw in attempts(other):
            [(status, _, answer)] = await in_thread(exchange, port, raw)
            assert status == 403, (raw, answer)
        assert calls(data) == [] and (data / "config.json").read_text() == config
        for raw in attempts(port)[:2]:
            [(status, _, answer)] = await in_thread(exchange, port, raw)
            assert (status, answer) == (200, b"Saved")
        assert len(calls(data)) == 2
    finally:
        await stop(process)


class AttackerPage(resource.Resource):
    isLeaf = True

    def __init__(self, target: str):
        super().__init__()
        self.target = target

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/html")
        return f"<!doctype html><title>Another program's page</title><p>{self.target}</p>".encode()


@pytest_twisted.ensureDeferred
async def test_a_browser_page_on_another_port_runs_no_add_on(tmp_path):
    """
    Real Chromium on the PC opens a page of another program served on
    another port of the PC, under the PC's own name (C{serverName}; not a
    potentially trustworthy origin, so Chromium sends no C{Sec-Fetch-Site}),
    and that page loads C{<img src="http://<the PC>:<its port>/addon/change-folder?...">}.
    The request's C{Referer} is the other port's page: it runs nothing.
    """
    data = tmp_path / "pc"
    pc_with_addon(data, serverName="clinicpc.test")
    process = serve(tmp_path, data)
    try:
        port = await process.port()
        target = f"http://clinicpc.test:{port}/addon/change-folder?newFolder={quote('/tmp/attacker')}"
        listening = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            server.Site(AttackerPage(target)))
        page_url = f"http://clinicpc.test:{listening.getHost().port}/"

        def steps(page):
            page.goto(page_url)
            return page.evaluate("""(src) => new Promise(done => {
                const img = new Image();
                img.onload = () => done("loaded");
                img.onerror = () => done("refused");
                img.src = src;
            })""", target)

        try:
            outcome = await in_browser(steps, "--host-resolver-rules=MAP clinicpc.test 127.0.0.1")
        finally:
            await listening.stopListening()
        assert outcome == "refused"
        assert calls(data) == []
    finally:
        await stop(process)


def test_a_session_ends_after_twelve_hours_however_often_it_is_used():
    """
    The documented 12-hour maximum: a session used every 30 minutes (so
    never idle) is refused from 12 hours after sign-in.
    """
    from medimage_tx.admin.sessions import SessionStore

    clock = Clock()
    store = SessionStore(lambda: PASSWORD, clock.seconds)
    session = store.login(PASSWORD, "192.0.2.5")
    while clock.seconds() + 1800 < documented.SESSION_MAX_AGE_SECONDS:
        clock.advance(1800)
        assert store.valid(session), clock.seconds()
    clock.advance(documented.SESSION_MAX_AGE_SECONDS - clock.seconds())
    assert not store.valid(session)


@pytest_twisted.ensureDeferred
async def test_the_admin_pages_end_a_session_at_twelve_hours(start_server):
    """
    The same through a PC's pages (an in-process server whose sessions
    read a clock the test moves): a browser signed in and using the logs
    page every 30 minutes is sent to sign in again at 12 hours.
    """
    clock = Clock()

    def tune(service):
        service.state.access.sessions.now = clock.seconds

    pc = await start_server("pc", tune=tune, basicAuthent=PASSWORD)
    port = int(pc.url.rsplit(":", 1)[1])
    # Not the PC itself: a LAN address of its own would be; the forwarded
    # header makes this loopback client an ordinary one.
    remote = "X-Forwarded-For: 192.0.2.5"
    [(status, _, body)] = await in_thread(
        exchange, port, request(port, f"/addon/get-session?pass={PASSWORD}", remote))
    session = json.loads(body)["sessionId"]
    cookie = f"Cookie: medimage_session={session}"
    while clock.seconds() + 1800 < documented.SESSION_MAX_AGE_SECONDS:
        clock.advance(1800)
        [(status, _, _)] = await in_thread(exchange, port, request(port, "/admin/logs", remote, cookie))
        assert status == 200, clock.seconds()
    clock.advance(documented.SESSION_MAX_AGE_SECONDS - clock.seconds())
    [(status, _, body)] = await in_thread(exchange, port, request(port, "/admin/logs", remote, cookie))
    assert status == 403 and b"Sign in first" in body
