"""
Issue 9, finding 1 from the clinic LAN: a device on the WiFi (its own
network namespace) attacks a real `twistd medimage` PC in another one; an
administrator on a second computer signs in with the `basicAuthent`
password.  Same namespaces as tests/test_lan_netns.py (root and `ip netns`;
never skipped in CI).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest_twisted

from medimage_tx.identity import fingerprint
from test_lan_netns import HOSTS, REPO, TWISTD, lan, run_in, stop  # noqa: F401 (lan: the fixture)

PAIRED_ID = "ClinicPairedId0002"
PASSWORD = "correct horse battery"
SCRIPT = str(REPO / "tests" / "browser_requests.py")


async def browse(lan, host: str, base: str, steps: list[dict]) -> list[dict]:
    process = run_in(lan.ns(host), sys.executable, SCRIPT, base, json.dumps(steps))
    assert await process.ended == 0, process.output
    return json.loads(process.output)


def get(path: str, **headers: str) -> dict:
    return {"method": "GET", "path": path, "headers": headers}


def post(path: str, form: dict, **headers: str) -> dict:
    return {"method": "POST", "path": path, "headers": headers, "form": form}


@pytest_twisted.ensureDeferred
async def test_a_lan_device_gets_nothing_and_a_signed_in_admin_gets_in(lan, tmp_path):
    data = tmp_path / "pc"
    target = data / "clinic-target"
    target.mkdir(parents=True)
    (data / "config.json").write_text(json.dumps({
        "globalId": PAIRED_ID, "serverName": "Reception", "backupTo": [str(target)],
        "basicAuthent": PASSWORD,
    }))
    pc = run_in(lan.ns("pcA"), str(TWISTD), "--nodaemon", "--pidfile=", "medimage", "--data", str(data))
    try:
        await pc.wait_for(rb"listening on port 5566")
        base = f"http://{HOSTS['pcA']}:5566"
        own = {"Origin": base}
        before = (data / "config.json").read_text()
        secrets = [PAIRED_ID, fingerprint(PAIRED_ID), str(target), "lan0", HOSTS["pcA"] + "/"]

        # A device on the WiFi: scan, pages, a CSRF token from the login
        # page used to pair (a token is no permission), password guessing.
        steps = [get("/"), get("/pair"), get("/discovery"), get("/admin/login"),
                 post("/pair", {"csrf": "{csrf}", "proxyServer": "http://198.51.100.20:5566",
                                "confirm": "new-id"}, **own)]
        steps += [get("/addon/get-session?pass=guess%d" % n) for n in range(5)]
        steps += [get("/addon/get-session?pass=correct%20horse%20battery")]
        scan, pair, discovery, login, forged, *guesses = await browse(lan, "phone", base, steps)
        assert scan["status"] == 200 and scan["body"].strip()
        assert scan["headers"].get("access-control-allow-origin") == "*"  # the app's scan reads it
        for answer in (scan, pair, discovery, login, forged):
            assert not [s for s in secrets if s in answer["body"]], answer["body"]
        assert (pair["status"], discovery["status"], forged["status"]) == (403, 403, 403)
        assert login["status"] == 200 and "name='csrf'" in login["body"]
        assert [json.loads(g["body"])["success"] for g in guesses] == [False] * 6
        assert guesses[-1]["status"] == 429  # throttled: even the right password
        assert (data / "config.json").read_text() == before

        # The admin at another computer signs in, sees the PC, reaches the
        # pairing form, and signs out.
        steps = [get("/admin/login"), post("/admin/login", {"csrf": "{csrf}", "password": PASSWORD}, **own),
                 get("/"), get("/discovery"), get("/pair"),
                 post("/pair", {"csrf": "{csrf}", "proxyServer": "http://198.51.100.12:9"}, **own),
                 post("/admin/logout", {"csrf": "{csrf}"}, **own), get("/")]
        _, signed_in, status, discovery, form, confirm, _, after = await browse(lan, "pcB", base, steps)
        assert signed_in["status"] == 303
        assert status["status"] == 200 and str(target) in status["body"]
        assert "access-control-allow-origin" not in status["headers"]
        assert discovery["status"] == 200 and HOSTS["pcA"] in discovery["body"]
        assert form["status"] == 200 and "<form method='post' action='/pair'>" in form["body"]
        assert confirm["status"] == 200 and "new id" in confirm["body"]  # asks before sending anything
        assert after["status"] == 200 and str(target) not in after["body"]
        assert (data / "config.json").read_text() == before

        # A browser on the PC itself that opened its LAN address is the PC.
        [own_status] = await browse(lan, "pcA", base, [get("/")])
        assert str(target) in own_status["body"]
    finally:
        await stop(pc)
