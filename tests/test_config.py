"""
config.json: the original's files read unchanged, one clear line per problem,
atomic writes that keep unknown keys.
"""

from __future__ import annotations

import json

import pytest

from medimage_tx.config import (
    ConfigError,
    load_config,
    load_or_create_config,
    native_path,
    redact_url,
    save_config,
)

ORIGINAL = {
    "listenPort": 5566,
    "backupTo": ["C:/MedImage/photos-backup", "//server/share/photos"],
    "keepMaster": True,
    "readProxy": "https://medimage-nz1.atomjump.com/read/bS6FpXvwagUbeMIXnM",
    "globalId": "bS6FpXvwagUbeMIXnM",
    "transfer": 45652482,
    "allowPhotosLeaving": False,
    "allowGettingRemotePhotos": True,
    "webProxy": "",
    "lockDown": False,
    "basicAuthent": "changeme",
    "countryCode": "NZ",
    "proxy": "https://atomjump.com/med-genid.php",
    "style": "https://medimage.co.nz/addon/style.css",
    "version": "1.8.3",
    "addons": ["medtech32"],
}


def test_reads_original_config_and_keeps_unknown_keys(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(ORIGINAL, indent=2))
    config = load_config(path)
    assert config.globalId == "bS6FpXvwagUbeMIXnM"
    assert config.backupTo == ("C:/MedImage/photos-backup", "//server/share/photos")
    assert config.maxUploadSize == 16 * 1024 * 1024
    save_config(config, transfer=45652500)
    saved = json.loads(path.read_text())
    assert saved["transfer"] == 45652500
    assert saved["addons"] == ["medtech32"] and saved["version"] == "1.8.3"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temp left


@pytest.mark.parametrize("text, expected", [
    ('{"listenPort": "abc"}', "key 'listenPort': expected a port number"),
    ('{"listenPort": 5566,}', "invalid JSON at line 1"),
    ('{"backupTo": "C:/x"}', "key 'backupTo': expected a list of strings"),
    ('{"keepMaster": "yes"}', "key 'keepMaster': expected true or false"),
    ('{"maxUploadSize": 0}', "key 'maxUploadSize'"),
    ('{"allowedTypes": [{"extension": ".pdf"}]}', "key 'allowedTypes'"),
    ('{"allowedChars": "a-"}', None),
    ('{"allowedChars": "z-a"}', "key 'allowedChars'"),
    ('{"httpsKey": "missing/key.pem", "httpsCert": "c.pem"}', "key 'httpsKey': cannot read 'missing/key.pem'"),
    ('{"httpsKey": "missing/key.pem"}', "key 'httpsCert': HTTPS needs both"),
    ('[1, 2]', "expected a JSON object"),
])
def test_bad_config_is_one_clear_line(tmp_path, text, expected):
    path = tmp_path / "config.json"
    path.write_text(text)
    if expected is None:
        load_config(path)
        return
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert str(path) in message and expected in message and "\n" not in message


def test_missing_config_is_created_with_defaults(tmp_path):
    config, created = load_or_create_config(tmp_path / "new" / "config.json")
    assert created and config.listenPort == 5566 and config.keepMaster is True
    config, created = load_or_create_config(tmp_path / "new" / "config.json")
    assert not created


def test_native_paths():
    assert native_path("C:/MedImage/photos", "nt") == "C:\\MedImage\\photos"
    assert native_path("//server/share/x", "nt") == "\\\\server\\share\\x"
    assert native_path("\\\\server\\share", "posix") == "//server/share"
    assert native_path("/srv/photos", "posix") == "/srv/photos"


def test_passwords_are_redacted():
    assert redact_url("http://user:secret@proxy:3128") == "http://user:***@proxy:3128"


def test_native_paths_edges():
    assert native_path(" D: ", "nt") == "D:\\"  # a bare drive means its root
    assert native_path("d:", "nt") == "d:\\"
    assert native_path("D:/x", "nt") == "D:\\x"
    assert native_path("///server//share", "posix") == "//server//share"
    assert native_path(" relative/x ", "posix") == "relative/x"


def test_half_https_names_the_missing_key(tmp_path):
    from medimage_tx.config import parse_config

    for given, missing in (({"httpsKey": "k.pem"}, "httpsCert"), ({"httpsCert": "c.pem"}, "httpsKey")):
        with pytest.raises(ConfigError) as refused:
            parse_config(given, tmp_path / "config.json")
        assert f"key {missing!r}: HTTPS needs both httpsKey and httpsCert" in str(refused.value)


