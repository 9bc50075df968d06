"""
The web admin's rules below the browser: what its parts keep (log lines,
recent photos: folder only), that no GET changes anything, that every
change needs the CSRF token, that lockDown refuses even the admin, and the
admin headers (no CORS, no framing, no caching).
"""

from __future__ import annotations

import json
import re
import time

import pytest
import pytest_twisted
from twisted.logger import LogLevel

from conftest import jpeg_bytes, multipart, post_upload, within
from medimage_tx.admin.activity import Activity
from medimage_tx.admin.pages.home import size_text
from medimage_tx.admin.log_ring import LogRing


def event(text: str, level=LogLevel.info, **more) -> dict:
    return {"log_format": text, "log_level": level, "log_time": time.time(), **more}


def test_log_ring_keeps_the_latest_lines_and_filters_by_level():
    ring = LogRing(keep=3)
    ring(event("debug {n}", LogLevel.debug, n=0))
    for n in range(4):
        ring(event("line {n}", n=n))
    ring(event("a problem", LogLevel.warn))
    ring(event("Starting factory <object at 0x1>"))  # Twisted's chatter, as the log leaves it out
    assert [line.text for line in ring.lines()] == ["a problem", "line 3", "line 2"]
    assert [line.text for line in ring.lines("warn")] == ["a problem"]
    assert ring.lines("error") == []


def test_activity_keeps_the_folder_never_the_file_name():
    moments = iter([1000.0, 1001.0, 1002.0])
    activity = Activity(now=lambda: next(moments))
    activity.note("ward5/Smith-John-arm.jpg", "phone")
    activity.note("referral.pdf", "relay")
    assert [(p.folder, p.source) for p in activity.recent] == [("", "relay"), ("ward5", "phone")]
    assert "Smith" not in repr(list(activity.recent))
    assert (activity.total, activity.last_from_relay) == (2, 1001.0)


def test_sizes_in_mb_and_gb():
    assert (size_text(0), size_text(2_500_000), size_text(3_210_000_000)) == ("0.0 MB", "2.5 MB", "3.21 GB")


async def page(http_client, url: str, headers: dict | None = None):
    response = await within(http_client.get(url, headers=headers or {}))
    return response, (await within(response.content())).decode()


async def post(http_client, url: str, fields: dict, origin: str, cookie: bytes = b""):
    headers = {b"Content-Type": [b"application/x-www-form-urlencoded"], b"Origin": [origin.encode()]}
    if cookie:
        headers[b"Cookie"] = [cookie]
    response = await within(http_client.post(url, data="&".join(f"{k}={v}" for k, v in fields.items()).encode(),
                                             headers=headers))
    return response, (await within(response.content())).decode()


def csrf_of(response, body: str) -> tuple[str, bytes]:
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', body).group(1)
    # treq keeps cookies: a browser that has its CSRF cookie gets no new one.
    cookies = response.headers.getRawHeaders(b"set-cookie") or [b""]
    return token, cookies[0].split(b";")[0]


