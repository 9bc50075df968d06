"""
Issue 9, findings 1, 2 and 9, performed as the red team did: against a
real `twistd medimage` PC (and a real relay and pairing stand-ins on
loopback), with the browser's own `Origin`, `Host`, `Sec-Fetch-Site` and
cookies.  Before the fix each attack got a pairing code, the id, the
clinic's folder paths, or re-pointed the PC; now each is refused and the
PC's config.json is unchanged.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from urllib.parse import urlencode

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from central_pairing import pair_on_page, shown_code, start_central
from conftest import write_config
from medimage_tx.identity import fingerprint
from processes import spawn
from test_twistd import TWISTD, spawn_twistd

PAIRED_ID = "ClinicPairedId0001"
EVIL = b"http://evil.example"
FORM = {b"Content-Type": [b"application/x-www-form-urlencoded"]}

pytestmark = pytest.mark.skipif(not TWISTD.exists(), reason="run with `make test` (needs twistd)")


async def request(http_client, method: str, url: str, body: bytes = b"", **headers: bytes):
    all_headers = {k.replace("_", "-").encode(): [v] for k, v in headers.items()}
    if body:
        all_headers.update(FORM)
    response = await http_client.request(method, url, data=body or None, headers=all_headers,
                                         allow_redirects=False)
    return response, (await response.content()).decode("utf-8", "replace")


async def clinic_pc(tmp_path: Path, relay_url: str, central_url: str):
    """
    A real twistd PC paired with our relay through the central stand-in.
    """
    target = tmp_path / "clinic-target"
    target.mkdir()
    data = tmp_path / "pc"
    config = write_config(data / "config.json", globalId=PAIRED_ID, readProxy=f"{relay_url}/read/{PAIRED_ID}",
                          customPairing=central_url, backupTo=[target.as_posix()],
                          serverName="Reception", basicAuthent="correct horse battery")
    process = spawn_twistd(tmp_path, "--data", str(data), "--port", "0", "--interface", "127.0.0.1")
    port = await process.port()
    return process, f"http://127.0.0.1:{port}", config, target


def stop(process) -> None:
    if not process.ended.called:
        process.transport.signalProcess(signal.SIGTERM)


def secrets_in(text: str, *paths: Path) -> list[str]:
    found = [s for s in (PAIRED_ID, fingerprint(PAIRED_ID), *map(str, paths)) if s in text]
    return found + re.findall(r"id='code'>[^<]*<", text)


@pytest_twisted.ensureDeferred
async def test_finding_1_no_web_page_gets_a_code_or_the_id(start_server, http_client, tmp_path, central):
    """
    A page open in the clinic's browser (cross-origin, or through a rebound
    DNS name) tries every way the red team found to read a pairing code,
    the id or the folders from the PC.  Nothing is issued, nothing leaks.
    """
    relay = await start_server("relay", clock=Clock(), allowPhotosLeaving=True,
                               allowGettingRemotePhotos=False)
    process, pc, config, target = await clinic_pc(tmp_path, relay.url, central.url)
    before = config.read_text()
    port = pc.rsplit(":", 1)[1]
    rebound = f"evil.example:{port}".encode()
    try:
        # 1. fetch() from another site: the old GET /pair made a code and
        #    sent it with Access-Control-Allow-Origin: *.
        for headers in ({"Origin": EVIL, "Sec_Fetch_Site": b"cross-site"}, {"Origin": b"null"}):
            for path in ["/pair", f"/pair?proxyServer={relay.url}", "/discovery", "/admin/login"]:
                response, body = await request(http_client, "GET", pc + path, **headers)
                assert response.code == 403, (path, headers)
                assert response.headers.getRawHeaders(b"access-control-allow-origin") is None
                assert not secrets_in(body, target), path
            # ...and / answers the LAN scan, revealing nothing.
            response, body = await request(http_client, "GET", pc + "/", **headers)
            assert response.code == 200 and body and not secrets_in(body, target, tmp_path)
        # 2. A cross-site form post (no CORS needed to send it).
        form = urlencode({"proxyServer": relay.url, "customPairing": central.url}).encode()
        for headers in ({"Origin": EVIL}, {"Origin": b"null"}, {"Referer": EVIL + b"/page"}, {}):
            response, body = await request(http_client, "POST", pc + "/pair", form, **headers)
            assert response.code == 403 and not secrets_in(body, target), headers
        # 3. DNS rebinding: evil.example now resolves to the PC, so the
        #    browser calls the page same-origin and sends no Origin on GET.
        for method, path, extra in [("GET", "/pair", {}), ("GET", "/discovery", {}),
                                    ("POST", "/pair", {"Origin": b"http://" + rebound}),
                                    ("GET", "/addon/get-session?pass=correct%20horse%20battery", {})]:
            response, body = await request(http_client, method, pc + path, form if method == "POST" else b"",
                                           Host=rebound, **extra)
            assert response.code == 403, (method, path)
            assert "sessionId" not in body and not secrets_in(body, target)
        response, body = await request(http_client, "GET", pc + "/", Host=rebound)
        assert response.code == 200 and not secrets_in(body, target, tmp_path)
        # 4. The PC's own browser opening /pair gets a form, not a code.
        response, body = await request(http_client, "GET", pc + "/pair")
        assert response.code == 200 and "<form method='post'" in body and not secrets_in(body)
        # No code was ever issued for the PC's id, and nothing changed.
        assert central.requests == [] and central.codes == {}
        assert config.read_text() == before
        # The admin on the PC itself still pairs (same id: phones stay paired).
        response, body = await pair_on_page(http_client, pc, proxyServer=relay.url,
                                            customPairing=central.url)
        assert response.code == 200 and shown_code(body)
        assert central.requests[0].form["guid"] == [PAIRED_ID]
    finally:
        stop(process)
    await process.ended


@pytest_twisted.ensureDeferred
async def test_finding_2_a_link_cannot_repoint_the_pc(start_server, http_client, tmp_path, central):
    """
    The red team's link, GET /pair?proxyServer=<attacker>, posted the PC's id
    to the attacker and stored the attacker's relay.  Now: a GET contacts
    nobody; only the local admin can pair elsewhere, only after confirming,
    and the id never goes to the attacker.
    """
    relay = await start_server("relay", clock=Clock(), allowPhotosLeaving=True,
                               allowGettingRemotePhotos=False)
    attacker, attacker_url, attacker_port = await start_central()
    attacker_relay = attacker_url.rsplit("/", 1)[0]
    process, pc, config, _ = await clinic_pc(tmp_path, relay.url, central.url)
    before = config.read_text()
    try:
        link = f"/pair?proxyServer={attacker_relay}&customPairing={attacker_url}"
        for headers in ({}, {"Origin": EVIL}, {"Sec_Fetch_Site": b"cross-site"}):
            response, body = await request(http_client, "GET", pc + link, **headers)
            assert "id='code'" not in body
        # Even the admin's own form post to another relay stops at a
        # confirmation, having sent nothing.
        response, body = await pair_on_page(http_client, pc, proxyServer=attacker_relay,
                                            customPairing=attacker_url)
        assert response.code == 200 and "new id" in body and "name='confirm'" in body
        # The same relay through another service: also a new id, not a leak.
        response, body = await pair_on_page(http_client, pc, proxyServer=relay.url,
                                            customPairing=attacker_url)
        assert "name='confirm'" in body
        assert attacker.requests == [] and config.read_text() == before

        # A hostile service for the PC's own relay answers with another id,
        # or points it at another relay: refused, config unchanged.
        for answer in [f"a1B2 AttackerChosenId01 {relay.url} NZ", f"a1B2 {PAIRED_ID} {attacker_relay} NZ"]:
            central.answer = lambda form, answer=answer: (200, answer.encode())
            response, body = await pair_on_page(http_client, pc, proxyServer=relay.url,
                                                customPairing=central.url)
            assert response.code == 502 and "Nothing was changed" in body
            assert "a1B2" not in body and "AttackerChosenId01" not in body
            assert config.read_text() == before

        # Confirmed by the admin: paired with the new service, which never saw the old id.
        response, body = await pair_on_page(http_client, pc, proxyServer=attacker_relay,
                                            customPairing=attacker_url, confirm="new-id")
        assert response.code == 200 and shown_code(body)
        [sent] = attacker.requests
        assert "guid" not in sent.form and PAIRED_ID not in sent.raw_query
        new_config = json.loads(config.read_text())
        assert new_config["globalId"] != PAIRED_ID
        assert new_config["readProxy"] == f"{attacker_relay}/read/{new_config['globalId']}"
        # A forged confirmation from another site does nothing.
        forged = urlencode({"proxyServer": relay.url, "confirm": "new-id"}).encode()
        response, _ = await request(http_client, "POST", pc + "/pair", forged, Origin=EVIL)
        assert response.code == 403
    finally:
        stop(process)
        await attacker_port.stopListening()
    await process.ended


@pytest_twisted.ensureDeferred
async def test_finding_9_custom_pairing_is_no_probe_of_the_intranet(start_server, http_client, tmp_path, central):
    """
    customPairing used to make the PC POST its id to any URL and echo 80
    characters of the answer: a probe of the clinic's intranet.  Now only the
    admin may choose it, the id does not go there, and nothing it answers is
    shown.
    """
    relay = await start_server("relay", clock=Clock(), allowPhotosLeaving=True,
                               allowGettingRemotePhotos=False)
    intranet, intranet_url, intranet_port = await start_central()
    process, pc, config, _ = await clinic_pc(tmp_path, relay.url, central.url)
    before = config.read_text()
    secret = "INTRANET-SECRET-7f3a wiki page of the clinic"
    try:
        # Not the admin: refused before anything is sent.
        form = urlencode({"proxyServer": relay.url, "customPairing": intranet_url, "confirm": "new-id"}).encode()
        response, _ = await request(http_client, "POST", pc + "/pair", form, Origin=EVIL)
        assert response.code == 403 and intranet.requests == []
        # The admin, confirming: the service's answers are never echoed.
        for status, body in [(200, secret), (500, secret), (302, secret), (200, secret * 500),
                             (200, f"{secret} {PAIRED_ID} {relay.url}")]:
            intranet.answer = lambda form, status=status, body=body: (status, body.encode())
            response, page = await pair_on_page(http_client, pc, proxyServer=relay.url,
                                                customPairing=intranet_url, confirm="new-id")
            assert response.code == 502, status
            assert "INTRANET" not in page and "wiki" not in page and "Nothing was changed" in page
        assert intranet.requests and all("guid" not in r.form for r in intranet.requests)
        assert config.read_text() == before
    finally:
        stop(process)
        await intranet_port.stopListening()
    await process.ended


@pytest_twisted.ensureDeferred
async def test_same_origin_means_the_same_scheme_too(start_server, tmp_path):
    """
    Over HTTPS, a form posted from the plain-HTTP origin of the same host
    and port is another origin (a man in the middle could serve that one);
    the session cookie is Secure.
    """
    from twisted.internet import reactor
    from twisted.internet.ssl import Certificate
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
    from treq.client import HTTPClient

    from test_tls import make_certificate

    key_path, cert_path = make_certificate(tmp_path)
    pc = await start_server("pc", httpsKey=str(key_path), httpsCert=str(cert_path),
                            basicAuthent="correct horse battery")
    url = pc.url.replace("http://", "https://")
    pool = HTTPConnectionPool(reactor, persistent=False)
    trust = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(cert_path.read_bytes()))
    client = HTTPClient(Agent(reactor, contextFactory=trust, pool=pool))
    response, page = await request(client, "GET", url + "/admin/login")
    assert "Secure" in response.headers.getRawHeaders(b"set-cookie")[0].decode()
    token = re.search(r"name='csrf' value='([0-9a-f]+)'", page).group(1)
    form = urlencode({"csrf": token, "password": "correct horse battery"}).encode()
    response, _ = await request(client, "POST", url + "/admin/login", form, Origin=pc.url.encode())
    assert response.code == 403
    response, _ = await request(client, "POST", url + "/admin/login", form, Origin=url.encode())
    assert response.code == 303
    cookie = response.headers.getRawHeaders(b"set-cookie")[0].decode()
    assert "medimage_session=" in cookie and "Secure" in cookie and "HttpOnly" in cookie
