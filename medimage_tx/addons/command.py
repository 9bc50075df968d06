"""
How an add-on's C{runProcess} line becomes a process to start, as the
original server builds it (C{runCommandPhotoWritten} and C{myExec} in its
C{bin/server.js}):

- the words C{parentdir}, C{param1}, C{param2}, C{param3} are replaced by
  the server's folder and the event's values;
- C{priority} C{high} and C{medium} start the program directly (no shell),
  the line split at spaces; a leading C{node} is the Node.js on this machine;
- C{low}, and an entry without a priority, run the line through the shell,
  so pipes and redirections work;
- C{glacial} starts the program directly, at low CPU priority.

Two things differ on purpose: the line is split before the values go in,
so a value with spaces stays one argument, and values given to the shell
are quoted, so a file name or a query can never become shell syntax.  A
C{high} Node.js module written to be embedded (it exports C{medImage})
is run by a small loader that calls that function, since this server
cannot load Node.js modules into itself.

Plain Python: no processes are started here.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from typing import Mapping, Optional

PRIORITIES = ("high", "medium", "low", "glacial")
_WORDS = re.compile(r"parentdir|param1|param2|param3")

#: Loads an embeddable Node.js add-on and calls its medImage(argv, callback)
#: the way the original server did for priority "high"; a script without
#: that function has already run when it was loaded.
NODE_LOADER = (
    "const script = require('path').resolve(process.argv[1]);"
    "process.argv = [process.argv[0], script].concat(process.argv.slice(2));"
    "const addon = require(script);"
    "if (addon && typeof addon.medImage === 'function') {"
    " addon.medImage(process.argv.slice(2), function (err, ret) {"
    "  ret = ret || {};"
    "  if (ret.stdout) process.stdout.write(String(ret.stdout) + '\\n');"
    "  if (ret.stderr) process.stderr.write(String(ret.stderr) + '\\n');"
    "  if (err) process.stderr.write('Error: ' + err + '\\n');"
    "  process.stdout.write('', function () { process.exit(err ? 1 : 0); });"
    " });"
    "}"
)


class CannotRun(Exception):
    """
    The line cannot be started (empty, or its program is not installed).
    """


@dataclass(frozen=True)
class Command:
    """
    A process to start: C{argv[0]} is a full path; C{low_priority} asks
    for a lower CPU priority once it runs.
    """

    argv: tuple[str, ...]
    low_priority: bool = False


def substitute(text: str, values: Mapping[str, str]) -> str:
    """
    Replace the words C{parentdir}, C{param1}..C{param3} in one pass (a
    value that contains one of the words is not replaced again).
    Words without a value stay as they are.
    """
    return _WORDS.sub(lambda m: values.get(m.group(0), m.group(0)), text)


def build_command(
    run_process: str,
    priority: Optional[str],
    values: Mapping[str, str],
    *,
    which=shutil.which,
    os_name: str = os.name,
) -> Command:
    """
    The process for an add-on line.

    @param values: the replacement of each word (C{parentdir}, C{param1}..).
    @raise CannotRun: nothing to run, or the program is not found.
    """
    words = run_process.split()
    if not words:
        raise CannotRun("the add-on has no runProcess command")
    if priority not in ("high", "medium", "glacial"):
        return _shell_command(run_process, values, which, os_name)
    argv = [substitute(word, values) for word in words]
    if argv[0] == "node":
        node = _node(which)
        if priority == "high" and len(argv) > 1:
            argv = [node, "-e", NODE_LOADER] + argv[1:]
        else:
            argv[0] = node
    else:
        argv[0] = _program(argv[0], values.get("parentdir"), which)
    if priority == "glacial":
        nice = which("nice") if os_name != "nt" else None
        if nice:
            return Command(tuple([nice, "-n", "10"] + argv))  # as the original's "nice -10"
        return Command(tuple(argv), low_priority=True)  # lowered once it runs (Windows)
    return Command(tuple(argv))


def _shell_command(run_process: str, values: Mapping[str, str], which, os_name: str) -> Command:
    if os_name == "nt":
        quoted = {k: subprocess.list2cmdline([v]) for k, v in values.items()}
        shell = os.environ.get("COMSPEC", "cmd.exe")
        return Command((shell, "/d", "/s", "/c", substitute(run_process, quoted)))
    quoted = {k: shlex.quote(v) for k, v in values.items()}
    line = substitute(run_process, quoted)
    if line.split()[0] == "node":
        # The original ran "node" as the server's own Node.js.
        line = shlex.quote(_node(which)) + line.lstrip()[len("node"):]
    return Command(("/bin/sh", "-c", line))


def _node(which) -> str:
    found = which("node") or which("nodejs")
    if found is None:
        raise CannotRun("the add-on needs Node.js (node), which is not installed")
    return found


def _program(name: str, parent_dir: Optional[str], which) -> str:
    if os.sep in name or "/" in name:
        path = name if os.path.isabs(name) or parent_dir is None else os.path.join(parent_dir, name)
        if os.path.isfile(path):
            return path
        raise CannotRun(f"the program {name} does not exist")
    found = which(name)
    if found is None:
        raise CannotRun(f"the program {name} is not installed (not found on PATH)")
    return found
