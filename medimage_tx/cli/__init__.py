"""
The `medimage-tx` command (also `python -m medimage_tx`).

Each subcommand is a module in L{medimage_tx.cli} with:

  - C{HELP}: one line for the command list;
  - C{add_arguments(parser)}: its options (an C{argparse} parser);
  - C{run(args) -> int}: the exit status;
  - optionally C{PASS_THROUGH = True}: the parser takes no options of its own
    and C{args.rest} holds everything after the subcommand's name (C{serve}
    hands its options to twistd).

Adding a subcommand is writing that module and one line in L{COMMANDS}.
Modules import their heavy dependencies inside C{run}, so listing the
commands stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__

PROG = "medimage-tx"

COMMANDS: dict[str, str] = {
    "serve": "medimage_tx.cli.serve",
    "pair": "medimage_tx.cli.pair",
    "discover": "medimage_tx.cli.discover",
    "send": "medimage_tx.cli.send",
    "service": "medimage_tx.cli.service",
    "migrate": "medimage_tx.cli.migrate",
    "addon": "medimage_tx.cli.addon",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="MedImage server for clinics: photos from phones into the clinic's folders.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        if getattr(module, "PASS_THROUGH", False):
            sub = subparsers.add_parser(name, help=module.HELP, add_help=False)
        else:
            sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
            module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        module = importlib.import_module(COMMANDS[argv[0]])
        if getattr(module, "PASS_THROUGH", False):
            # argparse cannot hand on options it does not know; do it here.
            return module.run(argparse.Namespace(command=argv[0], rest=argv[1:]))
    args = build_parser().parse_args(argv)
    return args.run(args)


def entry_point() -> None:
    """
    The console script: the exit status from L{main}.
    """
    sys.exit(main())