def test_server_name_defaults_to_the_host_name(tmp_path):
    import socket

    from medimage_tx.config import parse_config

    assert parse_config({}, tmp_path / "config.json").serverName == (socket.gethostname() or "MedImage")
    assert parse_config({"serverName": "Reception"}, tmp_path / "config.json").serverName == "Reception"


@pytest.mark.parametrize("proxy, good", [
    ("", True), ("http://user:pw@proxy.clinic:3128", True), ("https://proxy:8080/", True),
    ("HTTP://proxy:3128", False), ("proxy:3128", False), ("http://proxy:3128/path", False), ("http://a b", False),
])
def test_web_proxy_must_be_a_plain_proxy_address(tmp_path, proxy, good):
    from medimage_tx.config import parse_config

    if good:
        assert parse_config({"webProxy": proxy}, tmp_path / "config.json").webProxy == proxy
    else:
        with pytest.raises(ConfigError, match="expected http://user:password@host:port"):
            parse_config({"webProxy": proxy}, tmp_path / "config.json")


def test_json_is_written_beside_the_file_and_leaves_no_temporary(tmp_path):
    from medimage_tx.config import write_json_atomically

    path = tmp_path / "config.json"
    write_json_atomically(path, {"é": 1})
    assert path.read_text(encoding="utf-8") == '{\n    "\\u00e9": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_rewriting_keeps_the_files_owner(tmp_path):
    """
    Root pairing the service's config.json (README, Start at boot) leaves
    it owned by the service user, who must still read it.
    """
    import os

    from medimage_tx.config import write_json_atomically

    if os.geteuid() != 0:
        pytest.fail("this test needs root (as the whole suite does)")
    path = tmp_path / "config.json"
    path.write_text("{}\n", encoding="utf-8")
    os.chown(path, 65534, 65534)
    write_json_atomically(path, {"globalId": "x"})
    assert (path.stat().st_uid, path.stat().st_gid) == (65534, 65534)
    assert json.loads(path.read_text(encoding="utf-8")) == {"globalId": "x"}
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("headers", [
    {"X-A": "a\nSet-Cookie: b"}, {"X-A": "a\rb"}, {"X A": "b"}, {"X-A": 5}, {5: "b"}, ["X-A"],
])
def test_headers_that_could_inject_are_refused(tmp_path, headers):
    from medimage_tx.config import parse_config

    with pytest.raises(ConfigError, match="key 'headers'"):
        parse_config({"headers": headers}, tmp_path / "config.json")


@pytest.mark.parametrize("port, good", [(0, True), (65535, True), (65536, False), (-1, False), (True, False)])
def test_port_range(tmp_path, port, good):
    from medimage_tx.config import parse_config

    if good:
        assert parse_config({"listenPort": port}, tmp_path / "config.json").listenPort == port
    else:
        with pytest.raises(ConfigError, match="expected a port number from 0 to 65535"):
            parse_config({"listenPort": port}, tmp_path / "config.json")


def test_likely_typos_are_known_keys_in_another_case_or_a_letter_off():
    from medimage_tx.config import likely_typos

    raw = {"backupto": [], "KeepMaster": False, "basicAuthnet": "x", "listenPort": 5566,
           "purpose": "the original's comment", "customPairing": "", "someFutureKey": 1, "addonSetting": 2}
    assert likely_typos(raw) == [("backupto", "backupTo"), ("KeepMaster", "keepMaster"),
                                 ("basicAuthnet", "basicAuthent")]


@pytest.mark.parametrize("key, value", [
    ("requestRatePerAddress", 0), ("requestRatePerAddress", -5), ("requestRatePerAddress", "20"),
    ("requestRatePerAddress", True), ("requestBurstPerAddress", 0.5), ("requestBurstPerAddress", "lots"),
    ("requestBurstPerAddress", False),
])
def test_a_bad_request_budget_is_one_clear_line(tmp_path, key, value):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({key: value}))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert f"{path}: key {key!r}: expected " in message and repr(value) in message and "\n" not in message


def test_the_request_budget_defaults_are_20_a_second_and_100_at_once(tmp_path):
    # docs/security.md and README's config table: 20 a second, bursts of 100.
    path = tmp_path / "config.json"
    path.write_text("{}")
    config = load_config(path)
    assert (config.requestRatePerAddress, config.requestBurstPerAddress) == (20, 100)
    from medimage_tx.web.request_budget import PER_ADDRESS_BURST, PER_ADDRESS_RATE

    assert (PER_ADDRESS_RATE, PER_ADDRESS_BURST) == (20, 100)  # the budget's own defaults agree
    path.write_text(json.dumps({"requestRatePerAddress": 0.5, "requestBurstPerAddress": 3}))
    config = load_config(path)
    assert (config.requestRatePerAddress, config.requestBurstPerAddress) == (0.5, 3)
