"""
`medimage-tx serve`: run the server, the same service as `twistd medimage`.

It runs in the foreground (what a service manager such as systemd or NSSM
expects) unless given --daemon; every other option is the server's own
(`twistd medimage --help` lists the same ones) and is handed to twistd as is.
"""

from __future__ import annotations

import argparse
import sys

HELP = "run the server (the same as `twistd medimage`); `serve --help` for its options"
PASS_THROUGH = True

# Runner options this command takes itself; everything else goes to the server.
_FLAGS = {"--daemon": "daemon", "--nodaemon": None, "-n": None}
_PARAMETERS = ("--pidfile", "--logfile")

_HEADER = """\
Usage: medimage-tx serve [--daemon] [--pidfile PATH] [--logfile PATH] [server options]

Runs the MedImage server in the foreground, logging to the console, until
stopped (Ctrl-C or the service manager).
      --daemon          run in the background (Unix only); logs go to
                        DATA/medimage.log unless --logfile is given; it
                        says its pid, log file and how to stop it
      --pidfile PATH    process id file [default: DATA/twistd.pid]; --pidfile=
                        for none
      --logfile PATH    log to this file, rotated at 10 MB, 5 old files kept
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """
    None: this command parses its own options (L{twistd_arguments}).
    """


def twistd_arguments(rest: list[str]) -> list[str]:
    """
    The twistd command line for C{medimage-tx serve REST}.

    @raise ValueError: an option of ours without its value.
    """
    runner: list[str] = []
    server: list[str] = []
    daemon = False
    tokens = iter(rest)
    for token in tokens:
        name, has_value, value = token.partition("=")
        if token in _FLAGS:
            daemon = daemon or _FLAGS[token] == "daemon"
        elif name in _PARAMETERS:
            if not has_value:
                following = next(tokens, None)
                if following is None:
                    raise ValueError(f"{name} needs a value")
                value = following
            runner.append(f"{name}={value}")
        else:
            server.append(token)
    if not daemon:
        runner.insert(0, "--nodaemon")
    return [*runner, "medimage", *server]


def run(args: argparse.Namespace) -> int:
    if "-h" in args.rest or "--help" in args.rest:
        from ..tap import Options

        print(_HEADER)
        print(Options().getUsage(width=79))
        return 0
    try:
        argv = twistd_arguments(args.rest)
    except ValueError as e:
        print(f"medimage-tx serve: {e}", file=sys.stderr)
        return 2
    if "--nodaemon" not in argv and sys.platform == "win32":
        print("medimage-tx serve: --daemon is for Unix; on Windows run it as a service (README)",
              file=sys.stderr)
        return 2

    from twisted.python import usage
    from twisted.scripts.twistd import ServerOptions, runApp

    config = ServerOptions()
    try:
        config.parseOptions(argv)
    except usage.UsageError as e:
        print(f"medimage-tx serve: {e}", file=sys.stderr)
        return 2
    if config["nodaemon"]:
        runApp(config)
        return 0
    return _run_daemon(argv, config)


def _run_daemon(argv: list[str], config) -> int:
    """
    twistd's daemon start, run as a child: it ends once the daemon has
    started (0) or failed to (1, its line on stderr); then this process
    says where the server went: its pid, its log, how to stop it.  (A
    child, because twistd's own launching process ends inside twistd.)
    """
    import subprocess

    started = subprocess.run([sys.executable, "-c", _TWISTD, *argv])
    if started.returncode == 0:
        print(started_line(config["pidfile"] or "", config["logfile"] or ""))
    return started.returncode


# twistd's public entry point; it reads its options from sys.argv[1:].
_TWISTD = "from twisted.scripts.twistd import run; run()"


def started_line(pidfile: str, logfile: str) -> str:
    from pathlib import Path

    try:
        pid = Path(pidfile).read_text().strip() if pidfile else ""
    except OSError:
        pid = ""
    log = f"log in {logfile}" if logfile and logfile != "-" else "log to syslog"
    if not pid:
        return f"medimage: started in the background ({log}, no pid file)"
    return (f"medimage: started in the background, pid {pid} (in {pidfile}), {log}. "
            f"Stop it with: kill {pid}")
