"""
Issue 9, finding 12: UDP scan replies were five times the probe and went to
any (spoofed) sender; 250 spoofed probes a second starved a real phone.
On a real virtual LAN (network namespaces, a real `twistd` PC): an attacker
host sending from 200 addresses, small probes and padded ones, evenly, while
a phone scans.
"""

from __future__ import annotations

import json

import pytest_twisted

from test_lan_netns import ID_A, HOSTS, ip, lan, phone, run_in, start_pc, stop  # noqa: F401  (lan: fixture)

SOURCES = [f"198.51.100.{n}" for n in range(40, 240)]
FLOOD_SECONDS = 8.0
#: Probes a second from the attacker in all (half small, half padded).
FLOOD_RATE = 2000

ATTACKER = r"""
import json, socket, sys, time
from medimage_tx.lan.rules import make_probe
sources, target, seconds, rate = json.loads(sys.argv[1])
target = tuple(target)
small = json.dumps({"medimage": "scan", "v": 1, "nonce": "ab"}).encode()
padded = make_probe("ab")
sockets = []
for address in sources:
    pair = []
    for probe in (small, padded):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((address, 0))
        s.setblocking(False)
        pair.append((s, probe))
    sockets.append(pair)
stats = {"sent": 0, "replies": 0, "to_small": 0, "largest_over_probe": -10**6, "per_source": {}}
def drain():
    for pair in sockets:
        for s, probe in pair:
            while True:
                try:
                    data, _ = s.recvfrom(65536)
                except BlockingIOError:
                    break
                stats["replies"] += 1
                stats["to_small"] += probe is small
                stats["largest_over_probe"] = max(stats["largest_over_probe"], len(data) - len(probe))
                source = s.getsockname()[0]
                stats["per_source"][source] = stats["per_source"].get(source, 0) + 1
print("flooding", flush=True)
start = time.monotonic()
interval = 1.0 / rate
n = 0
while time.monotonic() - start < seconds:
    pair = sockets[(n // 2) % len(sockets)]
    s, probe = pair[n % 2]
    s.sendto(probe, target)
    stats["sent"] += 1
    n += 1
    if n % 50 == 0:
        drain()
    # Evenly spread: never a burst, never a gap a window could reset in.
    delay = start + n * interval - time.monotonic()
    if delay > 0:
        time.sleep(delay)
time.sleep(0.5)
drain()
stats["most_per_source"] = max(stats["per_source"].values(), default=0)
del stats["per_source"]
print(json.dumps(stats), flush=True)
"""


@pytest_twisted.ensureDeferred
async def test_a_spoofed_probe_flood_neither_amplifies_nor_starves_a_phone(lan, tmp_path):
    attacker_ns = lan.ns("pcB")  # the attacker is a host on the clinic LAN
    for address in SOURCES:
        ip("-n", attacker_ns, "addr", "add", f"{address}/24", "dev", "lan0")
    pc, _ = await start_pc(lan, tmp_path, "pcA", ID_A)
    attacker = None
    try:
        import sys

        attacker = run_in(attacker_ns, sys.executable, "-c", ATTACKER,
                          json.dumps([SOURCES, [HOSTS["pcA"], 5566], FLOOD_SECONDS, FLOOD_RATE]))
        await attacker.wait_for(rb"flooding")
        code, output = await phone(lan, "discover", "--timeout", "3", "--json")
        assert code == 0, output
        found = json.loads(output.strip().splitlines()[-1])
        assert any(entry["url"] == f"http://{HOSTS['pcA']}:5566" and "udp" in entry["how"] for entry in found), \
            f"the phone's scan got no UDP reply during the flood: {found}"
        stats = json.loads((await attacker.wait_for(rb"\{.*\}\n")).group(0))
    finally:
        if attacker is not None and not attacker.ended.called:
            attacker.transport.signalProcess("KILL")
        await stop(pc)
        for address in SOURCES:
            ip("-n", attacker_ns, "addr", "del", f"{address}/24", "dev", "lan0")
    print(f"UDP flood: {stats}")
    assert stats["sent"] >= FLOOD_RATE * FLOOD_SECONDS * 0.5, stats  # the flood really ran
    assert stats["to_small"] == 0, stats  # small probes get nothing back
    assert stats["largest_over_probe"] <= 0, stats  # no reply larger than its probe
    # 5 replies a second at most to one sender (the flood spans up to 9 windows).
    assert stats["most_per_source"] <= 5 * (FLOOD_SECONDS + 1), stats
