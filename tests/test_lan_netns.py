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
        # Unique per run, so two suites on one machine never share a name;
        # short enough for interface names (15 characters at most).
        existing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        self.prefix = "mtx" + secrets.token_hex(4)
        while self.prefix in existing:
            self.prefix = "mtx" + secrets.token_hex(4)
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
        # A build that failed half-way may leave a veth in this namespace.
        for index in range(len(HOSTS)):
            subprocess.run(["ip", "link", "del", f"{self.prefix}h{index}"], capture_output=True)


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
    await process.exited()


async def phone(lan: VirtualLan, *argv: str) -> tuple[int, str]:
    process = run_in(lan.ns("phone"), sys.executable, "-m", "medimage_tx", *argv)
    code = await process.exited()
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
    await process.exited()
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


async def phone_discover(lan: VirtualLan, port: int) -> dict[str, list[str]]:
    code, output = await phone(lan, "discover", "--timeout", "3", "--json", "--port", str(port))
    assert code == 0, output
    return {entry["url"]: entry["how"] for entry in json.loads(output.strip().splitlines()[-1])}


@pytest_twisted.ensureDeferred
async def test_two_servers_on_one_pc_each_answer_scans_on_their_own_port(lan, tmp_path):
    first, _ = await start_pc(lan, tmp_path, "pcA", ID_A)
    data = tmp_path / "second"
    (data / "clinic").mkdir(parents=True)
    (data / "config.json").write_text(json.dumps({"serverName": "Second", "backupTo": [str(data / "clinic")]}))
    second = run_in(lan.ns("pcA"), str(TWISTD), "--nodaemon", "medimage", "--data", str(data),
                    "--port", "5567", "--discovery-port", "5577")
    try:
        await second.wait_for(rb"listening on port 5567")
        await second.wait_for(rb"advertised as .* on 198\.51\.100\.11")
        assert (data / "twistd.pid").exists()  # its own pid file: no "another twistd is running"
        by_first_port = await phone_discover(lan, 5566)
        by_second_port = await phone_discover(lan, 5577)
        # UDP finds the server on the port probed; mDNS finds both either way.
        assert {url for url, how in by_first_port.items() if "udp" in how} == {"http://198.51.100.11:5566"}
        assert {url for url, how in by_second_port.items() if "udp" in how} == {"http://198.51.100.11:5567"}
        assert set(by_first_port) == set(by_second_port) == {"http://198.51.100.11:5566",
                                                             "http://198.51.100.11:5567"}
        assert b"Address already in use" not in first.output + second.output
    finally:
        await stop(first)
        await stop(second)


async def pc_home_page(lan: VirtualLan, host: str) -> str:
    process = run_in(lan.ns(host), sys.executable, "-c",
                     "import urllib.request\n"
                     "print(urllib.request.urlopen('http://127.0.0.1:5566/', timeout=3).read().decode())")
    assert await process.exited() == 0, process.output
    return process.output.decode()


@pytest_twisted.ensureDeferred
async def test_a_busy_scan_port_is_reported_and_retried(lan, tmp_path):
    holder = run_in(lan.ns("pcA"), sys.executable, "-c",
                    "import socket, sys\n"
                    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                    "s.bind(('', 5566))\n"
                    "print('holding', flush=True)\n"
                    "sys.stdin.read()")
    try:
        await holder.wait_for(b"holding")
        pc, _ = await start_pc(lan, tmp_path, "pcA", ID_A)
        try:
            warning = await pc.wait_for(rb"cannot listen for scans on UDP port 5566 \(Address already in use\)"
                                        rb"[^\n]*trying again every 5 s")
            assert b"cannot listen for scans" in warning.group(0)
            assert "cannot listen for scans on UDP port 5566 (Address already in use)" in \
                await pc_home_page(lan, "pcA")
            assert not [u for u, how in (await phone_discover(lan, 5566)).items() if "udp" in how]
            holder.transport.signalProcess(signal.SIGKILL)
            await holder.exited()
            await pc.wait_for(rb"now listening for scans on UDP port 5566")
            assert (await phone_discover(lan, 5566)).get("http://198.51.100.11:5566") == ["mdns", "udp"]
            assert "cannot listen for scans" not in await pc_home_page(lan, "pcA")
            assert pc.output.count(b"cannot listen for scans") == 1  # one warning, not one per retry
        finally:
            await stop(pc)
    finally:
        if not holder.ended.called:
            holder.transport.signalProcess(signal.SIGKILL)
            await holder.exited()
