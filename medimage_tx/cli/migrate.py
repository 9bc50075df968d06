"""
`medimage-tx migrate`: take over an original MedImage server's config and
the photos still waiting in its folder (medimage_tx/pc/migration.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "take over an original MedImage server: its config.json and the photos waiting in its folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="original", required=True, metavar="FOLDER",
                        help="the original's folder, holding its config.json, photos and addons")
    parser.add_argument("--data", help="this server's data folder [default: ~/MedImage]")
    parser.add_argument("--config", help="this server's config.json [default: DATA/config.json]")
    parser.add_argument("--replace", action="store_true",
                        help="replace a different config.json here (kept as config.json.before-migration)")
    parser.add_argument("--user", help="run as root: the user the server runs as, who gets the files written "
                                       "[default: the data folder's owner, else the user who ran sudo]")


def run(args: argparse.Namespace) -> int:
    import os

    from ..pc import service_user
    from ..pc.migration import MigrationError, migrate
    from ..tap import default_data_dir, running_server

    data_dir = Path(args.data) if args.data else default_data_dir()
    config_path = Path(args.config) if args.config else data_dir / "config.json"
    server = running_server(data_dir.expanduser().absolute() / "twistd.pid")
    if server is not None:
        # It would file photos beside it and reload the config mid-way.
        print(f"medimage: a server (pid {server}) is running with the data folder {data_dir}: stop it first "
              f"(the service: sudo systemctl stop medimage-tx; in a terminal: Ctrl-C), migrate, then start it "
              f"again. Nothing was changed.", file=sys.stderr)
        return 1
    if args.user and not service_user.running_as_root():
        print("medimage: --user needs root (sudo): files go to another user only when root writes them",
              file=sys.stderr)
        return 1
    try:
        owner = service_user.choose(data_dir.expanduser().absolute(), args.user, os.environ)
        report = migrate(Path(args.original), config_path, data_dir, replace=args.replace, owner=owner)
    except (MigrationError, service_user.NoSuchUser) as e:
        print(f"medimage: {e}", file=sys.stderr)
        return 1
    for line in report.lines():
        print(line)
    return 1 if report.not_filed else 0
