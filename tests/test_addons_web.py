"""
urlRequest add-ons, install and remove (issue 13): a real server on
loopback, real scripts, zips made here and served from a loopback server.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from urllib.parse import quote

import psutil
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web import server as web_server, static

from addon_helpers import PYTHON, RECORD_ARGS, calls, entry, write_registry, write_script
from conftest import all_files, jpeg_bytes
from test_relay import upload

EVIL = b"http://evil.example"


def url_entry(name: str, run_process: str, **more):
    return {"addon": "test", "scriptURLName": name, "runProcess": run_process,
            "priority": "medium", "active": True, **more}


def write_page(server_dir: Path, name: str, text: str) -> None:
    pages = server_dir / "public" / "pages"
    pages.mkdir(parents=True, exist_ok=True)
    (pages / name).write_text(text)


async def get(http_client, url: str, **headers):
    # A link on the server's own page, unless a test says otherwise (an
    # add-on page runs only when the server's own page or the address bar asks).
    headers = {"Sec-Fetch-Site": b"same-origin", **headers}
    response = await http_client.get(url, headers={k.encode(): [v] for k, v in headers.items()})
    return response.code, await response.content()


@pytest_twisted.ensureDeferred
async def test_url_request_page_comes_back_with_its_return_params(start_server, http_client):
    server = await start_server()
    write_script(server.data, "record.py", RECORD_ARGS + """\
print("looking up the patient")
print("returnParams:?NAME=Jo%20Smith&COUNT=3")
""")
    write_page(server.data, "show.html", "<html>STANDARDHEADER<p>NAME has COUNT photos</p></html>")
    write_registry(server.data, urlRequest=[url_entry(
        "show-name", f"{PYTHON} parentdir/addons/test/record.py param1",
        waitForRequestFinish="show.html")])
    code, body = await get(http_client, server.url + "/addon/show-name?patient=NHI%23123&x=a%20b")
    assert code == 200 and body.endswith(b"<p>Jo Smith has 3 photos</p></html>")
    header = (server.data / "public" / "components" / "header.html").read_bytes()  # the standard one
    assert body == b"<html>" + header + b"<p>Jo Smith has 3 photos</p></html>"
    # param1 as the original builds it: the query, URL-encoded once more.
    assert calls(server.data)[0]["argv"] == ["patient%3DNHI%23123%26x%3Da%20b"]


@pytest_twisted.ensureDeferred
async def test_url_request_change_location_photo_file_and_after_request(start_server, http_client):
    server = await start_server()
    (server.photos / "NHID1234").mkdir(parents=True)
    photo = jpeg_bytes()
    (server.photos / "NHID1234" / "arm.jpg").write_bytes(photo)
    write_script(server.data, "moved.sh", "#!/bin/sh\necho 'returnParams:?CHANGELOCATION=other.html&WHO=you'\n")
    write_script(server.data, "photo.sh", "#!/bin/sh\necho 'returnPhotoFile:../../photos/NHID1234/arm.jpg'\n")
    write_script(server.data, "secret.sh", "#!/bin/sh\necho 'returnPhotoFile:../../config.json'\n")
    write_script(server.data, "slow.sh", "#!/bin/sh\nexec sleep 600\n")
    write_page(server.data, "first.html", "first WHO")
    write_page(server.data, "other.html", "other WHO")
    write_page(server.data, "thanks.html", "thanks")
    write_registry(server.data, urlRequest=[
        url_entry("moved", "parentdir/addons/test/moved.sh", waitForRequestFinish="first.html"),
        url_entry("photo", "parentdir/addons/test/photo.sh", waitForRequestFinish=""),
        url_entry("secret", "parentdir/addons/test/secret.sh", waitForRequestFinish=""),
        url_entry("slow", "parentdir/addons/test/slow.sh", afterRequest="thanks.html"),
    ])
    assert await get(http_client, server.url + "/addon/moved") == (200, b"other you")
    assert await get(http_client, server.url + "/addon/photo?x=1") == (200, photo)
    code, body = await get(http_client, server.url + "/addon/secret")
    assert code == 404 and b"globalId" not in body  # only the pages and photos folders are served
    addons = server.service.state.addons
    # afterRequest: the answer does not wait for the script.
    assert await get(http_client, server.url + "/addon/slow") == (200, b"thanks")
    [pid] = addons.processes
    psutil.Process(pid).kill()
    await addons.idle()
    assert await get(http_client, server.url + "/addon/nothing-here") == (404, b"No add-on answers here")


@pytest_twisted.ensureDeferred
async def test_url_requests_only_for_this_server_and_never_from_another_site(start_server, http_client):
    server = await start_server()
    write_script(server.data, "record.py", RECORD_ARGS + "print('returnParams:?A=1')\n")
    write_page(server.data, "p.html", "A")
    write_registry(server.data, urlRequest=[url_entry(
        "change", f"{PYTHON} parentdir/addons/test/record.py param1", waitForRequestFinish="p.html")])
    url = server.url + "/addon/change?newFolder=/tmp"
    for headers in ({"Origin": EVIL}, {"Sec-Fetch-Site": b"cross-site"}, {"Referer": EVIL + b"/page"},
                    {"Host": b"rebound.evil.example"}):
        code, _ = await get(http_client, url, **headers)
        assert code == 403, headers
    assert calls(server.data) == []  # nothing was run
    assert await get(http_client, url, Referer=(server.url + "/").encode()) == (200, b"1")
    assert len(calls(server.data)) == 1


@pytest_twisted.ensureDeferred
async def test_reload_config_from_a_url_add_on_moves_the_copies(start_server, http_client, tmp_path):
    """
    The original's change-folder add-on: a urlRequest writes backupTo and
    prints reloadConfig:true; the next photo goes to the new folder.
    """
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    server = await start_server(backupTo=[old.as_posix()])
    write_script(server.data, "set-folder.py", """\
