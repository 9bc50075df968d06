"""
`medimage-tx addon install|remove|list`: the add-ons of this PC's server
(docs/addons.md), from its own folder.  A running server picks up the
changes at once (it re-reads addons/config.json).  Refused in lockDown.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HELP = "install, remove or list add-ons (addons/ beside config.json)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="config.json of this PC's server [default: ~/MedImage/config.json]")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    install = actions.add_parser("install", help="install an add-on from a .zip (a file or an http(s) address)")
    install.add_argument("zip", help="the add-on's .zip: a file, or an http:// or https:// address")
    remove = actions.add_parser("remove", help="remove an installed add-on")
    remove.add_argument("name", help="the add-on's name (its folder in addons/)")
    listing = actions.add_parser("list", help="list the installed add-ons and their events")
    listing.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    from ..addons import registry_path
    from ..addons.installer import InstallError, install, list_addons, uninstall
    from ..addons.python_api import discover
    from ..addons.registry import Registry
    from ..config import ConfigError, load_config
    from ..tap import default_data_dir

    config_path = Path(args.config) if args.config else default_data_dir() / "config.json"
    try:
        config = load_config(config_path)
    except ConfigError as e:
        print(f"medimage: {e}", file=sys.stderr)
        return 1
    parent_dir = config_path.parent
    registry = Registry(registry_path(config_path))
    try:
        if args.action == "list":
            found = list_addons(parent_dir, registry, discover())
            if args.json:
                print(json.dumps(found, indent=2))
            elif not found:
                print("No add-ons installed.")
            for addon in found if not args.json else ():
                version = f" {addon['version']}" if addon["version"] else ""
                print(f"{addon['name']}{version} ({addon['kind']}){': ' if addon['description'] else ''}"
                      f"{addon['description']}")
                for event in addon["events"]:
                    state = "active" if event["active"] else "inactive"
                    print(f"    {event['event']} ({state}): {event.get('runProcess', '(Python)')}")
            return 0
        if args.action == "remove":
            report = uninstall(args.name, parent_dir, registry, config)
        else:
            registry.ensure_exists()
            if args.zip.startswith(("http://", "https://")):
                report = _install_from_url(args.zip, parent_dir, registry, config)
            else:
                report = install(Path(args.zip), parent_dir, registry, config)
    except InstallError as e:
        print(f"medimage: {e}", file=sys.stderr)
        return 1
    print(f"{report.name}{' ' + report.version if report.version else ''}: {report.message}")
    for warning in report.warnings:
        print(f"Warning: {warning}")
    return 0


def _install_from_url(url: str, parent_dir: Path, registry, config):
    from twisted.internet import defer, task

    from ..addons.installer import InstallError, check_lockdown, install
    from ..addons.web import download_zip

    check_lockdown(config)
    result = {}

    async def fetch(reactor):
        try:
            await download_zip(reactor, url, zip_path, config.webProxy)
        except InstallError as e:
            result["error"] = e

    with tempfile.TemporaryDirectory() as temp:
        zip_path = Path(temp) / "addon.zip"
        try:
            task.react(lambda reactor: defer.ensureDeferred(fetch(reactor)))
        except SystemExit as e:
            if e.code not in (0, None):
                raise InstallError(f"Cannot download the add-on from {url}") from None
        if "error" in result:
            raise result["error"]
        return install(zip_path, parent_dir, registry, config)
