"""
`medimage-tx pair`: get a pairing code from a relay for this PC.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HELP = "get a pairing code from a relay for this PC"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--relay", required=True, help="the relay's address, e.g. https://relay.example:5566")
    parser.add_argument("--config", help="config.json of this PC's server [default: ~/MedImage/config.json]")
    parser.add_argument("--country", help="country code sent to the pairing service")
    parser.add_argument("--custom-pairing", help="pairing service URL [default: <relay>/med-genid.php]")


def run(args: argparse.Namespace) -> int:
    from twisted.internet import defer, task

    from ..config import ConfigError, load_or_create_config, save_config
    from ..pairing import CODE_LIFETIME, BadPairingAnswer
    from ..pairing_web import one_off_client, pairing_url_for, request_code
    from ..tap import default_data_dir

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
