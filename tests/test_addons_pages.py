"""
The pages add-ons are written against (issue 20), on a real `medimage-tx
serve` process: the standard files the original's developer guide tells
add-on authors to use (snippet.html, the standard header,
js/session-client.js, basic-authentication/session.js), an add-on's own
files under public/, POST forms from its own pages, the menu entries its
install script adds to the header, and a zip packaged as AtomJump's resize
and keywords add-ons are (`node install.js first` editing the header and
the settings page).
"""

from __future__ import annotations

import io
import json
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from urllib.parse import quote

import pytest
import pytest_twisted

from conftest import eventually, jpeg_bytes, skip_here_fail_in_ci, upload_photo, write_config
from processes import spawn

COMMAND = Path(sys.executable).parent / "medimage-tx"
EVIL = b"http://evil.example"
PASSWORD = "clinic-password-2026"

pytestmark = pytest.mark.skipif(
    not COMMAND.exists(), reason=f"no medimage-tx beside {sys.executable}: run the tests with `make test`")


def node() -> str:
    found = shutil.which("node")
    if found is None:
        skip_here_fail_in_ci("Node.js is not installed (the original's add-ons are Node.js scripts)")
    return found


class Served:
    def __init__(self, process, data: Path, port: int):
        self.process, self.data, self.port = process, data, port
        self.url = f"http://127.0.0.1:{port}"

    @property
    def public(self) -> Path:
        return self.data / "public"

    def registry(self, **events) -> None:
        registry = {"events": {"photoWritten": [], "fileWritten": [], "urlRequest": []}}
        registry["events"].update(events)
        path = self.data / "addons" / "config.json"
        path.with_suffix(".tmp").write_text(json.dumps(registry))
        path.with_suffix(".tmp").replace(path)


async def serve(tmp_path: Path, **settings) -> Served:
    data = tmp_path / "MedImage"
    settings.setdefault("lanMode", False)
    write_config(data / "config.json", **settings)
    process = spawn([str(COMMAND), "serve", "--no-lan", "--data", str(data), "--port", "0",
                     "--interface", "127.0.0.1"], str(tmp_path))
    return Served(process, data, await process.port())


async def stop(served: Served) -> None:
    if not served.process.ended.called:
        served.process.transport.signalProcess(signal.SIGTERM)
    assert await served.process.exited() == -signal.SIGTERM


async def get(client, url: str, **headers):
    # A link on the server's own page, unless a test says otherwise.
    headers = {"Sec-Fetch-Site": b"same-origin", **headers}
    response = await client.get(url, headers={k.replace("_", "-").encode(): [v] for k, v in headers.items()})
    return response.code, await response.content(), response.headers


async def post(client, url: str, body: str, **headers):
    response = await client.post(url, data=body.encode(), headers={
        b"Content-Type": [b"application/x-www-form-urlencoded"],
        **{k.replace("_", "-").encode(): [v] for k, v in headers.items()}})
    return response.code, await response.content()


def script(served: Served, name: str, text: str) -> None:
    path = served.data / "addons" / "mine" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def url_entry(name: str, run_process: str, **more):
    return {"addon": "mine", "scriptURLName": name, "runProcess": run_process, "priority": "medium",
            "active": True, **more}