@pytest.mark.reactor
@pytest_twisted.ensureDeferred
async def test_no_get_changes_anything_and_posts_need_the_token(start_server, http_client, central, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    pc = await start_server(customPairing=central.url)
    before = (pc.data / "config.json").read_bytes()
    for path in (f"/admin/settings?output={elsewhere}&lanMode=on",
                 "/admin/pair?way=own&proxyServer=http://127.0.0.1:9&confirm=new-id",
                 "/admin/logs?level=error", "/admin/addons?uninstall=x"):
        response, body = await page(http_client, pc.url + path)
        assert response.code == 200, path
        assert response.headers.getRawHeaders(b"access-control-allow-origin") is None
        assert response.headers.getRawHeaders(b"x-frame-options") == [b"DENY"]
        assert response.headers.getRawHeaders(b"cache-control") == [b"no-store"]
    assert (pc.data / "config.json").read_bytes() == before and central.requests == []
    # From the PC's own page, but without the form's token: refused.
    response, body = await post(http_client, pc.url + "/admin/settings",
                                {"output": str(elsewhere), "type:.jpg": "on"}, pc.url)
    assert response.code == 403 and "Nothing was changed" in body
    # With it: saved.
    token, cookie = csrf_of(*await page(http_client, pc.url + "/admin/settings"))
    response, body = await post(http_client, pc.url + "/admin/settings",
                                {"output": str(elsewhere), "type:.jpg": "on", "csrf": token}, pc.url, cookie)
    assert response.code == 200 and "Saved." in body
    assert "LAN mode changes when the server restarts." in body  # README: "LAN mode (after a restart)"
    saved = json.loads((pc.data / "config.json").read_text())
    assert saved["backupTo"] == [str(elsewhere)]
    assert saved["allowedTypes"] == [{"extension": ".jpg", "mime": "image/jpeg"}]
    assert saved["lanMode"] is False


@pytest.mark.reactor
@pytest_twisted.ensureDeferred
async def test_lockdown_refuses_settings_even_to_the_admin(start_server, http_client, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    pc = await start_server(lockDown=True)
    before = (pc.data / "config.json").read_bytes()
    token, cookie = csrf_of(*await page(http_client, pc.url + "/admin/pair"))
    response, body = await post(http_client, pc.url + "/admin/settings",
                                {"output": str(elsewhere), "type:.jpg": "on", "csrf": token}, pc.url, cookie)
    assert response.code == 404 and "lockDown" in body
    assert (await page(http_client, pc.url + "/admin/logs"))[0].code == 404
    assert (pc.data / "config.json").read_bytes() == before


@pytest.mark.reactor
@pytest_twisted.ensureDeferred
async def test_admin_pages_are_for_the_admin_only(start_server, http_client):
    pc = await start_server()
    port = pc.url.rsplit(":", 1)[1]
    # A rebound name: refused, nothing shown.
    response, body = await page(http_client, pc.url + "/admin/logs",
                                {b"Host": [f"attacker.example:{port}".encode()]})
    assert response.code == 403 and "Received" not in body and "listening" not in body
    # Another site's page reading the home page gets the short page.
    code, _, _ = await post_upload(http_client, pc.url, *multipart("#ward5-x.jpg", jpeg_bytes()))
    assert code == 200
    response, body = await page(http_client, pc.url + "/", {b"Origin": [b"http://evil.example"]})
    assert response.code == 200 and "ward5" not in body and "Logs" not in body
    # The CSS and JavaScript come from the server itself.
    for name in ("admin.css", "admin.js"):
        response, body = await page(http_client, pc.url + "/admin/static/" + name)
        assert response.code == 200 and body
    assert (await page(http_client, pc.url + "/admin/static/../config.json"))[0].code == 404


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.reactor
@pytest_twisted.ensureDeferred
async def test_a_real_twistd_logging_to_a_file_shows_its_lines_in_the_logs_page(tmp_path, http_client):
    from conftest import eventually, write_config
    from processes import spawn
    from test_twistd import TWISTD

    assert TWISTD.exists(), "run with `make test` (needs twistd)"
    data, log_file, port = tmp_path / "data", tmp_path / "server.log", free_port()
    write_config(data / "config.json")
    process = spawn([str(TWISTD), "--nodaemon", "--pidfile=", "--logfile", str(log_file), "medimage",
                     "--no-lan", "--data", str(data), "--port", str(port), "--interface", "127.0.0.1"],
                    str(tmp_path))
    url = f"http://127.0.0.1:{port}"
    try:
        async def answering():
            try:
                return (await http_client.get(url + "/load/")).code == 200
            except Exception:
                return False

        await eventually(answering, "the twistd server answering", seconds=60)
        code, _, _ = await post_upload(http_client, url, *multipart("#ward5-arm.jpg", jpeg_bytes()))
        assert code == 200
        response, body = await page(http_client, url + "/admin/logs")
        assert response.code == 200 and "Received ward5/arm.jpg" in body
        await eventually(lambda: "Received ward5/arm.jpg" in log_file.read_text(), "the line in the log file")
        assert process.output.strip() == b""  # the log went to the file, not the console
    finally:
        if not process.ended.called:
            import signal

            process.transport.signalProcess(signal.SIGTERM)
            await within(process.exited(30), 40)


def test_todays_count_takes_files_of_today_before_the_start_once_each(tmp_path):
    import os

    from medimage_tx.admin.activity import count_filed_today

    staged, target = tmp_path / "photos", tmp_path / "clinic"
    started = time.time()
    for folder, name, age in [(staged, "moles/a.jpg", 60), (target, "moles/a.jpg", 60),  # one photo, twice
                              (target, "b.jpg", 120), (staged, "old.jpg", 3 * 86400),
                              (target, ".medimage-incoming/c.jpg.part", 10), (staged, "later.jpg", -5)]:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        os.utime(path, (started - age, started - age))
    # Both today, unless the test runs within two minutes after midnight.
    expected = sum(time.localtime(started - age)[:3] == time.localtime(started)[:3] for age in (60, 120))
    assert count_filed_today([staged, target], started) == expected


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 500


@pytest.mark.reactor
@pytest_twisted.ensureDeferred
async def test_settings_adds_a_type_that_the_next_upload_may_use(start_server, http_client):
    pc = await start_server()
    code, _, _ = await post_upload(http_client, pc.url, *multipart("#scans-John123.png", PNG))
    assert code == 400  # not allowed yet
    token, cookie = csrf_of(*await page(http_client, pc.url + "/admin/settings"))
    fields = {"type:.jpg": "on", "csrf": token}
    # A bad extension: one clear line, nothing saved.
    before = (pc.data / "config.json").read_bytes()
    response, body = await post(http_client, pc.url + "/admin/settings",
                                {**fields, "newExtension": "../png", "newMime": "image/png"}, pc.url, cookie)
    assert response.code == 400 and "Nothing was saved" in body and "extension" in body
    assert (pc.data / "config.json").read_bytes() == before
    response, body = await post(http_client, pc.url + "/admin/settings",
                                {**fields, "newExtension": ".PNG", "newMime": "image/png"}, pc.url, cookie)
    assert response.code == 200 and "Saved." in body
    saved = json.loads((pc.data / "config.json").read_text())
    assert saved["allowedTypes"] == [{"extension": ".jpg", "mime": "image/jpeg"},
                                     {"extension": ".png", "mime": "image/png"}]
    # The form now lists it, ticked; the next upload of that type is stored.
    assert re.search(r'name="type:\.png" value="on" checked', (await page(http_client, pc.url + "/admin/settings"))[1])
    code, _, _ = await post_upload(http_client, pc.url, *multipart("#scans-John123.png", PNG))
    assert code == 200
    assert (pc.photos / "scans" / "John123.png").read_bytes() == PNG
