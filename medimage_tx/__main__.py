"""
Command-line tools beside the server: `python -m medimage_tx pair ...`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _pair(args: argparse.Namespace) -> int:
    from twisted.internet import defer, task

    from .config import ConfigError, load_or_create_config, save_config
    from .pairing import CODE_LIFETIME, BadPairingAnswer
    from .pairing_web import one_off_client, pairing_url_for, request_code
    from .tap import default_data_dir

    config_path = Path(args.config) if args.config else default_data_dir() / "config.json"
    try:
        config, _ = load_or_create_config(config_path)
    except ConfigError as e:
        print(f"medimage: {e}", file=sys.stderr)
        return 1
    relay = args.relay.rstrip("/")
    pairing_url = pairing_url_for(relay, args.custom_pairing or "")

    async def pair(reactor):
        client = one_off_client(reactor, config.webProxy)
        try:
            issued = await request_code(client, pairing_url, config.globalId, relay,
                                        args.country or (config.raw.get("countryCode") or ""))
        except BadPairingAnswer as e:
            print(f"medimage: the pairing service gave an unusable answer: {e}", file=sys.stderr)
            raise SystemExit(1)
        except Exception as e:
            print(f"medimage: cannot reach the pairing service {pairing_url}: {e}", file=sys.stderr)
            raise SystemExit(1)
        save_config(config, globalId=issued.paired_id, readProxy=issued.read_proxy)
        expires = time.strftime("%H:%M", time.localtime(time.time() + CODE_LIFETIME))
        print(f"Pairing code: {issued.code}")
        print(f"It works until {expires} (one hour), for any number of phones.")
        print("On each phone: open the MedImage app, tap the large circle, and enter the code.")
        print(f"Saved the pairing in {config_path}; a running server picks it up within seconds.")

    task.react(lambda reactor: defer.ensureDeferred(pair(reactor)))  # exits the process
    return 0


def _discover(args: argparse.Namespace) -> int:
    from twisted.internet import defer, task

    from .client import discover

    async def run(reactor):
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

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    return 0


def _send(args: argparse.Namespace) -> int:
    import secrets

    from twisted.internet import defer, task
    from twisted.web.client import Agent, HTTPConnectionPool
    from treq.client import HTTPClient

    from .client import SendFailed, app_file_name, matching_server, progress_bar, read_pairing, send_file, udp_scan

    paths = [Path(p) for p in args.files]
    for path in paths:
        if not path.is_file():
            print(f"medimage: {path}: no such file", file=sys.stderr)
            return 1
    paired_id, relay = read_pairing(Path(args.paired)) if args.paired else ("", "")

    async def run(reactor):
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
                print(f"medimage: {e}", file=sys.stderr)
                failed += 1
                continue
            print(f"{path}: sent as {name}: {answer}")
        if failed:
            raise SystemExit(1)

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medimage_tx")
    commands = parser.add_subparsers(dest="command", required=True)
    pair = commands.add_parser("pair", help="get a pairing code from a relay for this PC")
    pair.add_argument("--relay", required=True, help="the relay's address, e.g. https://relay.example:5566")
    pair.add_argument("--config", help="config.json of this PC's server [default: ~/MedImage/config.json]")
    pair.add_argument("--country", help="country code sent to the pairing service")
    pair.add_argument("--custom-pairing", help="pairing service URL [default: <relay>/med-genid.php]")
    find = commands.add_parser("discover", help="list MedImage servers on this LAN, as a phone finds them")
    find.add_argument("--timeout", type=float, default=3.0, help="seconds to listen [default: 3]")
    find.add_argument("--port", type=int, default=5566, help="UDP discovery port [default: 5566]")
    find.add_argument("--json", action="store_true", help="print JSON instead of a table")
    send = commands.add_parser("send", help="send files the way the MedImage app does")
    send.add_argument("files", nargs="+", metavar="FILE")
    send.add_argument("--id", required=True, help='patient id as typed in the app, e.g. "#moles John123"')
    send.add_argument("--server", help="send straight to this server, e.g. http://192.0.2.10:5566")
    send.add_argument("--paired", help="pairing file (a PC's config.json, or {\"id\": .., \"relay\": ..}): "
                                       "send to the PC that proves it holds the id, else to the relay")
    send.add_argument("--timeout", type=float, default=2.0, help="seconds to look for the paired PC")
    send.add_argument("--port", type=int, default=5566, help="UDP discovery port [default: 5566]")
    args = parser.parse_args(argv)
    return {"pair": _pair, "discover": _discover, "send": _send}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