import json, os, sys
from urllib.parse import parse_qs, unquote
opts = parse_qs(unquote(sys.argv[1]))
path = os.path.join(os.environ["MEDIMAGE_PARENT_DIR"], "config.json")
config = json.load(open(path))
config["backupTo"] = [opts["newFolder"][0]]
json.dump(config, open(path, "w"))
print("reloadConfig:true")
print("returnParams:?MESSAGE=Success")
""")
    write_page(server.data, "settings.html", "MESSAGE")
    write_registry(server.data, urlRequest=[url_entry(
        "change-folder-set", f"{PYTHON} parentdir/addons/test/set-folder.py param1",
        waitForRequestFinish="settings.html")])
    code, body = await get(http_client, server.url + "/addon/change-folder-set?newFolder=" + quote(new.as_posix()))
    assert (code, body) == (200, b"Success")
    assert (await upload(http_client, server, "#P1-x.jpg", jpeg_bytes()))[0] == 200
    assert [p.name for p in all_files(new)] == ["x.jpg"] and all_files(old) == []


# Install and remove


def addon_zip(name: str = "myaddon", install_exit: int = 0, nested: str = "myaddon-1.0/") -> bytes:
    """
    An add-on as the original's installer takes it: a zip with
    medimage-installer.json (one folder deep, as zips made from a folder are).
    """
    descriptor = {
        "name": name, "version": "1.0", "description": "Test add-on",
        "installCommands": {"all": ["sh install.sh"], "unix": [{"attempt": "sh missing-tool.sh",
                                                                 "warnOnTimeout": "no tool"}]},
        "uninstallCommands": {"all": ["sh uninstall.sh"]},
        "events": {"photoWritten": [{"addon": name, "runProcess": f"sh parentdir/addons/{name}/hook.sh param1",
                                     "priority": "medium", "active": True}]},
    }
    files = {
        "medimage-installer.json": json.dumps(descriptor),
        "install.sh": ("mkdir -p ../../public/pages && cp page.html ../../public/pages/mine.html\n"
                       f"echo installed > ../installed-{name}\nexit {install_exit}\n"),
        "uninstall.sh": f"echo removed > ../removed-{name}\n",
        "hook.sh": "echo \"$1\" > \"$(dirname \"$0\")/seen\"\n",
        "page.html": "mine",
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, text in files.items():
            archive.writestr(nested + path, text)
    return buffer.getvalue()


@pytest.fixture
def browser():
    """
    A client that keeps no cookies (each test sends the ones it means to).
    """
    from http.cookiejar import CookieJar, DefaultCookiePolicy

    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=False)
    yield HTTPClient(Agent(reactor, pool=pool), cookiejar=CookieJar(DefaultCookiePolicy(allowed_domains=[])))
    pytest_twisted.blockon(pool.closeCachedConnections())


@pytest.fixture
def zip_server(tmp_path):
    """
    Serves tmp_path/served over HTTP on loopback (the add-on's "download site").
    """
    served = tmp_path / "served"
    served.mkdir()
    ports = []

    async def start():
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            web_server.Site(static.File(str(served))))
        ports.append(port)
        return served, f"http://127.0.0.1:{port.getHost().port}"

    yield start
    for port in ports:
        pytest_twisted.blockon(port.stopListening())


async def csrf(http_client, server):
    response = await http_client.get(server.url + "/admin/login")
    body = await response.content()
    token = re.search(rb"name='csrf' value='([0-9a-f]+)'", body).group(1).decode()
    cookie = response.headers.getRawHeaders(b"set-cookie")[0].split(b";")[0]
    return token, cookie


async def post_form(http_client, server, path: str, fields: dict, cookie: bytes):
    response = await http_client.post(
        server.url + path, data="&".join(f"{k}={quote(v)}" for k, v in fields.items()).encode(),
        headers={b"Content-Type": [b"application/x-www-form-urlencoded"], b"Cookie": [cookie],
                 b"Origin": [server.url.encode()]})
    return response.code, json.loads(await response.content())


@pytest_twisted.ensureDeferred
async def test_install_from_a_zip_url_list_use_and_remove(start_server, browser, tmp_path, zip_server):
    http_client = browser
    served, base = await zip_server()
    (served / "myaddon-1.0.zip").write_bytes(addon_zip())
    server = await start_server(backupTo=[(tmp_path / "clinic").as_posix()])
    (tmp_path / "clinic").mkdir()
    token, cookie = await csrf(http_client, server)
    # Without the CSRF token: refused, nothing installed.
    response = await http_client.post(server.url + "/addon/install-addon",
                                      data=f"zipfileURL={base}/myaddon-1.0.zip".encode(),
                                      headers={b"Content-Type": [b"application/x-www-form-urlencoded"],
                                               b"Origin": [server.url.encode()]})
    assert response.code == 403
    assert not (server.data / "addons" / "myaddon").exists()

    code, answer = await post_form(http_client, server, "/addon/install-addon",
                                   {"zipfileURL": f"{base}/myaddon-1.0.zip", "csrf": token}, cookie)
    assert code == 200 and answer["finished"] and answer["name"] == "myaddon", answer
    assert answer["warnings"] and "missing-tool.sh" in answer["warnings"][0]
    folder = server.data / "addons" / "myaddon"
    assert (folder / "hook.sh").exists() and (server.data / "addons" / "installed-myaddon").exists()
    response = await http_client.get(server.url + "/addon/installed")
    listed = json.loads(await response.content())
    mine = [a for a in listed if a["name"] == "myaddon"]
    assert mine and mine[0]["version"] == "1.0" and mine[0]["events"][0]["event"] == "photoWritten"
    # Its event is registered: it runs for the next photo.
    assert (await upload(http_client, server, "#P1-x.jpg", jpeg_bytes()))[0] == 200
    await server.service.state.addons.idle()
    assert (folder / "seen").read_text() == f"{server.photos / 'P1' / 'x.jpg'}\n"

    code, answer = await post_form(http_client, server, "/addon/install-addon",
                                   {"uninstall": "myaddon", "csrf": token}, cookie)
    assert code == 200 and answer["finished"], answer
    assert not folder.exists() and (server.data / "addons" / "removed-myaddon").exists()
    registry = json.loads((server.data / "addons" / "config.json").read_text())
    assert registry["events"]["photoWritten"] == []


@pytest_twisted.ensureDeferred
async def test_failed_install_leaves_nothing_and_lockdown_refuses(start_server, browser, tmp_path,
                                                                  zip_server):
    http_client = browser
    served, base = await zip_server()
    (served / "bad.zip").write_bytes(addon_zip(install_exit=7))
    (served / "good.zip").write_bytes(addon_zip())
    server = await start_server()
    registry_before = (server.data / "addons" / "config.json").read_bytes()
    token, cookie = await csrf(http_client, server)
    code, answer = await post_form(http_client, server, "/addon/install-addon",
                                   {"zipfileURL": f"{base}/bad.zip", "csrf": token}, cookie)
    assert code == 400 and not answer["finished"] and "exit status 7" in answer["message"]
    # Its folder, what its commands wrote beside it and its page are gone;
    # the standard session.js stays (the server's own).
    assert sorted(p.name for p in (server.data / "addons").iterdir()) == ["basic-authentication", "config.json"]
    assert not (server.data / "public" / "pages" / "mine.html").exists()
    assert (server.data / "addons" / "config.json").read_bytes() == registry_before

    locked = await start_server("locked", lockDown=True)
    token, cookie = await csrf(http_client, locked)
    code, answer = await post_form(http_client, locked, "/addon/install-addon",
                                   {"zipfileURL": f"{base}/good.zip", "csrf": token}, cookie)
    assert code == 403 and "lockDown" in answer["message"]
    assert not (locked.data / "addons" / "myaddon").exists()


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medimage_tx", "addon", *args],
                          capture_output=True, text=True, timeout=120)


def test_command_line_install_list_remove_and_lockdown(tmp_path):
    config = tmp_path / "MedImage" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps({"lockDown": False}))
    zip_path = tmp_path / "myaddon-1.0.zip"
    zip_path.write_bytes(addon_zip(nested=""))
    done = cli("--config", str(config), "install", str(zip_path))
    assert done.returncode == 0, done.stderr
    assert "myaddon 1.0: The installation was completed successfully!" in done.stdout
    listed = json.loads(cli("--config", str(config), "list", "--json").stdout)
    assert [a["name"] for a in listed] == ["myaddon"]
    assert "photoWritten (active)" in cli("--config", str(config), "list").stdout
    done = cli("--config", str(config), "remove", "myaddon")
    assert done.returncode == 0, done.stderr
    assert not (config.parent / "addons" / "myaddon").exists()
    assert cli("--config", str(config), "list").stdout.strip() == "No add-ons installed."
    config.write_text(json.dumps({"lockDown": True}))
    done = cli("--config", str(config), "install", str(zip_path))
    assert done.returncode == 1 and "lockDown" in done.stderr
    assert not (config.parent / "addons" / "myaddon").exists()


@pytest_twisted.ensureDeferred
async def test_install_from_an_uploaded_zip(start_server, browser, tmp_path):
    server = await start_server()
    token, cookie = await csrf(browser, server)
    boundary = "----addonzip"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{token}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file1\"; filename=\"myaddon.zip\"\r\n"
            "Content-Type: application/zip\r\n\r\n").encode() + addon_zip() + f"\r\n--{boundary}--\r\n".encode()
    response = await browser.post(server.url + "/addon/install-addon", data=body, headers={
        b"Content-Type": [f"multipart/form-data; boundary={boundary}".encode()], b"Cookie": [cookie],
        b"Origin": [server.url.encode()]})
    answer = json.loads(await response.content())
    assert response.code == 200 and answer["name"] == "myaddon", answer
    assert (server.data / "addons" / "myaddon" / "hook.sh").exists()
    assert all_files(server.data / "tmp") == []  # the uploaded zip is gone


@pytest_twisted.ensureDeferred
async def test_the_originals_get_install_link_asks_the_admin_and_only_the_post_installs(
        start_server, browser, zip_server):
    served, base = await zip_server()
    (served / "myaddon-1.0.zip").write_bytes(addon_zip())
    server = await start_server()
    folder = server.data / "addons" / "myaddon"
    link = f"{server.url}/addon/install-addon?zipfileURL={quote(base + '/myaddon-1.0.zip', safe='')}"
    # Another site's page (a link or an <img> to the PC) gets no page and changes nothing.
    response = await browser.get(link, headers={b"Referer": [EVIL + b"/page"]})
    assert response.code == 403
    # The admin's browser on the PC: the original's link shows what would be
    # installed, and a button; the GET itself installs nothing.
    response = await browser.get(link, headers={b"Sec-Fetch-Site": [b"none"]})
    body = (await response.content()).decode()
    assert response.code == 200, body
    assert f"{base}/myaddon-1.0.zip" in body
    assert re.search(r'<form[^>]*method="post"[^>]*action="/addon/install-addon"', body) or \
        re.search(r'<form[^>]*action="/addon/install-addon"[^>]*method="post"', body), body
    assert not folder.exists()
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', body).group(1)
    url = re.search(r'name="zipfileURL" value="([^"]+)"', body).group(1)
    cookie = response.headers.getRawHeaders(b"set-cookie")[0].split(b";")[0]
    code, answer = await post_form(browser, server, "/addon/install-addon",
                                   {"zipfileURL": url, "csrf": token}, cookie)
    assert code == 200 and answer["finished"], answer
    assert (folder / "hook.sh").exists()
    # Removal the same way.
    response = await browser.get(f"{server.url}/addon/install-addon?uninstall=myaddon",
                                 headers={b"Sec-Fetch-Site": [b"none"], b"Cookie": [cookie]})
    body = (await response.content()).decode()
    assert response.code == 200 and "Remove myaddon" in body
    assert folder.exists()
    code, answer = await post_form(browser, server, "/addon/install-addon",
                                   {"uninstall": "myaddon", "csrf": token}, cookie)
    assert code == 200 and not folder.exists()
    # In lockDown the page says so and offers no button.
    locked = await start_server("locked", lockDown=True)
    response = await browser.get(f"{locked.url}/addon/install-addon?zipfileURL=x",
                                 headers={b"Sec-Fetch-Site": [b"none"]})
    body = (await response.content()).decode()
    assert response.code == 403 and "lockDown" in body and "<form" not in body.split("<main")[1]


#: What the original's log-viewer add-on does on Linux and macOS: the last
#: 100 lines of $HOME/.pm2/logs/medimage-error.log into its page (here in
#: Python, run as a process as the original's node script is).
VIEW_LOG = """\
import os, sys
from urllib.parse import quote
path = os.path.join(os.environ["HOME"], ".pm2", "logs", "medimage-error.log")
try:
    with open(path) as f:
        log = "".join(f.readlines()[-100:])
except OSError as e:
    log = "Sorry, cannot read log file! " + str(e)
print("returnParams:?LOG=" + quote(log.replace("\\n", "<br />")))
"""


@pytest_twisted.ensureDeferred
async def test_the_log_viewer_add_on_finds_the_servers_log(start_server, http_client, tmp_path,
                                                          monkeypatch):
    from twisted.logger import Logger

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    server = await start_server()
    script = server.data / "addons" / "log-viewer" / "view-log.py"
    script.parent.mkdir(parents=True)
    script.write_text(VIEW_LOG)
    write_page(server.data, "view-log.html", "<pre>LOG</pre>")
    write_registry(server.data, urlRequest=[{
        "addon": "Log Viewer", "scriptURLName": "view-log", "active": True, "priority": "medium",
        "runProcess": f"{PYTHON} parentdir/addons/log-viewer/view-log.py param1",
        "waitForRequestFinish": "view-log.html"}])
    Logger().info("Photo NHI123-x.jpg received: a line the clinic looks for")
    code, body = await get(http_client, server.url + "/addon/view-log")
    assert code == 200, body
    assert b"a line the clinic looks for" in body, body[:500]
    # The user's own home (where a pm2 log of the original would be) is untouched.
    assert list(home.iterdir()) == []
