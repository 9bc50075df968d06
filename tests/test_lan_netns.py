"""
LAN discovery on a real virtual LAN: network namespaces joined by a bridge,
two clinic PCs and a phone, addresses from 198.51.100.0/24 and no route out.
Real `twistd medimage` processes in the PC namespaces; the phone runs
`python -m medimage_tx discover|send` in its own.

Needs root and `ip netns`; skipped with the reason elsewhere, but never in
CI (CI=true), where a skip would hide a broken feature.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted

from conftest import jpeg_bytes
from processes import WatchedProcess, spawn
from medimage_tx.identity import fingerprint

REPO = Path(__file__).parent.parent
TWISTD = Path(sys.executable).parent / "twistd"
ID_A, ID_B = "PairedWithPcA00001", "PairedWithPcB00002"
HOSTS = {"pcA": "198.51.100.11", "pcB": "198.51.100.12", "phone": "198.51.100.20"}


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class VirtualLan:
    """
    A switch namespace with a bridge, and one namespace per host with a
    veth "lan0" plugged into it.
    """

    def __init__(self):
        self.prefix = "mtx" + secrets.token_hex(2)
        self.namespaces: list[str] = []

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def build(self) -> None:
        switch = self.ns("sw")
        ip("netns", "add", switch)
        self.namespaces.append(switch)
        ip("-n", switch, "link", "add", "br0", "type", "bridge")
        ip("-n", switch, "link", "set", "br0", "up")
        for index, (host, address) in enumerate(HOSTS.items()):
            namespace = self.ns(host)
            ip("netns", "add", namespace)
            self.namespaces.append(namespace)
            host_end, switch_end = f"{self.prefix}h{index}", f"{self.prefix}s{index}"
            ip("link", "add", host_end, "type", "veth", "peer", "name", switch_end)
            ip("link", "set", host_end, "netns", namespace)
            ip("link", "set", switch_end, "netns", switch)
            ip("-n", switch, "link", "set", switch_end, "master", "br0", "up")
            ip("-n", namespace, "link", "set", host_end, "name", "lan0")
            ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "lan0")
            ip("-n", namespace, "link", "set", "lan0", "up")
            ip("-n", namespace, "link", "set", "lo", "up")

    def remove(self) -> None:
        for namespace in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        self.namespaces.clear()


def cannot_build_lan() -> str:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    probe = "mtxprobe" + secrets.token_hex(2)
    result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if result.returncode != 0:
        return f"cannot create network namespaces: {result.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ""


@pytest.fixture(scope="module")
def lan():
    reason = cannot_build_lan()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"LAN tests must run in CI: {reason}")
        print(f"skipping LAN tests: {reason}")
        pytest.skip(reason)
    network = VirtualLan()
    try:
        network.build()
        yield network
    finally:
        network.remove()  # always, even when a test failed
        leftovers = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert network.prefix not in leftovers


def run_in(namespace: str, *argv: str) -> WatchedProcess:
    return spawn([shutil.which("ip"), "netns", "exec", namespace, *argv], str(REPO), env=dict(os.environ))


async def start_pc(lan: VirtualLan, tmp_path: Path, host: str, paired_id: str, *extra: str) -> tuple[WatchedProcess, Path]:
    data = tmp_path / host
    target = data / "clinic"
    target.mkdir(parents=True, exist_ok=True)
    (data / "config.json").write_text(json.dumps({
        "globalId": paired_id, "serverName": f"Clinic {host}", "backupTo": [str(target)],
    }))
    process = run_in(lan.ns(host), str(TWISTD), "--nodaemon", "--pidfile=", "medimage",
                     "--data", str(data), *extra)
    await process.wait_for(rb"listening on port 5566")
    if "--no-lan" not in extra:
        await process.wait_for(rb"advertised as .* on 198\.51\.100\.")
    return process, target


async def stop(process: WatchedProcess) -> None:
    if not process.ended.called:
        process.transport.signalProcess(signal.SIGTERM)
    await process.ended


async def phone(lan: VirtualLan, *argv: str) -> tuple[int, str]:
    process = run_in(lan.ns("phone"), sys.executable, "-m", "medimage_tx", *argv)
    code = await process.ended
    return code, process.output.decode(errors="replace")


async def discover(lan: VirtualLan) -> list[dict]:
    code, output = await phone(lan, "discover", "--timeout", "3", "--json")
    assert code == 0, output
    return json.loads(output.strip().splitlines()[-1])


async def phone_http_get(lan: VirtualLan, url: str) -> str:
    process = run_in(lan.ns("phone"), sys.executable, "-c",
                     "import sys, urllib.request\n"
                     "try:\n"
                     f"    print(urllib.request.urlopen({url!r}, timeout=3).status)\n"
                     "except Exception as e:\n"
                     "    print('unreachable', type(e).__name__)")
    await process.ended
    return process.output.decode().strip()


@pytest_twisted.ensureDeferred
async def test_phone_finds_both_pcs_and_sends_to_its_own(lan, tmp_path):
    pc_a, target_a = await start_pc(lan, tmp_path, "pcA", ID_A)
    pc_b, target_b = await start_pc(lan, tmp_path, "pcB", ID_B)
    try:
        found = await discover(lan)
        by_url = {entry["url"]: entry for entry in found}
        assert set(by_url) == {"http://198.51.100.11:5566", "http://198.51.100.12:5566"}
        assert by_url["http://198.51.100.11:5566"]["fp"] == fingerprint(ID_A)
        assert by_url["http://198.51.100.12:5566"]["fp"] == fingerprint(ID_B)
        for entry in found:
            assert entry["how"] == ["mdns", "udp"]  # a broadcast probe and an mDNS browse both found it
            assert await phone_http_get(lan, entry["url"] + "/") == "200"
        assert ID_A not in json.dumps(found) and ID_B not in json.dumps(found)

        photo = tmp_path / "photo.jpg"
        photo.write_bytes(jpeg_bytes(300_000))
        pairing = tmp_path / "phone-pairing.json"
        pairing.write_text(json.dumps({"id": ID_B, "relay": "http://198.51.100.99:5566"}))
        code, output = await phone(lan, "send", str(photo), "--id", "#moles John123", "--paired", str(pairing))
        assert code == 0, output
        assert "the paired PC on the LAN: http://198.51.100.12:5566" in output
        [stored] = list((target_b / "moles").iterdir())
        assert stored.read_bytes() == photo.read_bytes()
        assert not (target_a / "moles").exists()  # never to the other PC
    finally:
        await stop(pc_a)
        await stop(pc_b)
    shutdown = re.search(rb"LAN discovery stopped \(mDNS goodbye sent\) in (\d+) ms", pc_a.output)
    assert shutdown and int(shutdown.group(1)) < 2000


@pytest_twisted.ensureDeferred
async def test_no_lan_pc_is_invisible_and_unreachable(lan, tmp_path):
    pc_a, _ = await start_pc(lan, tmp_path, "pcA", ID_A)
    pc_b, _ = await start_pc(lan, tmp_path, "pcB", ID_B, "--no-lan")
    try:
        assert b"LAN mode is off" in pc_b.output
        found = await discover(lan)
        assert [entry["url"] for entry in found] == ["http://198.51.100.11:5566"]
        assert (await phone_http_get(lan, "http://198.51.100.12:5566/")).startswith("unreachable")
    finally:
        await stop(pc_a)
        await stop(pc_b)


@pytest_twisted.ensureDeferred
async def test_address_change_is_re_announced(lan, tmp_path):
    pc_a, _ = await start_pc(lan, tmp_path, "pcA", ID_A)
    try:
        namespace = lan.ns("pcA")
        # As a DHCP renewal with a new lease does: the old address goes, a new one comes.
        ip("-n", namespace, "addr", "del", "198.51.100.11/24", "dev", "lan0")
        ip("-n", namespace, "addr", "add", "198.51.100.31/24", "dev", "lan0")
        await pc_a.wait_for(rb"advertised as .* on 198\.51\.100\.31")
        found = await discover(lan)
        assert [entry["url"] for entry in found] == ["http://198.51.100.31:5566"]
        assert found[0]["how"] == ["mdns", "udp"]
    finally:
        ip("-n", lan.ns("pcA"), "addr", "flush", "dev", "lan0")
        ip("-n", lan.ns("pcA"), "addr", "add", "198.51.100.11/24", "dev", "lan0")
        await stop(pc_a)
