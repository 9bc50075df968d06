"""
Red team on issue 19 and 20's changes (add-on pages, the installer, access,
migrate and the service), on real `medimage-tx serve` processes over
loopback or in a network namespace of the test's own.  Each test failed on
the code before its fix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted

from conftest import write_config
from processes import spawn
from test_round3 import COMMAND, namespace, stop  # noqa: F401 (namespace: a fixture)
from test_lan_netns import run_in
from test_migrate import shared_folder  # noqa: F401 (a fixture)

PASSWORD = "clinic-password-1"

pytestmark = pytest.mark.skipif(not COMMAND.exists(), reason="run with `make test` (needs medimage-tx)")


# -- 1. A device with many IPv6 addresses cannot lock the admin out ----------

#: Asks get-session for a sign-in from each source address given; prints
#: the HTTP status of each, one JSON list.
SIGN_IN = r"""
import json, socket, sys
server, port, password = sys.argv[1], int(sys.argv[2]), sys.argv[3]
codes = []
for source in sys.argv[4:]:
    s = socket.socket(socket.AF_INET6)
    s.bind((source, 0))
    s.connect((server, port))
    s.sendall(f"GET /addon/get-session?pass={password} HTTP/1.0\r\nHost: [{server}]:{port}\r\n\r\n".encode())
    answer = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        answer += chunk
    s.close()
    codes.append(int(answer.split(b" ", 2)[1]))
