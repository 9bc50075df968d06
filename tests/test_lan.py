"""
LAN discovery rules (PROTOCOL.md B1, B3) and the scan responder on loopback.
"""

from __future__ import annotations

import json
import socket
import sys
from collections import namedtuple
from pathlib import Path

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol

from conftest import jpeg_bytes
from processes import spawn
from medimage_tx.cli.phone_client import app_file_name, matching_server, Found, read_pairing
from medimage_tx.discovery import DiscoveryService, ScanResponder
from medimage_tx.identity import fingerprint, proof
from medimage_tx.lan.rules import (
    MAX_REPLY,
    PROBE_SIZE,
    Interface,
    ReplyLimiter,
    local_address_for,
    make_probe,
    parse_probe,
    reply_for,
    usable_interfaces,
)

Addr = namedtuple("Addr", "family address netmask")
Stat = namedtuple("Stat", "isup flags")
PAIRED_ID = "uPSE4UWHmJ8XqFUqvf"


def test_fingerprint_and_proof_as_protocol_says():
    import hashlib
    import hmac

    assert fingerprint(PAIRED_ID) == hashlib.sha256(b"medimage:" + PAIRED_ID.encode()).hexdigest()[:16]
    assert proof(PAIRED_ID, "ab12") == hmac.new(PAIRED_ID.encode(), b"ab12", hashlib.sha256).hexdigest()


def test_interface_filtering():
    addresses = {
        "lo": [Addr(socket.AF_INET, "127.0.0.1", "255.0.0.0")],
        "eth0": [Addr(socket.AF_INET, "192.0.2.10", "255.255.255.0"),
                 Addr(socket.AF_INET6, "fe80::1", "ffff::")],
        "wlan0": [Addr(socket.AF_INET, "169.254.3.4", "255.255.0.0")],
        "docker0": [Addr(socket.AF_INET, "172.17.0.1", "255.255.0.0")],
        "vEthernet (WSL)": [Addr(socket.AF_INET, "172.20.0.1", "255.255.240.0")],
        "eth1": [Addr(socket.AF_INET, "198.51.100.7", "255.255.255.0")],
    }
    stats = {name: Stat(True, "up,broadcast") for name in addresses}
    stats["lo"] = Stat(True, "up,loopback")
    stats["eth1"] = Stat(False, "broadcast")
    assert usable_interfaces(addresses, stats) == [Interface("eth0", "192.0.2.10", "255.255.255.0")]
    assert usable_interfaces(addresses, stats, named=["docker0"]) == [
        Interface("docker0", "172.17.0.1", "255.255.0.0")]


@pytest.mark.parametrize("data", [
    b"", b"not json", b"[]", b'{"medimage": "scan"}', b'{"medimage": "scan", "v": 2}',
    b'{"medimage": "server", "v": 1}', b'{"medimage": "scan", "v": 1, "nonce": "xyz!"}',
    b'{"medimage": "scan", "v": 1, "nonce": 5}', b'{"medimage": "scan", "v": 1, "pad": "' + b"a" * 600 + b'"}',
    b"\xff\xfe", b'{"medimage": "scan", "v": 1, "nonce": "' + b"a" * 65 + b'"}',
])
def test_malformed_wrong_version_and_oversize_probes_get_no_reply(data):
    assert parse_probe(data) is None


def test_valid_probe():
    assert parse_probe(make_probe("00ff")) == "00ff"
    assert parse_probe(b'{"medimage": "scan", "v": 1}') == ""


@given(st.text(max_size=5000), st.text(alphabet="0123456789abcdef", max_size=64))
def test_reply_is_small_and_never_carries_the_id(name, nonce):
    reply = reply_for(nonce, name, "http://198.51.100.2:5566", False, PAIRED_ID)
    assert len(reply) <= MAX_REPLY
    assert PAIRED_ID.encode() not in reply
    decoded = json.loads(reply)
    assert decoded["fp"] == fingerprint(PAIRED_ID)
    assert decoded.get("proof") == (proof(PAIRED_ID, nonce) if nonce else None)


