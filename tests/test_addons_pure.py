"""
The plain-Python parts of add-ons: command lines, what scripts print,
the registry, zips (issue 13).
"""

from __future__ import annotations

import io
import json
import subprocess
import zipfile

import pytest
from hypothesis import given, settings, strategies as st

from medimage_tx.addons.command import NODE_LOADER, CannotRun, build_command, substitute
from medimage_tx.addons.installer import InstallError, platform_name, unpack
from medimage_tx.addons.output import parse_output, parse_query
from medimage_tx.addons.registry import Registry
from medimage_tx.addons.web import encode_uri_component, fill_page, script_param

WHICH = {"node": "/usr/bin/node", "sh": "/bin/sh", "magick": "/usr/bin/magick", "nice": "/usr/bin/nice"}.get
VALUES = {"parentdir": "/srv/Med Image", "param1": "/srv/Med Image/photos/P 1/x.jpg",
          "param2": "undefined", "param3": "undefined"}


def test_priorities_build_the_processes_the_original_runs():
    medium = build_command("node parentdir/addons/w/size.js param1", "medium", VALUES, which=WHICH)
    assert medium.argv == ("/usr/bin/node", "/srv/Med Image/addons/w/size.js",
                           "/srv/Med Image/photos/P 1/x.jpg")  # a value with spaces stays one argument
    assert not medium.low_priority
    glacial = build_command("magick param1 -resize 50% param1.small.jpg", "glacial", VALUES, which=WHICH,
                            os_name="posix")
    assert glacial.argv[:4] == ("/usr/bin/nice", "-n", "10", "/usr/bin/magick")
    assert glacial.argv[-1] == "/srv/Med Image/photos/P 1/x.jpg.small.jpg"
    windows = build_command("magick param1", "glacial", VALUES, which=WHICH, os_name="nt")
    assert windows.low_priority and windows.argv[0] == "/usr/bin/magick"
    high = build_command("node parentdir/addons/s/session.js param1", "high", VALUES, which=WHICH)
    assert high.argv[:3] == ("/usr/bin/node", "-e", NODE_LOADER)
    for priority in ("low", None, "unknown"):  # the original's default is the shell
        shell = build_command("node parentdir/addons/x.js param1 | tee out", priority, VALUES,
                              which=WHICH, os_name="posix")
        assert shell.argv[:2] == ("/bin/sh", "-c")
        assert shell.argv[2] == ("/usr/bin/node '/srv/Med Image'/addons/x.js "
                                 "'/srv/Med Image/photos/P 1/x.jpg' | tee out")
    with pytest.raises(CannotRun, match="not installed"):
        build_command("nosuchprogram param1", "medium", VALUES, which=WHICH)
    with pytest.raises(CannotRun):
        build_command("   ", "medium", VALUES, which=WHICH)


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=40))
def test_a_value_is_never_shell_syntax(value):
    command = build_command("printf %s param1", "low", {"param1": value}, which=WHICH, os_name="posix")
    out = subprocess.run(list(command.argv), capture_output=True, timeout=10).stdout
    assert out == value.encode("utf-8", "surrogateescape")


@given(st.text(max_size=30))
def test_substitution_is_one_pass(value):
    assert substitute("a param1 b param2", {"param1": value, "param2": "Z"}) == f"a {value} b Z"


def test_output_markers_as_the_original_reads_them():
    out = parse_output("working\nbackupFiles:/p/a.jpg;/p/b.txt \nmore\nbackupFiles:/p/c.jpg\n"
                       "backupFileRenamed:/p/new.jpg\nreloadConfig:true\n"
                       "returnParams:?NAME=Jo+Smith&X=%2Fa&NAME2=\n")
    assert out.backup_files == ["/p/c.jpg"]  # the last one counts
    assert out.renamed == "/p/new.jpg" and out.reload_config
    assert out.return_params == {"NAME": "Jo Smith", "X": "/a", "NAME2": ""}
    assert parse_output("returnPhotoFile:../../photos/a.jpg\n").return_photo_file == "../../photos/a.jpg"
    nothing = parse_output("all fine\n")
    assert (nothing.backup_files, nothing.renamed, nothing.reload_config, nothing.return_params) == \
        ([], None, False, None)
    assert parse_query("a=1&a=2&%zz=3") == {"a": "1,2", "%zz": "3"}


