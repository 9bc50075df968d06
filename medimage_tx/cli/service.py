"""
`medimage-tx service install | status | uninstall`: run the server at boot.

On Linux `install` writes a systemd unit: a dedicated system user, the
server in the foreground (`medimage-tx serve`), logs to the journal,
restart on failure; it carries the config.json the first start wrote (the
clinic's folder and pairing, set before the README's "Start at boot") into
the service's data folder.  `--dry-run` prints what it would do and the
unit, and changes nothing.  On Windows the README's steps use NSSM, as the
original MedImage installer does.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

HELP = "run the server at boot: install, status, uninstall (Linux: a systemd unit; `install --dry-run` shows it)"

DEFAULT_NAME = "medimage-tx"
DEFAULT_USER = "medimage"
DEFAULT_DATA = "/var/lib/medimage"
UNIT_FOLDER = Path("/etc/systemd/system")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    install = actions.add_parser("install", help="write the unit, create the user, enable and start it")
    install.add_argument("--dry-run", action="store_true", help="print what it would do and the unit; change nothing")
    install.add_argument("--user", default=DEFAULT_USER, help=f"system user it runs as [default: {DEFAULT_USER}]")
    install.add_argument("--data", default=DEFAULT_DATA,
                         help=f"data folder (photos, config.json) [default: {DEFAULT_DATA}]")
    install.add_argument("--config", dest="carry",
                         help="the config.json to carry into the data folder when it has none [default: "
                              "~/MedImage/config.json, the first start's]")
    install.add_argument("server_options", nargs="*", metavar="SERVER_OPTION",
                         help="more `serve` options, after --, e.g. -- --port 5567 --discovery-port 5577")
    status = actions.add_parser("status", help="whether it is installed and running, as whom, with which data")
    uninstall = actions.add_parser("uninstall", help="stop it, disable it and remove the unit (data and user kept)")
    for action in (install, status, uninstall):
        action.add_argument("--name", default=DEFAULT_NAME, help=f"service name [default: {DEFAULT_NAME}]")
        action.add_argument("--unit-folder", default=str(UNIT_FOLDER), help=argparse.SUPPRESS)


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
    unit = Path(args.unit_folder) / f"{args.name}.service"
    if args.action == "status":
        return _status(args.name, unit)
    if args.action == "uninstall":
        return _uninstall(args.name, unit)
    data = Path(args.data).absolute()
    text = unit_text(args.user, str(data), args.server_options, serve_command())
    try:
        carry = _config_to_carry(args.carry, data)
    except ValueError as e:
        print(f"medimage-tx service install: {e}", file=sys.stderr)
        return 1
    if args.dry_run:
        print("\n".join(_plan(args.name, args.user, data, carry, unit)), file=sys.stderr)
        sys.stderr.flush()
        print(text, end="")
        return 0
    return _install(args.name, args.user, data, text, unit, carry, args.server_options)


def _config_to_carry(explicit: Optional[str], data: Path) -> Optional[Path]:
    """
    The config.json the clinic set up before installing the service (the
    first start's), when the service's data folder has none yet.
    """
    if (data / "config.json").exists():
        return None
    if explicit:
        path = Path(explicit).expanduser().absolute()
        if not path.is_file():
            raise ValueError(f"--config {explicit}: no such file")
        _usable_at(path, data / "config.json")
        return path
    from ..tap import default_data_dir

    candidates = [default_data_dir() / "config.json"]
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user:  # `sudo` may have kept root's HOME: the admin's own first start too
        try:
            import pwd

            candidates.append(Path(pwd.getpwnam(sudo_user).pw_dir) / "MedImage" / "config.json")
        except KeyError:
            pass
    found = next((path for path in candidates if path.is_file()), None)
    if found is not None:
        _usable_at(found, data / "config.json")
    return found


def _usable_at(config: Path, new_place: Path) -> None:
    """
    Refuse, before anything changes, a config that cannot work from the
    service's folder (files named by relative paths).
    """
    from ..config import ConfigError, load_config, parse_config

    try:
        parse_config(load_config(config).raw, new_place)
    except ConfigError as e:
        raise ValueError(f"{config} cannot be carried into {new_place.parent}: {e}; fix it, or give "
                         f"--config another file") from None


def _user_exists(user: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(user)
        return True
    except KeyError:
        return False


def _useradd(user: str, data: Path) -> list[str]:
    return ["useradd", "--system", "--home-dir", str(data), "--no-create-home", "--shell", "/usr/sbin/nologin", user]


def _plan(name: str, user: str, data: Path, carry: Optional[Path], unit: Path) -> list[str]:
    """
    What install does, for --dry-run (stderr: the unit alone goes to stdout).
    """
    if _user_exists(user):
        first = f"- run it as the existing user {user}"
    else:
        first = f"- create the system user {user}: {shlex.join(_useradd(user, data))}"
    if (data / "config.json").exists():
        config = f"- use the config.json already in {data}"
    elif carry is not None:
        config = (f"- copy {carry} (the clinic's settings: folder, pairing) and its addons folder into {data}, "
                  f"owned by {user}")
    else:
        config = f"- no config.json to carry: the service's first start writes the defaults in {data}"
    return ["medimage-tx service install would:", first, f"- make {data}, owned by {user}", config,
            f"- write {unit} (below), then: systemctl daemon-reload; systemctl enable --now {name}.service",
            f"The user {user} needs write access to the practice folder (backupTo) and any network share "
            f"(README, Start at boot).", ""]


def _install(name: str, user: str, data: Path, text: str, unit: Path, carry: Optional[Path],
             server_options: list[str]) -> int:
    if os.geteuid() != 0:
        print("medimage-tx service install: needs root (sudo)", file=sys.stderr)
        return 1
    if shutil.which("systemctl") is None:
        print("medimage-tx service install: no systemctl here; print the unit with --dry-run and "
              "install it the way this system starts services", file=sys.stderr)
        return 1
    import pwd

    if not _user_exists(user):
        _run(_useradd(user, data))
    entry = pwd.getpwnam(user)
    from ..pc.service_user import ServiceUser

    owner = ServiceUser(entry.pw_uid, entry.pw_gid, "--user")
    data.mkdir(parents=True, exist_ok=True)
    os.chown(data, owner.uid, owner.gid)
    carried = _carry(carry, data, owner) if carry is not None else []
    _build_plugin_cache()
    unreachable = _not_reachable_by_others(Path(serve_command()[0]))
    if unreachable:
        print(f"warning: {unreachable} is closed to other users, so the service user cannot start the "
              "server: install it under /opt (README)", file=sys.stderr)
    for line in _unwritable_targets(data / "config.json", owner):
        print(f"warning: {line}", file=sys.stderr)
    busy = _port_taken(data / "config.json", server_options)
    if busy:
        print(f"warning: {busy}", file=sys.stderr)
    unit.write_text(text)
    _run(["systemctl", "daemon-reload"])
    _run(["systemctl", "enable", "--now", f"{name}.service"])
    for line in carried:
        print(line)
    print(f"Installed {unit}: the server runs now and at every boot, as user {user}, with its data "
          f"in {data}.\nStatus: medimage-tx service status --name {name} (or systemctl status {name})   "
          f"Log: journalctl -u {name}")
    return 0


def _carry(config: Path, data: Path, owner) -> list[str]:
    """
    The first start's config.json (and the add-ons installed beside it)
    into the service's data folder, the service user's.
    """
    from ..config import write_bytes_atomically
    from ..pc.service_user import give_tree, writing_as

    lines = []
    content = config.read_bytes()  # as root: the first start's may be root's alone
    with writing_as(owner):
        write_bytes_atomically(data / "config.json", content)
    lines.append(f"Copied {config} (the clinic's settings: folder, pairing) to {data / 'config.json'}.")
    addons = config.parent / "addons"
    if addons.is_dir() and not (data / "addons").exists():
        shutil.copytree(addons, data / "addons", symlinks=True)
        give_tree(owner, data / "addons")
        lines.append(f"Copied its add-ons ({addons}) to {data / 'addons'}.")
    lines.append(f"Photos already received stay in {config.parent / 'photos'}; the service files new ones.")
    return lines


def _unwritable_targets(config_path: Path, owner) -> list[str]:
    """
    The backupTo folders the service user cannot write (a folder the
    README says to give it; checked as that user).
    """
    from ..config import ConfigError, load_config, resolve_path
    from ..pc.service_user import writing_as

    try:
        config = load_config(config_path)
    except (ConfigError, OSError):
        return []
    out = []
    with writing_as(owner):
        for configured in config.backupTo:
            folder = resolve_path(configured, config_path.parent)
            if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK, effective_ids=True):
                out.append(f"the service user cannot write {folder}: give it write access (README, Start at boot)")
    return out


def _port_taken(config_path: Path, server_options: list[str]) -> str:
    """
    Why the service could not listen on its port now (the README's first
    start, `make run`, still running in a terminal: it keeps no pid file),
    or "".
    """
    from ..config import ConfigError, load_config
    from ..tap import listen_problem

    port = None
    for option, value in zip(server_options, server_options[1:]):
        if option in ("--port", "-p") and value.isdigit():
            port = int(value)
    if port is None:
        try:
            port = load_config(config_path).listenPort if config_path.exists() else 5566
        except (ConfigError, OSError):
            return ""
    problem = listen_problem(port, "0.0.0.0")
    if problem is None:
        return ""
    return (f"port {port}: {problem}: another server holds it (the first start still running? stop it, "
            f"Ctrl-C); the service starts once it is free")


def _status(name: str, unit: Path) -> int:
    if not unit.exists():
        print(f"{name} is not installed (no {unit}); install it with: medimage-tx service install", file=sys.stderr)
        return 3  # systemctl's "not running"
    text = unit.read_text()
    user = next((line.split("=", 1)[1] for line in text.splitlines() if line.startswith("User=")), "?")
    exec_start = next((line.split("=", 1)[1] for line in text.splitlines() if line.startswith("ExecStart=")), "")
    argv = shlex.split(exec_start)
    data = argv[argv.index("--data") + 1] if "--data" in argv[:-1] else "?"
    config = argv[argv.index("--config") + 1] if "--config" in argv[:-1] else f"{data}/config.json"
    print(f"{name}: {unit}, as user {user}, data in {data}, config {config}")
    sys.stdout.flush()
    return subprocess.run(["systemctl", "status", "--no-pager", f"{name}.service"]).returncode


def _uninstall(name: str, unit: Path) -> int:
    if os.geteuid() != 0:
        print("medimage-tx service uninstall: needs root (sudo)", file=sys.stderr)
        return 1
    if not unit.exists():
        print(f"{name} is not installed (no {unit}): nothing to do", file=sys.stderr)
        return 1
    text = unit.read_text()
    user = next((line.split("=", 1)[1] for line in text.splitlines() if line.startswith("User=")), "")
    argv = shlex.split(next((line.split("=", 1)[1] for line in text.splitlines()
                             if line.startswith("ExecStart=")), ""))
    data = argv[argv.index("--data") + 1] if "--data" in argv[:-1] else ""
    _run(["systemctl", "disable", "--now", f"{name}.service"])
    unit.unlink()
    _run(["systemctl", "daemon-reload"])
    print(f"Stopped {name}, disabled it and removed {unit}.")
    if data:
        print(f"Kept its data folder {data} (config.json, photos, add-ons) and the user {user}; "
              f"remove them by hand when no longer needed (rm -r {data}; userdel {user}).")
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
