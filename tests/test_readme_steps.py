"""
The README's steps, followed as written on a fresh clone: set up and first
start (`make run`), set backupTo, put the commands on PATH, pair with
`medimage-tx pair`, and a phone's photo arrives through the relay.

Runs in a network namespace of its own with only loopback (the server
starts with LAN mode on, as the README's first start does, and must not
advertise on this machine's network).  Two honest deviations, both because
the namespace has no route out: `.venv` is built (`make .venv/installed`,
what `make run` does first) before entering it, and pairing names our
relay's own code service (`--custom-pairing`, from the README's pairing
section) instead of AtomJump's.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
import pytest_twisted

from conftest import eventually, jpeg_bytes
from processes import WatchedProcess, spawn

REPO = Path(__file__).parent.parent
README = (REPO / "README.md").read_text()
RELAY = "http://127.0.0.1:5567"


def needs(command: str) -> None:
    assert command in README, f"the README no longer says: {command}"


def namespace_or_skip() -> str:
    reason = ""
    if os.geteuid() != 0:
        reason = "needs root for a network namespace"
    elif shutil.which("ip") is None or shutil.which("git") is None or shutil.which("make") is None:
        reason = "needs ip, git and make"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"the README steps must run in CI: {reason}")
        pytest.skip(reason)
    name = "mtxreadme" + secrets.token_hex(2)
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True)
    return name


@pytest.fixture
def namespace():
    name = namespace_or_skip()
    try:
        yield name
    finally:
        # Every process in the namespace is this test's: none outlives it.
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def run_in(namespace: str, folder: Path, script: str, home: Path) -> WatchedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HOME"] = str(home)
    return spawn([shutil.which("ip"), "netns", "exec", namespace, "bash", "-euc", script], str(folder), env=env)


@pytest_twisted.ensureDeferred
async def test_readme_install_first_start_and_pairing(tmp_path, namespace, http_client):
    home, clinic = tmp_path / "home", tmp_path / "clinic"
    home.mkdir()
    clinic.mkdir()
    checkout = tmp_path / "medimage-tx"
    needs("git clone <this repository> medimage-tx")
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(checkout)], check=True, timeout=300)
    built = subprocess.run(["make", ".venv/installed"], cwd=checkout, capture_output=True, text=True, timeout=1200)
    assert built.returncode == 0, built.stderr[-3000:]

    # First start: `make run`, on the embedded defaults.
    needs("    make run\n")
    server = run_in(namespace, checkout, "make run", home)
    # With LAN mode on (the default), on every IPv4 address, as the README's line says.
    await server.wait_for(rb"listening on port 5566 \(http, 0\.0\.0\.0\)")
    await server.wait_for(re.escape(f"photos arrive in {home / 'MedImage' / 'photos'}").encode())
    await server.wait_for(rb"Start-up check done")
    config_path = home / "MedImage" / "config.json"
    # "In Settings there (or `backupTo` in `config.json`), give the folder the
    # practice software reads".
    needs("give the folder the practice software reads")
    config = json.loads(config_path.read_text())
    config["backupTo"] = [clinic.as_posix()]
    config_path.write_text(json.dumps(config, indent=2))
    await server.wait_for(rb"config.json changed: applied now: backupTo")

    # A relay, as "Which relay" says: this program with allowPhotosLeaving.
    needs('"allowPhotosLeaving": true')
    relay_data = tmp_path / "relay"
    relay_data.mkdir()
    (relay_data / "config.json").write_text(json.dumps({"allowPhotosLeaving": True}))
    # Started with the README's extra server options: `make run ARGS="..."`.
    needs('make run ARGS="--port 5567 --data /srv/medimage2"')
    relay = run_in(namespace, checkout, f'make run ARGS="--port 5567 --data {relay_data} --discovery-port 5568"',
                   home)
    await relay.wait_for(rb"listening on port 5567")

    # Pair: `medimage-tx pair --relay ...` with the commands on PATH.
    needs('export PATH="$PWD/.venv/bin:$PATH"')
    needs("medimage-tx pair --relay")
    pairing = run_in(namespace, checkout, f'export PATH="$PWD/.venv/bin:$PATH"\n'
                     f"medimage-tx pair --relay {RELAY} --custom-pairing {RELAY}/med-genid.php", home)
    assert await pairing.exited(120) == 0, pairing.output.decode()
    code = re.search(rb"Pairing code: (\w+)", pairing.output).group(1).decode()

    # The phone redeems the code, then sends a photo through the relay.
    phone = run_in(namespace, checkout, f'export PATH="$PWD/.venv/bin:$PATH"\n'
                   f"python -c \"import urllib.request; print(urllib.request.urlopen("
                   f"'{RELAY}/med-genid.php?compare={code}').read().decode())\"", home)
    assert await phone.exited(60) == 0, phone.output.decode()
    write_url = phone.output.decode().strip().splitlines()[-1]
    paired_id = write_url.rsplit("/", 1)[1]
    assert write_url == f"{RELAY}/write/{paired_id}"
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(jpeg_bytes(300_000))
    (tmp_path / "phone.json").write_text(json.dumps({"id": paired_id, "relay": RELAY}))
    sent = run_in(namespace, checkout, f'export PATH="$PWD/.venv/bin:$PATH"\n'
                  f"medimage-tx send {photo} --id '#moles John123' --paired {tmp_path / 'phone.json'}", home)
    assert await sent.exited(120) == 0, sent.output.decode()
    assert f"Sending to the relay: {RELAY}".encode() in sent.output

    def arrived() -> list[Path]:
        folder = clinic / "moles"
        return list(folder.iterdir()) if folder.is_dir() else []

    await eventually(arrived, "the photo in the clinic's folder, through the relay", seconds=60)
    [stored] = arrived()
    assert stored.name.startswith("John123") and stored.read_bytes() == photo.read_bytes()