def test_unpaired_reply_has_no_fp_or_proof():
    decoded = json.loads(reply_for("ab", "PC", "http://198.51.100.2:5566", False, ""))
    assert decoded["fp"] is None and "proof" not in decoded


def test_local_address_is_the_interface_of_the_probe():
    wifi = Interface("wlan0", "198.51.100.2", "255.255.255.0")
    wired = Interface("eth0", "203.0.113.5", "255.255.255.0")
    assert local_address_for("198.51.100.77", [wired, wifi]) == "198.51.100.2"
    assert local_address_for("203.0.113.9", [wired, wifi]) == "203.0.113.5"


def test_reply_limiter():
    now = [0.0]
    limiter = ReplyLimiter(lambda: now[0], per_sender=2, in_total=4)
    assert [limiter.allow("a") for _ in range(3)] == [True, True, False]
    assert limiter.allow("b") and limiter.allow("c") and not limiter.allow("d")
    now[0] = 1.5
    assert limiter.allow("a")


def test_reply_limiter_keeps_half_the_budget_for_first_replies():
    now = [0.0]
    limiter = ReplyLimiter(lambda: now[0], per_sender=5, in_total=10)
    busy = [limiter.allow(sender) for sender in ("a", "b") for _ in range(5)]
    # a: 5 (repeats until half the budget is used); b: its first reply only.
    assert busy == [True] * 6 + [False] * 4
    assert all(limiter.allow(f"phone{n}") for n in range(4))  # first replies get the rest
    assert not limiter.allow("late")


def test_a_reply_never_outgrows_its_probe():
    probe = make_probe("ab" * 16)
    assert len(probe) == PROBE_SIZE and parse_probe(probe) == "ab" * 16
    reply = reply_for("ab" * 16, "Reception " * 10, "http://198.51.100.2:5566", False, PAIRED_ID, len(probe))
    assert reply is not None and len(reply) <= len(probe) and json.loads(reply)["name"]
    bare = json.dumps({"medimage": "scan", "v": 1, "nonce": "ab" * 16}).encode()
    assert reply_for("ab" * 16, "PC", "http://198.51.100.2:5566", False, PAIRED_ID, len(bare)) is None
    # Too little room for the name: the reply goes without it.
    unnamed = reply_for("ab", "N" * 100, "http://198.51.100.2:5566", False, PAIRED_ID, 250)
    assert unnamed is not None and len(unnamed) <= 250 and json.loads(unnamed)["name"] == ""


def test_no_reply_to_senders_off_our_subnets():
    wifi = Interface("wlan0", "198.51.100.2", "255.255.255.0")
    assert local_address_for("203.0.113.9", [wifi]) is None
    assert local_address_for("8.8.8.8", [wifi]) is None


def test_matching_server_needs_proof_not_only_fp():
    nonce = "abcd"
    copycat = Found("Other PC", "http://198.51.100.3:5566", fingerprint(PAIRED_ID), {"udp"}, proof="00" * 32)
    real = Found("Our PC", "http://198.51.100.2:5566", fingerprint(PAIRED_ID), {"udp"}, proof(PAIRED_ID, nonce))
    assert matching_server([copycat, real], PAIRED_ID, nonce) is real
    assert matching_server([copycat], PAIRED_ID, nonce) is None


def test_app_file_name(tmp_path):
    import time

    when = time.strptime("27 Nov 2026 10:11:12", "%d %b %Y %H:%M:%S")
    assert app_file_name("#moles John123", Path("x.JPG"), when) == "#moles-John123-27-Nov-2026-10-11-12.jpg"
    assert app_file_name("#moles John123", Path("x.jpg"), when, PAIRED_ID).startswith(f"#{PAIRED_ID}-#moles-")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"globalId": PAIRED_ID, "readProxy": f"http://r:5566/read/{PAIRED_ID}"}))
    assert read_pairing(config) == (PAIRED_ID, "http://r:5566")