@pytest_twisted.ensureDeferred
async def test_the_standard_files_of_the_developer_guide_work(tmp_path, http_client):
    """
    snippet.html answers an add-on's CUSTOMJSON as it is; the standard
    header, js/session-client.js and the settings page are there; an
    add-on's own CSS, script and image under public/ are served with their
    types, and its .html pages get STANDARDHEADER.
    """
    served = await serve(tmp_path)
    try:
        answer = {"ok": True, "photos": ["a b.jpg"]}
        script(served, "json.py", "print('returnParams:?CUSTOMJSON=' + "
                                  f"__import__('urllib.parse').parse.quote({json.dumps(json.dumps(answer))}))\n")
        served.registry(urlRequest=[url_entry("mine-json", f"{sys.executable} parentdir/addons/mine/json.py",
                                              waitForRequestFinish="snippet.html")])
        code, body, _ = await get(http_client, served.url + "/addon/mine-json?x=1")
        assert (code, json.loads(body)) == (200, answer)

        code, body, headers = await get(http_client, served.url + "/js/session-client.js")
        assert code == 200 and headers.getRawHeaders(b"content-type")[0].startswith(b"text/javascript")
        for function in (b"function getCookie(", b"function setCookie(", b"function checkSessionValid(",
                         b"function logout("):
            assert function in body

        code, body, _ = await get(http_client, served.url + "/pages/addon-settings.html")
        assert code == 200
        assert b"STANDARDHEADER" not in body, body[body.find(b"STANDARDHEADER") - 200:][:400]
        assert b'id="side-menu"' in body  # the header went in
        assert b'id="setting-tabs"' in body and b'id="tab-content"' in body
        header = (served.public / "components" / "header.html").read_text()
        assert 'id="side-menu"' in header and "<ul" in header

        (served.public / "css").mkdir(exist_ok=True)
        (served.public / "css" / "mine.css").write_text("p { color: red }")
        (served.public / "images").mkdir(exist_ok=True)
        (served.public / "images" / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\nlogo")
        (served.public / "pages" / "mine.html").write_text("STANDARDHEADER<p>mine</p>")
        code, body, headers = await get(http_client, served.url + "/css/mine.css")
        assert (code, body) == (200, b"p { color: red }")
        assert headers.getRawHeaders(b"content-type")[0].startswith(b"text/css")
        code, body, headers = await get(http_client, served.url + "/images/logo.png")
        assert (code, headers.getRawHeaders(b"content-type")[0]) == (200, b"image/png")
        code, body, _ = await get(http_client, served.url + "/pages/mine.html")
        assert code == 200 and body.endswith(b"<p>mine</p>") and b'id="side-menu"' in body
        # Nothing outside public/ (config.json is beside it).
        for path in ("/pages/../config.json", "/pages/%2e%2e/config.json", "/css/..%2fconfig.json"):
            code, body, _ = await get(http_client, served.url + path)
            assert code == 404 and b"globalId" not in body, path
    finally:
        await stop(served)


@pytest_twisted.ensureDeferred
async def test_public_files_keep_the_admin_protections(tmp_path, http_client):
    served = await serve(tmp_path, headers={"Access-Control-Allow-Origin": "*"})
    try:
        url = served.url + "/pages/addon-settings.html"
        for headers in ({"Host": b"rebound.evil.example"}, {"Origin": EVIL},
                        {"Sec-Fetch-Site": b"cross-site"}, {"Referer": EVIL + b"/x"}):
            code, body, _ = await get(http_client, url, **headers)
            assert code == 403 and b"side-menu" not in body, headers
        code, _, headers = await get(http_client, url)
        assert code == 200 and not headers.hasHeader(b"access-control-allow-origin")
        assert headers.getRawHeaders(b"x-frame-options") == [b"DENY"]
        response = await http_client.post(url, data=b"x=1", headers={
            b"Content-Type": [b"application/x-www-form-urlencoded"], b"Origin": [served.url.encode()]})
        assert response.code == 405  # public files are read, never changed
    finally:
        await stop(served)


@pytest_twisted.ensureDeferred
async def test_an_add_on_form_posts_from_its_own_page_without_our_token(tmp_path, http_client):
    """
    The original's add-on pages post plain forms (no CSRF token): accepted
    when the browser says the page was this server's (Origin, else Referer),
    refused from anywhere else, and nothing runs then.
    """
    served = await serve(tmp_path)
    try:
        script(served, "save.py", "import sys\nopen(__file__ + '.calls', 'a').write(sys.argv[1] + '\\n')\n"
                                  "print('returnParams:?SAVED=yes')\n")
        (served.public / "pages").mkdir(parents=True, exist_ok=True)
        (served.public / "pages" / "saved.html").write_text("SAVED")
        served.registry(urlRequest=[url_entry("mine-save", f"{sys.executable} parentdir/addons/mine/save.py param1",
                                              waitForRequestFinish="saved.html")])
        calls = served.data / "addons" / "mine" / "save.py.calls"
        url = served.url + "/addon/mine-save"
        for headers in ({"Origin": EVIL}, {"Origin": b"null"}, {"Referer": EVIL + b"/form.html"}, {},
                        {"Origin": served.url.encode(), "Host": b"rebound.evil.example"}):
            code, _ = await post(http_client, url, "width=800", **headers)
            assert code == 403, headers
        assert not calls.exists()  # nothing ran
        code, body = await post(http_client, url, "width=800&height=auto", Origin=served.url.encode())
        assert (code, body) == (200, b"yes")
        code, body = await post(http_client, url, "width=640",
                                Referer=(served.url + "/pages/addon-settings.html").encode())
        assert (code, body) == (200, b"yes")
        assert calls.read_text().splitlines() == [quote("width=800&height=auto", safe=""),
                                                  quote("width=640", safe="")]
    finally:
        await stop(served)


SESSION_CHECK = """\
var session = require('../basic-authentication/session.js');
var queryString = require('querystring');
var opts = queryString.parse(decodeURIComponent(process.argv[2]));
var valid = (opts.sessionId) && (session.checkSessionValid(opts.sessionId) > -1);
console.log('returnParams:?CUSTOMJSON=' + encodeURIComponent(JSON.stringify({valid: !!valid})));
"""


@pytest_twisted.ensureDeferred
async def test_session_js_checks_the_password_session_of_get_session(tmp_path, http_client):
    """
    The guide's sign-in: the page asks /addon/get-session?pass=..., keeps
    the sessionId (session-client.js's setCookie), and passes it to its
    script, which asks basic-authentication/session.js whether it is valid.
    """
    node()
    served = await serve(tmp_path, basicAuthent=PASSWORD)
    try:
        script(served, "check.js", SESSION_CHECK)
        served.registry(urlRequest=[url_entry("mine-check", "node parentdir/addons/mine/check.js param1",
                                              waitForRequestFinish="snippet.html")])
        code, body, headers = await get(http_client, served.url + "/addon/get-session?pass=" + PASSWORD)
        # As the original's snippet.html: the page's JSON.parse(data) gets a string.
        assert code == 200 and headers.getRawHeaders(b"content-type")[0].startswith(b"text/html")
        session_id = json.loads(body)["sessionId"]
        code, body, _ = await get(http_client, served.url + "/addon/mine-check?sessionId=" + session_id)
        assert (code, json.loads(body)) == (200, {"valid": True})
        code, body, _ = await get(http_client, served.url + "/addon/mine-check?sessionId=" + "x" * 43)
        assert (code, json.loads(body)) == (200, {"valid": False})
        await get(http_client, served.url + f"/addon/get-session?sessionId={session_id}&logout=true")
        code, body, _ = await get(http_client, served.url + "/addon/mine-check?sessionId=" + session_id)
        assert (code, json.loads(body)) == (200, {"valid": False})
    finally:
        await stop(served)


# An add-on packaged as AtomJump's resize and keywords add-ons are: npm-free
# here (no download in a test), the same steps otherwise.

INSTALL_JS = r"""
// node install.js first: register the photoWritten event, add a menu entry
// to the standard header and a tab to the settings page, copy a page.
var fs = require('fs');
var path = require('path');
var parent = path.join(__dirname, '..', '..');
function insertInto(file, openTag, closeTag, html) {
    var text = fs.readFileSync(file, 'utf8');          // ENOENT if the server has no such page
    var at = text.indexOf(openTag);
    if (at < 0) { throw new Error(openTag + ' not found in ' + file); }
    var end = text.indexOf(closeTag, at);
    fs.writeFileSync(file, text.slice(0, end) + html + text.slice(end));
}
if (process.argv[2] === 'first') {
    insertInto(path.join(parent, 'public', 'components', 'header.html'), 'id="side-menu"', '</ul>',
               "<li id='resize-log'><a href='/addon/resize-log'><i class='fa fa-list fa-fw'></i> Resize Log</a></li>");
    var settings = path.join(parent, 'public', 'pages', 'addon-settings.html');
    insertInto(settings, 'id="setting-tabs"', '</ul>',
               "<li><a id='resize-tab' href='#resize' data-toggle='tab'>Resize</a></li>");
    insertInto(settings, 'id="tab-content"', '</div>', "</div><div class='tab-pane fade' id='resize'>");
    fs.copyFileSync(path.join(__dirname, 'pages', 'resize-log.html'),
                    path.join(parent, 'public', 'pages', 'resize-log.html'));
}
var registryFile = path.join(__dirname, '..', 'config.json');
var registry = JSON.parse(fs.readFileSync(registryFile, 'utf8'));
registry.events.photoWritten.push({"addon": "Resize", "runProcess": "node parentdir/addons/resize/resize.js param1",
                                   "active": true});
registry.events.urlRequest.push({"addon": "Resize", "scriptURLName": "resize-log",
                                 "runProcess": "node parentdir/addons/resize/log.js",
                                 "waitForRequestFinish": "resize-log.html", "active": true});
fs.writeFileSync(registryFile, JSON.stringify(registry, null, 6));
console.log('The installation was completed successfully!');
"""

RESIZE_JS = r"""
// The 'resize': a smaller copy beside the photo, copied with it.
var fs = require('fs');
var photo = process.argv[2];
var small = photo.replace('.jpg', '-small.jpg');
var bytes = fs.readFileSync(photo);
fs.writeFileSync(small, bytes.subarray(0, 1000));
fs.appendFileSync(__dirname + '/resized.log', photo + '\n');
console.log('backupFiles:' + small);
"""

LOG_JS = r"""
var fs = require('fs');
var lines = fs.existsSync(__dirname + '/resized.log') ? fs.readFileSync(__dirname + '/resized.log', 'utf8') : '';
console.log('returnParams:?COUNT=' + lines.split('\n').filter(Boolean).length);
"""


def resize_zip() -> bytes:
    descriptor = {
        "author": "test", "name": "resize", "version": "0.2.3", "description": "Resizes photos",
        "installCommands": {"all": ["node install.js first"], "win32": [], "win64": [], "unix": [], "mac": []},
        "uninstallCommands": {"all": [], "win32": [], "win64": [], "unix": [], "mac": []},
    }
    files = {"medimage-installer.json": json.dumps(descriptor, indent=2), "install.js": INSTALL_JS,
             "resize.js": RESIZE_JS, "log.js": LOG_JS,
             "pages/resize-log.html": "STANDARDHEADER<p>Resized COUNT photos</p>"}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr("medimage-addon-resize-0.2.3/" + name, text)
    return buffer.getvalue()


@pytest_twisted.ensureDeferred
async def test_resize_style_add_on_installs_edits_the_menu_and_resizes_a_real_upload(tmp_path, http_client):
    """
    README: `medimage-tx addon install resize-0.2.3.zip` beside a running
    server.  Its `node install.js first` edits public/components/header.html
    and public/pages/addon-settings.html; the menu entry it adds shows in the
    admin pages' navigation and in the add-on pages' standard header; its
    photoWritten runs on the next photo.
    """
    node()
    target = tmp_path / "clinic"
    target.mkdir()
    served = await serve(tmp_path, backupTo=[target.as_posix()])
    try:
        zip_path = tmp_path / "resize-0.2.3.zip"
        zip_path.write_bytes(resize_zip())
        done = subprocess.run([str(COMMAND), "addon", "--config", str(served.data / "config.json"),
                               "install", str(zip_path)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        header = (served.public / "components" / "header.html").read_text()
        assert "Resize Log" in header

        photo = jpeg_bytes(30_000)
        # The running server reads the registry the install script edited.
        code, body, _ = await upload_photo(http_client, served.url, "#NHID1234-arm.jpg", photo)
        assert code == 200, body
        await eventually(lambda: (target / "NHID1234" / "arm-small.jpg").exists(), "the resized copy")
        assert (target / "NHID1234" / "arm-small.jpg").read_bytes() == photo[:1000]
        assert (target / "NHID1234" / "arm.jpg").read_bytes() == photo

        for page in ("/admin/pair", "/admin/addons", "/"):
            code, body, _ = await get(http_client, served.url + page)
            assert code == 200, page
            nav = re.search(rb"<nav[^>]*>(.*?)</nav>", body, re.S).group(1)
            assert b'<a href="/addon/resize-log">Resize Log</a>' in nav, (page, nav)
        code, body, _ = await get(http_client, served.url + "/pages/addon-settings.html")
        assert code == 200 and b"resize-tab" in body and b"Resize Log" in body
        code, body, _ = await get(http_client, served.url + "/addon/resize-log")
        assert code == 200 and body.endswith(b"<p>Resized 1 photos</p>") and b"Resize Log" in body
    finally:
        await stop(served)


LOGIN_PAGE = """STANDARDHEADER
<main id="page-wrapper">
  <input id="pass" type="password"><button id="sign-in">Sign in</button>
  <p id="said">not yet</p>
</main>
<script src="../js/session-client.js"></script>
<script>
  // The developer guide's sign-in, word for word in its steps.
  jQuery("#sign-in").click(function () {
    jQuery.ajax({
      url: "/addon/get-session",
      data: { pass: jQuery("#pass").val() },
      success: function (data) {
        var myobj = JSON.parse(data);
        if (myobj.success == true) {
          setCookie(myobj.sessionId);
          checkSessionValid(getCookie("sessionId"), function (err) {
            jQuery("#said").html(err ? "invalid" : "signed in");
          });
        } else {
          jQuery("#said").html("wrong password");
        }
      }
    });
  });
</script>
</div></body></html>
"""


@pytest_twisted.ensureDeferred
async def test_the_standard_pages_work_in_a_real_browser(start_server, tmp_path):
    """
    Headless Chromium: an add-on's settings tab loaded with jQuery.ajax (its
    inline script runs), its plain POST form saved from there without our
    token, and the guide's sign-in with session-client.js.
    """
    from browser import in_browser

    server = await start_server(basicAuthent=PASSWORD)
    pages = server.data / "public" / "pages"
    settings = pages / "addon-settings.html"
    # What an install script does to the settings page: a tab, its pane, its loader.
    text = settings.read_text()
    text = text.replace('<li class="active"><a href="#main" data-toggle="tab">Main Server</a></li>',
                        '<li class="active"><a href="#main" data-toggle="tab">Main Server</a></li>'
                        '<li><a id="mine-tab" href="#mine" data-toggle="tab">Mine</a></li>')
    text = text.replace('<div id="tab-content" class="tab-content">',
                        '<div id="tab-content" class="tab-content"><div class="tab-pane fade" id="mine"></div>')
    text = text.replace("</main>", "</main><script>jQuery(document).ready(function(){"
                        "jQuery('#mine-tab').click(function(){jQuery.ajax({url: '/addon/mine-view-settings/',"
                        "success: function(data){jQuery('#mine').html(data);}});});});</script>")
    settings.write_text(text)
    (pages / "mine-settings.html").write_text(
        "<h4>Mine</h4><form method='post' action='/addon/mine-set'>"
        "<label>Width <input name='width' id='width' value='WIDTHVAL'></label>"
        "<input type='submit' value='Save'></form><p id='ran'></p>"
        "<script>jQuery('#ran').text('script ran');</script>")
    (pages / "mine-saved.html").write_text("STANDARDHEADER<p id='saved'>Saved width NEWWIDTH</p>")
    (pages / "login.html").write_text(LOGIN_PAGE)
    folder = server.data / "addons" / "mine"
    folder.mkdir(parents=True)
    (folder / "view.py").write_text("print('returnParams:?WIDTHVAL=1200')\n")
    (folder / "set.py").write_text("import sys, urllib.parse\nq = urllib.parse.parse_qs(urllib.parse.unquote(sys.argv[1]))\n"
                                   "print('returnParams:?NEWWIDTH=' + q['width'][0])\n")
    registry = {"events": {"photoWritten": [], "fileWritten": [], "urlRequest": [
        url_entry("mine-view-settings", f"{sys.executable} parentdir/addons/mine/view.py",
                  waitForRequestFinish="mine-settings.html"),
        url_entry("mine-set", f"{sys.executable} parentdir/addons/mine/set.py param1",
                  waitForRequestFinish="mine-saved.html")]}}
    (server.data / "addons" / "config.json").write_text(json.dumps(registry))

    def steps(page):
        seen = {}
        page.goto(server.url + "/pages/addon-settings.html")
        assert not page.locator("#mine").is_visible()
        page.get_by_role("link", name="Mine").click()
        page.locator("#ran").filter(has_text="script ran").wait_for()
        seen["pane"] = page.locator("#mine").is_visible()
        seen["main hidden"] = not page.locator("#main").is_visible()
        seen["width"] = page.get_by_label("Width").input_value()
        page.get_by_label("Width").fill("800")
        page.get_by_role("button", name="Save").click()
        seen["saved"] = page.locator("#saved").inner_text()
        seen["menu"] = page.locator("#side-menu").inner_text()
        page.goto(server.url + "/pages/login.html")
        page.locator("#pass").fill("wrong-password-1")
        page.locator("#sign-in").click()
        page.locator("#said").filter(has_text="wrong password").wait_for()
        page.locator("#pass").fill(PASSWORD)
        page.locator("#sign-in").click()
        page.locator("#said").filter(has_text="signed in").wait_for()
        seen["cookie"] = page.evaluate("getCookie('sessionId')")
        page.screenshot(path=tmp_path / "addon-login.png")
        return seen

    seen = await in_browser(steps)
    assert seen["pane"] and seen["main hidden"] and seen["width"] == "1200"
    assert seen["saved"] == "Saved width 800"
    assert "Add-on settings" in seen["menu"]
    assert server.service.state.access.sessions.valid(seen["cookie"])
