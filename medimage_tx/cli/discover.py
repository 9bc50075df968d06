"""
`medimage-tx discover`: list MedImage servers on this LAN, as a phone finds them.
"""

from __future__ import annotations

import argparse
import json

HELP = "list MedImage servers on this LAN, as a phone finds them"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to listen [default: 3]")
    parser.add_argument("--port", type=int, default=5566, help="UDP discovery port [default: 5566]")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from twisted.internet import defer, task

    from .phone_client import discover

    async def find(reactor):
        found = await discover(reactor, args.timeout, args.port)
        if args.json:
            print(json.dumps([{"name": f.name, "url": f.url, "fp": f.fp, "how": sorted(f.how)}
                              for f in found]))
            return
        if not found:
            print("No MedImage server found. Usual causes: the phone's WiFi isolates clients, a "
                  "firewall blocks UDP 5566 or mDNS (UDP 5353), a VPN, or the server runs with LAN "
                  "mode off.")
        for f in found:
            print(f"{f.name or '-':20} {f.url:28} fp={f.fp or '-':16} found by {'+'.join(sorted(f.how))}")

    task.react(lambda reactor: defer.ensureDeferred(find(reactor)))
    return 0