class Collect(DatagramProtocol):
    def __init__(self):
        self.replies = []
        self.got = defer.Deferred()

    def datagramReceived(self, data, address):
        self.replies.append(json.loads(data))
        if not self.got.called:
            self.got.callback(None)


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest_twisted.ensureDeferred
async def test_scan_responder_answers_once_per_probe_on_loopback(start_server, scheme):
    pc = await start_server(globalId=PAIRED_ID, serverName="Reception PC")
    http_port = int(pc.url.rsplit(":", 1)[1])
    discovery = DiscoveryService(pc.service.state, reactor, lambda: http_port,
                                 interfaces=lambda: [Interface("lo", "127.0.0.1", "255.0.0.0")],
                                 scheme=lambda: scheme)
    discovery.status.interfaces = [Interface("lo", "127.0.0.1", "255.0.0.0")]
    responder = reactor.listenUDP(0, ScanResponder(discovery), interface="127.0.0.1")
    phone = Collect()
    phone_port = reactor.listenUDP(0, phone, interface="127.0.0.1")
    try:
        target = ("127.0.0.1", responder.getHost().port)
        phone_port.write(b"garbage", target)
        phone_port.write(make_probe("feed"), target)
        await phone.got
        # A round trip more, so that a second reply would have arrived.
        phone.got = defer.Deferred()
        phone_port.write(make_probe("beef"), target)
        await phone.got
    finally:
        await responder.stopListening()
        await phone_port.stopListening()
    assert len(phone.replies) == 2  # one per valid probe, none for garbage
    first = phone.replies[0]
    assert first["url"] == f"{scheme}://127.0.0.1:{http_port}"
    assert first["tls"] is (scheme == "https")
    assert first["name"] == "Reception PC"
    assert first["proof"] == proof(PAIRED_ID, "feed")
    assert discovery.status.probes_answered == 2 and discovery.status.probes_ignored == 1


@pytest_twisted.ensureDeferred
async def test_send_command_delivers_with_app_naming(start_server, tmp_path):
    target = tmp_path / "clinic"
    target.mkdir()
    pc = await start_server(backupTo=[target.as_posix()])
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(jpeg_bytes(2_000_000))

    run = spawn([sys.executable, "-m", "medimage_tx", "send", str(photo), "--id", "#moles John123",
                 "--server", pc.url], str(Path(__file__).parent.parent), env=None)
    assert await run.exited() == 0, run.output
    assert b"Received upload successfully!" in run.output
    assert b"100%" in run.output  # the progress bar of a large file
    [stored] = list((target / "moles").iterdir())
    assert stored.name.startswith("John123-") and stored.read_bytes() == photo.read_bytes()



@pytest_twisted.ensureDeferred
async def test_paired_send_never_prints_the_pairing_id(start_server, tmp_path):
    # Seen walking the README: `send --paired` printed "sent as #<the PC's
    # globalId>-#moles-...", the secret the home page never shows.
    relay = await start_server("relay", allowPhotosLeaving=True)
    paired_id = "skiBldLcVHaoR6eY7T"
    pairing = tmp_path / "phone.json"
    pairing.write_text(json.dumps({"id": paired_id, "relay": relay.url}))
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(jpeg_bytes())

    run = spawn([sys.executable, "-m", "medimage_tx", "send", str(photo), "--id", "#moles John123",
                 "--paired", str(pairing), "--server", relay.url], str(Path(__file__).parent.parent), env=None)
    assert await run.exited() == 0, run.output
    assert b"Received upload successfully!" in run.output
    assert b"sent as #<paired id>-#moles-John123-" in run.output
    assert paired_id.encode() not in run.output


# Edges of the rules (found by `make mutate`).