def test_url_param_and_page_filling():
    assert encode_uri_component("a b/c?d=é!'()*~") == "a%20b%2Fc%3Fd%3D%C3%A9!'()*~"
    assert script_param("grab-colour?photo=%23NHI%20a.jpg", "grab-colour") == "photo%3D%23NHI%20a.jpg"
    assert script_param("grab-colour/file.jpg", "grab-colour") == "grab-colour%2Ffile.jpg"
    assert fill_page("A and B and A", {"A": "1", "B": "two"}) == "1 and two and 1"


def test_registry_reads_edits_and_keeps_the_last_good_entries(tmp_path):
    path = tmp_path / "addons" / "config.json"
    registry = Registry(path)
    assert registry.ensure_exists() and not registry.ensure_exists()
    assert registry.active("photoWritten") == []
    path.write_text(json.dumps({"events": {"photoWritten": [
        {"addon": "a", "runProcess": "x param1", "active": True, "timeoutSeconds": 5, "mine": 1},
        {"addon": "b", "runProcess": "y", "active": False}, "junk"]}, "displayMenu": []}))
    [active] = registry.active("photoWritten")
    assert (active.addon, active.timeout) == ("a", 5.0)
    path.write_text("{ not json")
    assert [e.addon for e in registry.active("photoWritten")] == ["a"]
    path.write_text(json.dumps({"events": {"photoWritten": [
        {"addon": "a", "runProcess": "x param1", "active": True, "timeoutSeconds": 5, "mine": 1}]},
        "displayMenu": []}))
    registry.add({"urlRequest": [{"addon": "c", "scriptURLName": "c", "runProcess": "z", "active": True}]})
    registry.add({"urlRequest": [{"addon": "c", "scriptURLName": "c", "runProcess": "z", "active": True}]})
    raw = json.loads(path.read_text())
    assert raw["displayMenu"] == [] and raw["events"]["photoWritten"][0]["mine"] == 1  # kept
    assert len(raw["events"]["urlRequest"]) == 1 and registry.url_entry("c").run_process == "z"


def zip_of(files: dict) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            if isinstance(data, zipfile.ZipInfo):
                archive.writestr(data, "target")
            else:
                archive.writestr(name, data)
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize("name", ["../evil.sh", "/etc/evil", "a/../../evil", "C:/evil", "a\\..\\evil"])
def test_zips_that_reach_outside_are_refused(tmp_path, name):
    path = tmp_path / "bad.zip"
    path.write_bytes(zip_of({name: "x"}).getvalue())
    with pytest.raises(InstallError, match="outside"):
        unpack(path, tmp_path / "into")
    assert not (tmp_path / "into").exists() and not (tmp_path / "evil.sh").exists()


def test_links_in_zips_are_refused_and_the_folder_is_found_two_deep(tmp_path):
    link = zipfile.ZipInfo("a/link")
    link.external_attr = (0o120777 << 16)
    path = tmp_path / "link.zip"
    path.write_bytes(zip_of({"a/link": link}).getvalue())
    with pytest.raises(InstallError, match="link"):
        unpack(path, tmp_path / "into")
    path.write_bytes(zip_of({"outer/inner/medimage-installer.json": "{}", "outer/inner/x": "y"}).getvalue())
    assert unpack(path, tmp_path / "into2") == tmp_path / "into2" / "outer" / "inner"
    assert platform_name("Linux") == "unix" and platform_name("Windows", "AMD64") == "win64"


# The standard pages (issue 20)

