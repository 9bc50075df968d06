"""
LAN discovery rules as plain Python (PROTOCOL.md B1, B3): which interfaces
to advertise on, what a probe is, what the reply says, and how often one
sender gets an answer.

UDP senders can be spoofed, so a reply is never larger than the probe it
answers (no amplification: our probes are padded to L{PROBE_SIZE}, room
for any reply), goes only to senders on one of our own subnets, and comes
out of a budget per sender and in total (L{ReplyLimiter}).
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from ..identity import fingerprint, proof

SERVICE_TYPE = "_medimage._tcp.local."
PROTOCOL_VERSION = 1
MAX_PROBE = 512
#: What L{make_probe} pads a probe to: a reply must fit in its probe.
PROBE_SIZE = MAX_PROBE
MAX_REPLY = PROBE_SIZE

# Adapters that are not the clinic's network: used only when named in
# discoveryInterfaces.
VIRTUAL_PREFIXES = (
    "docker", "veth", "virbr", "vethernet", "virtualbox", "vboxnet", "vmnet", "hyper-v",
    "wsl", "br-", "tun", "tap", "utun", "zt", "tailscale", "wg", "lxc", "lxd", "podman", "cni",
)


@dataclass(frozen=True)
class Interface:
    name: str
    address: str
    netmask: str

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{self.address}/{self.netmask}", strict=False)

    @property
    def broadcast(self) -> str:
        return str(self.network.broadcast_address)


def is_virtual(name: str) -> bool:
    lower = name.lower()
    return lower.startswith(VIRTUAL_PREFIXES) or "virtual" in lower or "hyper-v" in lower


def usable_interfaces(addresses: Mapping[str, Sequence[Any]], stats: Mapping[str, Any],
                      named: Sequence[str] = ()) -> list[Interface]:
    """
    The IPv4 interfaces to advertise on, from psutil's C{net_if_addrs()}
    and C{net_if_stats()}: up, not loopback, not link-local only, not a
    virtual adapter; or exactly the C{named} ones when any are named.
    """
    found = []
    for name, entries in sorted(addresses.items()):
        if named and name not in named:
            continue
        stat = stats.get(name)
        if stat is None or not stat.isup or "loopback" in getattr(stat, "flags", ""):
            continue
        if not named and is_virtual(name):
            continue
        for entry in entries:
            if entry.family != socket.AF_INET or not entry.netmask:
                continue
            address = ipaddress.IPv4Address(entry.address)
            if address.is_loopback or address.is_link_local:
                continue
            found.append(Interface(name, entry.address, entry.netmask))
    return found


def current_interfaces(named: Sequence[str] = ()) -> list[Interface]:
    import psutil

    return usable_interfaces(psutil.net_if_addrs(), psutil.net_if_stats(), named)


def parse_probe(data: bytes) -> Optional[str]:
    """
    The nonce of a valid probe (C{""} when it has none), or L{None} for
    anything else, which gets no reply.
    """
    if len(data) > MAX_PROBE:
        return None
    try:
        probe = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(probe, dict) or probe.get("medimage") != "scan" or probe.get("v") != PROTOCOL_VERSION:
        return None
    nonce = probe.get("nonce", "")
    if not isinstance(nonce, str) or not re.fullmatch(r"[0-9a-fA-F]{0,64}", nonce):
        return None
    return nonce


def make_probe(nonce: str, size: int = PROBE_SIZE) -> bytes:
    """
    A probe padded to C{size} bytes (with a C{pad} field of spaces), so that
    servers, which never answer with more bytes than a probe carried, have
    room for their reply.
    """
    bare = {"medimage": "scan", "v": PROTOCOL_VERSION, "nonce": nonce}
    padding = size - len(json.dumps({**bare, "pad": ""}).encode())
    return json.dumps({**bare, "pad": " " * max(0, padding)}).encode()


def reply_for(nonce: str, name: str, url: str, tls: bool, global_id: str,
              limit: int = MAX_REPLY) -> Optional[bytes]:
    """
    The reply to a probe, with C{fp} and, for a probe with a nonce,
    C{proof}; never the id itself.  At most C{limit} bytes (the size of the
    probe): the name is left out if the reply would not fit with it, and
    there is no reply (L{None}) if it does not fit even so.
    """
    reply = {"medimage": "server", "v": PROTOCOL_VERSION, "name": name[:100], "url": url,
             "tls": tls, "fp": fingerprint(global_id) if global_id else None}
    if global_id and nonce:
        reply["proof"] = proof(global_id, nonce)
    for candidate in (reply, {**reply, "name": ""}):
        data = json.dumps(candidate).encode()
        if len(data) <= min(limit, MAX_REPLY):
            return data
    return None


def parse_reply(data: bytes) -> Optional[dict]:
    try:
        reply = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(reply, dict) or reply.get("medimage") != "server" or not isinstance(reply.get("url"), str):
        return None
    return reply


def local_address_for(sender: str, interfaces: Sequence[Interface]) -> Optional[str]:
    """
    The address of the interface a probe from C{sender} came in on: the one
    whose subnet holds the sender.  A sender on no subnet of ours gets no
    reply: scans are broadcast on the LAN, and anything else may be a
    spoofed address that we would send replies to.
    """
    try:
        sender_ip = ipaddress.IPv4Address(sender)
    except ValueError:
        return None
    for interface in interfaces:
        if sender_ip in interface.network:
            return interface.address
    return None


class ReplyLimiter:
    """
    Budgets for scan replies, per C{window} seconds: at most C{per_sender}
    replies to one sender, and C{in_total} in all.  Fair to everyone: a
    sender's first reply in a window may use the whole total, its further
    replies only the first half of it, so a few busy senders cannot use up
    the replies that others' first probes need.  Only senders that got a
    reply are remembered (at most C{in_total}).
    """

    def __init__(self, now, per_sender: int = 5, in_total: int = 1024, window: float = 1.0):
        self.now = now
        self.per_sender = per_sender
        self.in_total = in_total
        self.window = window
        self._start = now()
        self._counts: dict[str, int] = {}
        self._total = 0

    def allow(self, sender: str) -> bool:
        now = self.now()
        if now - self._start >= self.window:
            self._start, self._counts, self._total = now, {}, 0
        count = self._counts.get(sender, 0)
        room = self.in_total if count == 0 else self.in_total // 2
        if count >= self.per_sender or self._total >= room:
            return False
        self._counts[sender] = count + 1
        self._total += 1
        return True
