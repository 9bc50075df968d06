"""
`medimage-tx send`: send files the way the MedImage app does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "send files the way the MedImage app does"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument("--id", required=True, help='patient id as typed in the app, e.g. "#moles John123"')
    parser.add_argument("--server", help="send straight to this server, e.g. http://192.0.2.10:5566")
    parser.add_argument("--paired", help="pairing file (a PC's config.json, or {\"id\": .., \"relay\": ..}): "
                                         "send to the PC that proves it holds the id, else to the relay")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to look for the paired PC")
    parser.add_argument("--port", type=int, default=5566, help="UDP discovery port [default: 5566]")


def run(args: argparse.Namespace) -> int:
    import secrets

    from treq.client import HTTPClient
    from twisted.internet import defer, task
    from twisted.web.client import Agent, HTTPConnectionPool

    from .phone_client import (
        SendFailed,
        app_file_name,
        matching_server,
        progress_bar,
        read_pairing,
        send_file,
        udp_scan,
    )

    paths = [Path(p) for p in args.files]
    for path in paths:
        if not path.is_file():
            print(f"medimage: {path}: no such file", file=sys.stderr)
            return 1
    paired_id, relay = read_pairing(Path(args.paired)) if args.paired else ("", "")

    def hidden(text: str) -> str:
        # The pairing id is a secret (the admin pages never show it): what
        # is printed may end up in a ticket or a screenshot.
        return text.replace(paired_id, "<paired id>") if paired_id else text

    async def send(reactor):
        server = args.server
        if server is None and paired_id:
            nonce = secrets.token_hex(16)
            match = matching_server(await udp_scan(reactor, args.port, args.timeout, nonce), paired_id, nonce)
            server = match.url if match else relay
            print(f"Sending to {'the paired PC on the LAN' if match else 'the relay'}: {server}")
        if not server:
            print("medimage: give --server URL, or --paired FILE with the pairing", file=sys.stderr)
            raise SystemExit(1)
        client = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        failed = 0
        for path in paths:
            name = app_file_name(args.id, path, paired_id=paired_id)
            try:
                answer = await send_file(reactor, client, server, path, name, progress=progress_bar())
            except SendFailed as e:
                print(hidden(f"medimage: {e}"), file=sys.stderr)
                failed += 1
                continue
            print(hidden(f"{path}: sent as {name}: {answer}"))
        if failed:
            raise SystemExit(1)

    task.react(lambda reactor: defer.ensureDeferred(send(reactor)))
    return 0