ORIGINAL_SHAPED_HEADER = """<!DOCTYPE html><html><body><nav>
<a class="navbar-brand" href="../index.html">MedImage Server</a>
<ul class="nav" id="side-menu">
  <li><a href="http://medimage.co.nz/guide.php#privacy"><i class="fa fa-eye fa-fw"></i> Privacy</a></li>
  <li id='settings'><a href='/pages/addon-settings.html'><i class='fa fa-gear fa-fw'></i> Settings</a></li>
  <li><a href="#"><i class="fa fa-list"></i> Logs<span class="fa arrow"></span></a>
      <ul class="nav nav-second-level"><li><a href="/addon/ehr-log">EHR &amp; Log</a></li></ul></li>
  <li><a href="javascript:alert(1)">Run</a></li>
</ul>
<ul><li><a href="/addon/outside">Outside the menu</a></li></ul>
</nav>"""


def test_side_menu_links_of_an_original_shaped_header():
    from medimage_tx.addons.public import local_link, side_menu

    links = side_menu(ORIGINAL_SHAPED_HEADER)
    assert links == [("http://medimage.co.nz/guide.php#privacy", "Privacy"),
                     ("/pages/addon-settings.html", "Settings"), ("#", "Logs"),
                     ("/addon/ehr-log", "EHR & Log"), ("javascript:alert(1)", "Run")]
    assert [local_link(href) for href, _ in links] == [None, "/pages/addon-settings.html", None,
                                                       "/addon/ehr-log", None]
    # Relative links as the header's pages (under /pages/) see them.
    assert local_link("../index.html") == "/" and local_link("view-log.html") == "/pages/view-log.html"
    for foreign in ("//evil.example/x", "https://evil.example/", "data:text/html,x", " "):
        assert local_link(foreign) is None, foreign


def test_public_files_stay_in_public(tmp_path):
    from medimage_tx.addons.public import public_file

    public = tmp_path / "public"
    (public / "css").mkdir(parents=True)
    (public / "css" / "a.css").write_text("a")
    (tmp_path / "config.json").write_text("{}")
    (public / "css" / "out.css").symlink_to(tmp_path / "config.json")
    assert public_file(public, [b"css", b"a.css"]) == (public / "css" / "a.css").resolve()
    for segments in ([b"css", b"..", b"..", b"config.json"], [b"..", b"config.json"], [b"css", b"out.css"],
                     [b"css", b"../../config.json"], [b"css"], [b"css", b""], [b"css", b"\xff"], []):
        assert public_file(public, segments) is None, segments


def test_standard_files_are_written_once_and_never_over_an_edited_one(tmp_path):
    from medimage_tx.addons.public import ensure_standard_files, side_menu

    written = ensure_standard_files(tmp_path)
    assert set(written) >= {"public/components/header.html", "public/pages/addon-settings.html",
                            "public/pages/snippet.html", "public/js/session-client.js",
                            "addons/basic-authentication/session.js"}
    header = tmp_path / "public" / "components" / "header.html"
    assert ("/admin/pair", "Pair phones") in side_menu(header.read_text())
    assert (tmp_path / "public" / "pages" / "snippet.html").read_text() == "CUSTOMJSON"
    header.write_text("the clinic's own")
    (tmp_path / "public" / "pages" / "snippet.html").unlink()
    assert ensure_standard_files(tmp_path) == ["public/pages/snippet.html"]
    assert header.read_text() == "the clinic's own"


def test_add_on_scripts_learn_only_live_sessions_and_only_as_hashes():
    import hashlib

    from medimage_tx.admin.sessions import IDLE_SECONDS, SessionStore

    now = [1000.0]
    password = ["clinic-password-2026"]
    store = SessionStore(lambda: password[0], lambda: now[0])
    first = store.login(password[0], "127.0.0.1")
    now[0] += IDLE_SECONDS / 2
    second = store.login(password[0], "127.0.0.1")
    digest = {s: hashlib.sha256(s.encode()).hexdigest() for s in (first, second)}
    assert store.live_digests() == [digest[first], digest[second]]
    assert first not in ",".join(store.live_digests())
    now[0] += IDLE_SECONDS / 2  # the first has been idle too long; asking keeps nothing alive
    assert store.live_digests() == [digest[second]]
    assert store.live_digests() == [digest[second]]
    password[0] = "a-new-password-2026"  # a changed password ends every session
    assert store.live_digests() == []
