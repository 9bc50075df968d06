"""
Helpers for the add-on tests: real add-on scripts written into a server's
folder, the registry, and waiting for add-ons to finish.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any


def write_script(server_dir: Path, name: str, text: str) -> Path:
    """
    An executable add-on script in C{<server>/addons/test/<name>}.
    """
    path = server_dir / "addons" / "test" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def write_registry(server_dir: Path, **events: list[dict[str, Any]]) -> None:
    """
    C{addons/config.json} with these events (written while the server runs:
    it must pick them up without a restart).
    """
    path = server_dir / "addons" / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    registry = {"events": {"photoWritten": [], "fileWritten": [], "urlRequest": []}}
    registry["events"].update(events)
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps(registry))
    os.replace(temp, path)


def entry(run_process: str, priority: str = "medium", **more: Any) -> dict[str, Any]:
    return {"addon": "test", "runProcess": run_process, "priority": priority, "active": True, **more}


PYTHON = sys.executable

#: A Python add-on that records its arguments and working folder as JSON.
RECORD_ARGS = """\
import json, os, sys
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "calls.jsonl"), "a") as f:
    f.write(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd()}) + "\\n")
"""


def calls(server_dir: Path) -> list[dict]:
    path = server_dir / "addons" / "test" / "calls.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]