def test_interfaces_skip_loopback_flags_and_read_past_other_families():
    addresses = {
        "a0": [Addr(socket.AF_INET6, "2001:db8::1", "ffff::"), Addr(socket.AF_INET, "192.0.2.1", "255.255.255.0")],
        "b0": [Addr(socket.AF_INET, "192.0.2.2", "255.255.255.0")],  # flagged loopback
        "c0": [Addr(socket.AF_INET, "192.0.2.3", None), Addr(socket.AF_INET, "198.51.100.3", "255.255.255.0")],
        "d0": [Addr(socket.AF_INET, "192.0.2.4", "255.255.255.0")],  # no stats: gone
    }
    stats = {"a0": Stat(True, "up"), "b0": Stat(True, "up,loopback"), "c0": Stat(True, "up")}
    assert usable_interfaces(addresses, stats) == [
        Interface("a0", "192.0.2.1", "255.255.255.0"), Interface("c0", "198.51.100.3", "255.255.255.0")]
    assert usable_interfaces(addresses, stats, named=["c0"]) == [Interface("c0", "198.51.100.3", "255.255.255.0")]
    assert Interface("a0", "192.0.2.1", "255.255.255.0").broadcast == "192.0.2.255"


@pytest.mark.parametrize("name, virtual", [
    ("Intel Virtual Adapter", True), ("Microsoft Hyper-V Network Adapter", True), ("vboxnet0", True),
    ("eth0", False), ("Wi-Fi", False), ("enp3s0", False),
])
def test_virtual_adapters(name, virtual):
    from medimage_tx.lan.rules import is_virtual

    assert is_virtual(name) is virtual


def test_senders_on_none_of_our_subnets_get_no_reply_address():
    assert local_address_for("127.0.0.9", [Interface("lo", "127.0.0.1", "255.0.0.0")]) == "127.0.0.1"
    assert local_address_for("127.0.0.9", [Interface("lo", "127.0.0.1", "255.255.255.255")]) is None
    assert local_address_for("203.0.113.9", [Interface("eth0", "192.0.2.1", "255.255.255.0")]) is None
    assert local_address_for("not an address", [Interface("lo", "127.0.0.1", "255.0.0.0")]) is None
    assert local_address_for("::1", [Interface("lo", "127.0.0.1", "255.0.0.0")]) is None


def test_replies_are_counted_per_sender_and_in_total_per_window():
    now = [0.0]
    limiter = ReplyLimiter(lambda: now[0])
    assert [limiter.allow("a") for _ in range(6)] == [True] * 5 + [False]
    now[0] = 0.999
    assert not limiter.allow("a") and limiter.allow("b")
    now[0] = 1.0
    assert limiter.allow("a")
    everyone = ReplyLimiter(lambda: now[0], per_sender=1000, in_total=3)
    assert [everyone.allow(str(n)) for n in range(4)] == [True, True, True, False]


def test_replies_parse_only_server_answers():
    from medimage_tx.lan.rules import parse_reply

    assert parse_reply(b'{"medimage": "server", "url": "http://x"}') == {"medimage": "server", "url": "http://x"}
    for data in (b"[]", b"nope", b'{"medimage": "scan", "url": "x"}', b'{"medimage": "server", "url": 5}', b"\xff"):
        assert parse_reply(data) is None


def test_reply_has_exactly_the_documented_fields():
    decoded = json.loads(reply_for("ab", "Reception", "http://198.51.100.2:5566", True, PAIRED_ID))
    assert decoded == {"medimage": "server", "v": 1, "name": "Reception", "url": "http://198.51.100.2:5566",
                       "tls": True, "fp": fingerprint(PAIRED_ID), "proof": proof(PAIRED_ID, "ab")}
    assert json.loads(reply_for("", "n" * 500, "http://x", False, ""))["name"] == "n" * 100
    # Too long with the name: without it; too long even so: no reply.
    long_url = "http://" + "u" * (MAX_REPLY - 150)
    assert json.loads(reply_for("", "n" * 100, long_url, False, ""))["name"] == ""
    assert len(reply_for("", "n" * 100, long_url, False, "")) <= MAX_REPLY
    assert reply_for("", "n", "http://" + "u" * MAX_REPLY, False, "") is None
