"""
`medimage-tx service install`: run the server at boot.

On Linux it writes a systemd unit: a dedicated system user, the server in
the foreground (`medimage-tx serve`), logs to the journal, restart on
failure.  `--dry-run` prints the unit and changes nothing.  On Windows the
README's steps use NSSM, as the original MedImage installer does.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

HELP = "run the server at boot (Linux: a systemd unit; `install --dry-run` shows it)"

DEFAULT_NAME = "medimage-tx"
DEFAULT_USER = "medimage"
DEFAULT_DATA = "/var/lib/medimage"
UNIT_FOLDER = Path("/etc/systemd/system")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    install = actions.add_parser("install", help="write the unit, create the user, enable and start it")
    install.add_argument("--dry-run", action="store_true", help="print the unit; change nothing")
    install.add_argument("--name", default=DEFAULT_NAME, help=f"service name [default: {DEFAULT_NAME}]")
    install.add_argument("--user", default=DEFAULT_USER, help=f"system user it runs as [default: {DEFAULT_USER}]")
    install.add_argument("--data", default=DEFAULT_DATA,
                         help=f"data folder (photos, config.json) [default: {DEFAULT_DATA}]")
    install.add_argument("--unit-folder", default=str(UNIT_FOLDER), help=argparse.SUPPRESS)
    install.add_argument("server_options", nargs="*", metavar="SERVER_OPTION",
                         help="more `serve` options, after --, e.g. -- --port 5567 --discovery-port 5577")


def serve_command() -> list[str]:
    """
    How to start this installation's server: the console script beside this
    Python, else C{python -m medimage_tx}.
    """
    script = Path(sys.executable).parent / "medimage-tx"
    if script.exists():
        return [str(script.absolute()), "serve"]
    return [str(Path(sys.executable).absolute()), "-m", "medimage_tx", "serve"]


def unit_text(user: str, data: str, server_options: list[str], command: list[str]) -> str:
    exec_start = shlex.join([*command, "--data", data, *server_options])
    return f"""\
[Unit]
Description=MedImage server (medimage_tx): clinical photos from phones into the clinic's folders
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User={user}
Group={user}
# In the foreground; the log goes to the journal (journalctl -u <name>).
ExecStart={exec_start}
Restart=on-failure
RestartSec=5
# Photos readable by the practice software (0644); see fileMode in config.json.
UMask=0022
NoNewPrivileges=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
"""


def run(args: argparse.Namespace) -> int:
    if sys.platform == "win32":
        print("medimage-tx service: on Windows, install the service with NSSM as the README shows",
              file=sys.stderr)
        return 2
    data = str(Path(args.data).absolute())
    text = unit_text(args.user, data, args.server_options, serve_command())
    if args.dry_run:
        print(text, end="")
        return 0
    return _install(args.name, args.user, Path(data), text, Path(args.unit_folder))


def _install(name: str, user: str, data: Path, text: str, unit_folder: Path) -> int:
    if os.geteuid() != 0:
        print("medimage-tx service install: needs root (sudo)", file=sys.stderr)
        return 1
    if shutil.which("systemctl") is None:
        print("medimage-tx service install: no systemctl here; print the unit with --dry-run and "
              "install it the way this system starts services", file=sys.stderr)
        return 1
    import pwd

    try:
        pwd.getpwnam(user)
    except KeyError:
        _run(["useradd", "--system", "--home-dir", str(data), "--no-create-home",
              "--shell", "/usr/sbin/nologin", user])
    data.mkdir(parents=True, exist_ok=True)
    shutil.chown(data, user, user)
    _build_plugin_cache()
    unreachable = _not_reachable_by_others(Path(serve_command()[0]))
    if unreachable:
        print(f"warning: {unreachable} is closed to other users, so the service user cannot start the "
              "server: install it under /opt (README)", file=sys.stderr)
    unit = unit_folder / f"{name}.service"
    unit.write_text(text)
    _run(["systemctl", "daemon-reload"])
    _run(["systemctl", "enable", "--now", f"{name}.service"])
    print(f"Installed {unit}: the server runs now and at every boot, as user {user}, with its data "
          f"in {data}.\nStatus: systemctl status {name}   Log: journalctl -u {name}")
    return 0


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True)


def _build_plugin_cache() -> None:
    # Written now, as root: the service user may not write twisted/plugins.
    subprocess.run([sys.executable, "-c", "from twisted.plugin import IPlugin, getPlugins; "
                    "list(getPlugins(IPlugin))"], check=False, capture_output=True)


def _not_reachable_by_others(path: Path) -> str:
    """
    The first folder on the way to C{path} that other users cannot enter, or "".
    """
    for folder in reversed(path.resolve().parents):
        if not os.stat(folder).st_mode & 0o001:
            return str(folder)
    return ""