print(json.dumps(codes))
"""


@pytest_twisted.ensureDeferred
async def test_a_device_with_many_ipv6_addresses_cannot_lock_the_admin_out(tmp_path, namespace):
    """
    The sign-in throttle kept the last 25 of its 50 wrong passwords for
    addresses that had not guessed wrong: one IPv6 device (privacy
    addresses: any number of its /64) took a fresh address for each of
    those, reached the total of 50, and the admin on another device got 429
    with the right password for the rest of the 15 minutes (before the fix:
    50 guesses checked, then 429 for the admin).  The kept share now goes
    to clients counted as the connection caps count them (an IPv6 /64):
    the device has the 25 the others may use (5 from each address), and
    the admin signs in.
    """
    server, admin = "fd00:1:2:ff::1", "fd00:1:2:4::1"
    device = [f"fd00:1:2:3::{n:x}" for n in range(1, 31)]
    for address in [server, admin, *device]:
        subprocess.run(["ip", "-n", namespace, "-6", "addr", "add", f"{address}/128", "dev", "lo", "nodad"],
                       check=True, capture_output=True)
    data = tmp_path / "pc"
    write_config(data / "config.json", lanMode=False, basicAuthent=PASSWORD)
    process = run_in(namespace, str(COMMAND), "serve", "--no-lan", "--data", str(data), "--port", "0",
                     "--interface", server)
    try:
        port = await process.port()
        guesses = run_in(namespace, sys.executable, "-c", SIGN_IN, server, str(port), "wrong-guess",
                         *[address for address in device for _ in range(5)])
        assert await guesses.exited(120) == 0, guesses.output
        codes = json.loads(guesses.output.decode().strip().splitlines()[-1])
        sign_in = run_in(namespace, sys.executable, "-c", SIGN_IN, server, str(port), PASSWORD, admin)
        assert await sign_in.exited(60) == 0, sign_in.output
        admin_code = json.loads(sign_in.output.decode().strip().splitlines()[-1])
        print(f"the device's guesses checked: {codes.count(200)} of {len(codes)}; the admin: {admin_code}")
        assert admin_code == [200], admin_code
        assert codes[:25] == [200] * 25 and set(codes[25:]) == {429}, codes  # 200: {"success": false}
    finally:
        await stop(process)


# -- 2. A stale pid file does not stop the server for good -------------------

@pytest.mark.parametrize("left", ["another program", "empty"])
@pytest_twisted.ensureDeferred
async def test_a_stale_pid_file_does_not_stop_the_server(tmp_path, left):
    """
    After a power cut the data folder keeps twistd.pid: empty (cut while
    twistd wrote it), or naming a pid the next boot gave to another program
    (or to the server itself: boots start things in the same order).  The
    server refused to start ("another server (pid N) is running", or
    twistd's "Pidfile ... contains non-numeric value"), and systemd
    restarted it into the same refusal, with no photos received, until
    someone deleted the file.  A pid file naming no live server is stale.
    """
    data = tmp_path / "data"
    write_config(data / "config.json", lanMode=False)
    other = subprocess.Popen(["sleep", "600"])  # alive, and no server
    try:
        (data / "twistd.pid").write_text(str(other.pid) if left == "another program" else "")
        process = spawn([str(COMMAND), "serve", "--data", str(data), "--port", "0", "--no-lan"],
                        str(tmp_path))
        try:
            await process.port()
            assert (data / "twistd.pid").read_text() == str(process.transport.pid)
        finally:
            await stop(process)
    finally:
        other.kill()
        other.wait()


# -- 3. A menu entry in header.html cannot lead the admin off the PC ---------

@pytest_twisted.ensureDeferred
async def test_a_menu_entry_with_a_backslash_does_not_lead_the_admin_to_another_site(tmp_path):
    """
    An install script (or anyone who can write public/) adds
    C{<a href="/\\evil.example/">} to the header's side menu.  It looked
    local (no scheme, no host, starts with /), so the admin pages listed it;
    but a browser reads a backslash as a slash in an http URL, so the menu
    entry led to http://evil.example/ (a page dressed as the PC's to ask
    for the password).  Chromium's own reading of each menu link of the
    admin pages must be this server.
    """
    from browser import in_browser

    data = tmp_path / "pc"
    write_config(data / "config.json", lanMode=False)
    process = spawn([str(COMMAND), "serve", "--no-lan", "--data", str(data), "--port", "0",
                     "--interface", "127.0.0.1"], str(tmp_path))
    try:
        port = await process.port()
        header = data / "public" / "components" / "header.html"
        text = header.read_text()
        entries = ('<li><a href="/\\evil.example/ehr">EHR Log</a></li>'
                   '<li><a href="\\\\evil.example/">Backup</a></li>'
                   '<li><a href="/pages/ehr-log.html">Local log</a></li>')
        header.write_text(text.replace("</ul>", entries + "</ul>", 1))

        def steps(page):
            page.goto(f"http://127.0.0.1:{port}/admin/addons")
            return page.evaluate("Array.from(document.querySelectorAll('header nav a'))"
                                 ".map(a => [a.textContent, a.href])")

        links = await in_browser(steps)
        print(links)
        assert ["Local log", f"http://127.0.0.1:{port}/pages/ehr-log.html"] in links
        assert all(href.startswith(f"http://127.0.0.1:{port}/") for _, href in links), links
    finally:
        await stop(process)


# -- 4. migrate: a link made after the check, in public/ or node_modules/ ----

@pytest.mark.parametrize("where", ["public", "public/pages", "node_modules", "node_modules/leftpad"])
def test_a_page_or_module_link_made_after_the_check_is_not_followed(tmp_path, where):
    """
    migrate runs as root on the original's folder, which its user can
    write.  The check refuses C{public} and C{node_modules} as links, but
    the copy behind it went by path (rglob and copy2, copytree): a folder
    swapped for a link to a root-only folder between the check and the
    copy (the same names) made root copy that folder's files into this
    server's public/, served to the PC's own browser, where any local user
    is the admin.  As for the photos and the add-ons, the second layer is
    given directly what the check stops; nothing behind a link may arrive.
    """
    from medimage_tx.addons.node_modules import bring_addon_needs

    secret = b"root:$6$secret-hash:19000:0:99999:7:::\n"
    hidden = tmp_path / "root-only"  # what the links point at: the same names as the real ones
    for folder in ("pages", "public/pages", "leftpad", "node_modules/leftpad"):
        (hidden / folder).mkdir(parents=True)
    for page in ("pages/shadow.html", "public/pages/shadow.html"):
        (hidden / page).write_bytes(secret)
    for package in ("leftpad", "node_modules/leftpad"):
        (hidden / package / "package.json").write_text('{"name": "leftpad"}')
        (hidden / package / "index.js").write_bytes(secret)
    original = tmp_path / "old"
    (original / "public" / "pages").mkdir(parents=True)
    (original / "public" / "pages" / "ehr.html").write_text("<p>EHR</p>")
    (original / "node_modules" / "leftpad").mkdir(parents=True)
    (original / "node_modules" / "leftpad" / "package.json").write_text('{"name": "leftpad"}')
    (original / "node_modules" / "leftpad" / "index.js").write_text("module.exports = 1;")
    (original / "addons" / "ehr").mkdir(parents=True)
    (original / "addons" / "ehr" / "run.js").write_text("var pad = require('leftpad');\n")
    swapped = original / where
    import shutil

    shutil.rmtree(swapped)
    swapped.symlink_to(hidden / where.split("/", 1)[-1] if "/" in where else hidden)
    parent = tmp_path / "new"
    (parent / "addons" / "ehr").mkdir(parents=True)
    (parent / "addons" / "ehr" / "run.js").write_text("var pad = require('leftpad');\n")

    bring_addon_needs(original, parent)
    arrived = [p for p in parent.rglob("*") if p.is_file() and p.read_bytes() == secret]
    assert arrived == [], arrived
    if not where.startswith("public"):
        assert (parent / "public" / "pages" / "ehr.html").read_text() == "<p>EHR</p>"
    else:
        assert (parent / "node_modules" / "leftpad" / "index.js").read_text() == "module.exports = 1;"


# -- 5. migrate as root: this server's own public/ as a link -----------------

@pytest.mark.skipif(os.geteuid() != 0, reason="migrate's root path: needs root")
@pytest.mark.parametrize("where", ["public", "node_modules"])
def test_migrate_as_root_neither_writes_nor_hands_over_through_a_link_in_the_service_folder(shared_folder, where):
    """
    The service's data folder is its user's: that user (a hostile add-on
    runs as it) can make C{public} or C{node_modules} there a link to a
    root-only folder.  Root's migrate then copied the original's pages (or
    modules) into that folder, and handed everything in it to the service
    user (os.walk follows the top link; lchown only spares the last part):
    the service user came to own a root-only folder's files.  Now migrate
    stops with one line naming the link, before it changes anything, and
    handing a tree over never goes through a link.
    """
    from medimage_tx.pc.migration import MigrationError, migrate
    from medimage_tx.pc.service_user import ServiceUser

    tmp_path = shared_folder  # the service user must reach its folder
    owner = ServiceUser(54321, 54321, "test")
    root_only = tmp_path / "root-only"
    root_only.mkdir(mode=0o700)
    (root_only / "shadow").write_text("root:$6$secret-hash:19000::::::\n")
    original = tmp_path / "old"
    (original / "photos").mkdir(parents=True)
    (original / "public" / "pages").mkdir(parents=True)
    (original / "public" / "pages" / "ehr.html").write_text("<p>EHR</p>")
    (original / "node_modules" / "leftpad").mkdir(parents=True)
    (original / "node_modules" / "leftpad" / "package.json").write_text('{"name": "leftpad"}')
    (original / "addons" / "ehr").mkdir(parents=True)
    (original / "addons" / "ehr" / "run.js").write_text("var pad = require('leftpad');\n")
    (original / "config.json").write_text(json.dumps({"globalId": "", "lockDown": False}))
    data = tmp_path / "new"
    data.mkdir()
    os.chown(data, owner.uid, owner.gid)
    (data / where).symlink_to(root_only)
    os.lchown(data / where, owner.uid, owner.gid)

    with pytest.raises(MigrationError) as refused:
        migrate(original, data / "config.json", data, owner=owner)
    print(refused.value)
    assert str(data / where) in str(refused.value) and "link" in str(refused.value)
    assert sorted(p.name for p in root_only.iterdir()) == ["shadow"]
    assert [p.stat().st_uid for p in [root_only, *root_only.iterdir()]] == [0, 0]
    assert not (data / "config.json").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown: needs root")
def test_handing_a_tree_over_never_goes_through_a_link(tmp_path):
    """
    L{give_tree}, the second layer (a link made after migrate's check):
    the top itself, or a folder below it, as a link to a root-only folder.
    """
    from medimage_tx.pc.service_user import ServiceUser, give_tree

    owner = ServiceUser(54321, 54321, "test")
    root_only = tmp_path / "root-only"
    (root_only / "inner").mkdir(parents=True)
    (root_only / "inner" / "shadow").write_text("secret")
    mine = tmp_path / "mine"
    (mine / "pages").mkdir(parents=True)
    (mine / "pages" / "a.html").write_text("a")
    (mine / "pages" / "linked").symlink_to(root_only / "inner")
    top_link = tmp_path / "top-link"
    top_link.symlink_to(root_only)

    give_tree(owner, mine)
    give_tree(owner, top_link)
    assert [p.stat().st_uid for p in [root_only, root_only / "inner", root_only / "inner" / "shadow"]] == [0, 0, 0]
    assert (mine / "pages" / "a.html").stat().st_uid == owner.uid
    assert os.lstat(mine / "pages" / "linked").st_uid == owner.uid
    assert os.lstat(top_link).st_uid == owner.uid
