"""
`medimage-tx pair`: get a pairing code for this PC, on the PC itself, with
the same rules as its /pair page (medimage_tx/pc/pairing.py): AtomJump's
central pairing service by default, the PC's id sent only for the relay
and service it is paired with, a new id only with --new-id.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "get a pairing code for this PC (through AtomJump's pairing service by default)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--relay", help="the relay's address, e.g. https://relay.example:5566 "
                                        "[default: the relay this PC is paired with]")
    parser.add_argument("--config", help="config.json of this PC's server [default: ~/MedImage/config.json]")
    parser.add_argument("--country", help="country code sent to the pairing service")
    parser.add_argument("--custom-pairing", help="pairing service URL [default: AtomJump's, "
                                                 "the only one the MedImage app redeems codes at]")
    parser.add_argument("--new-id", action="store_true",
                        help="confirm that this PC may get a new id (phones paired now must pair again)")


def run(args: argparse.Namespace) -> int:
    from twisted.internet import defer, task

    async def main(reactor):
        raise SystemExit(await pair(reactor, args))

    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))  # exits the process
    return 0


async def pair(reactor, args: argparse.Namespace, clock=None) -> int:
    """
    The command: its exit status; what it says goes to stdout and stderr.

    @param clock: what times the pairing request (default C{reactor}).
    """
    from ..config import ConfigError, load_or_create_config, save_config
    from ..pc.pairing import (
        PairingError,
        PairRequest,
        advice_for,
        paired_changes,
        plan,
        relay_of,
        request_code_as_configured,
    )
    from ..tap import default_data_dir

    config_path = Path(args.config) if args.config else default_data_dir() / "config.json"
    try:
        config, _ = load_or_create_config(config_path)
    except ConfigError as e:
        print(f"medimage: {e}", file=sys.stderr)
        return 1
    country = args.country or config.raw.get("countryCode") or ""
    try:
        wanted = PairRequest.checked(args.relay or relay_of(config.readProxy),
                                     country if isinstance(country, str) else "", "",
                                     args.custom_pairing or "")
    except PairingError as e:
        print(f"medimage: {e} (give --relay)", file=sys.stderr)
        return 1
    pairing = plan(config, wanted)
    if pairing.new_id and not args.new_id:
        print(f"medimage: this PC is paired with {pairing.current_relay or 'a relay'}; pairing with "
              f"{wanted.proxy_server} through {wanted.service} gives it a new id, and phones paired "
              "now must pair again. Nothing was sent. Add --new-id to do it.", file=sys.stderr)
        return 1
    try:
        issued = await request_code_as_configured(reactor, config, pairing, clock)
    except PairingError as e:
        print(f"medimage: {e} Nothing was changed.", file=sys.stderr)
        return 1
    try:
        save_config(config, **paired_changes(config, issued, wanted))
    except ConfigError as e:  # edited by hand meanwhile, with a mistake: never written over
        print(f"medimage: {e}. The pairing was not saved: correct the file and pair again.", file=sys.stderr)
        return 1
    print(f"Pairing code: {issued.code}")
    advice = advice_for(issued.code, wanted)
    if advice.for_the_app:
        if advice.case_note:
            print(advice.case_note)
        print("On each phone, now (codes expire): open the MedImage app, tap the large circle, "
              "and enter the code.")
    else:
        print(advice.not_for_the_app)
    print(f"Saved the pairing in {config_path}; a running server picks it up within seconds.")
    return 0
