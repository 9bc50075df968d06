"""
What one add-on costs per photo: uploads/s to a real `twistd medimage`
process on loopback with no add-on, and with one `medium` photoWritten
add-on that does nothing (`true param1`), in alternating rounds; and what
starting a process costs on this machine, measured alone.

    .venv/bin/python bench/addon_cost.py [--rounds 3] [--uploads 240] [--clients 16]

Per configuration: uploads/s answered (the phone's 200), uploads/s until
every photo is in the target folder (with an add-on, copies come after
it), server CPU per upload (the server and the add-on processes it
started).  Process start: `true` started and awaited with the server's own
runner (reactor.spawnProcess), one at a time and four at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from upload_load import run_load, start_server  # noqa: E402


def cpu_with_children(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def wait_for_files(folder: Path, count: int, limit: float = 300.0) -> float:
    deadline = time.perf_counter() + limit
    while time.perf_counter() < deadline:
        if sum(1 for p in folder.rglob("*.jpg")) >= count:
            return time.perf_counter()
        time.sleep(0.01)
    raise SystemExit(f"only {sum(1 for p in folder.rglob('*.jpg'))} of {count} photos were copied")


def one_round(work: Path, with_addon: bool, clients: int, uploads: int, photo: bytes) -> dict:
    data, target = work / "data", work / "clinic"
    shutil.rmtree(work, ignore_errors=True)
    target.mkdir(parents=True)
    (data / "addons").mkdir(parents=True)
    events = [{"addon": "noop", "runProcess": "true param1", "priority": "medium", "active": True}] \
        if with_addon else []
    (data / "addons" / "config.json").write_text(json.dumps({"events": {"photoWritten": events}}))
    process, port = start_server(data, {"lanMode": False, "backupTo": [str(target)], "keepMaster": False})
    try:
        warm = min(clients * 2, uploads)
        asyncio.run(run_load(port, clients, warm, photo))
        try:
            wait_for_files(target, warm, limit=60)
        except SystemExit:
            staged = [str(p) for p in (data / "photos").rglob("*") if p.is_file()]
            print("staged:", staged, "pending:", list((data / "pending").iterdir()), file=sys.stderr)
            print((data / "server.log").read_text()[-5000:], file=sys.stderr)
            raise
        cpu_before = cpu_with_children(process.pid)
        started = time.perf_counter()
        elapsed, latencies, failures = asyncio.run(run_load(port, clients, uploads, photo))
        # The warm-up names are the first of the load's (same bytes: retries).
        copied = wait_for_files(target, max(warm, uploads)) - started
        cpu = cpu_with_children(process.pid) - cpu_before
    finally:
        process.terminate()
        process.wait()
    return {"answered": uploads / elapsed, "copied": uploads / copied, "failed": len(failures),
            "cpu_ms": cpu / uploads * 1000, "p50_ms": statistics.median(latencies) * 1000}


def process_start_cost(count: int = 200) -> dict:
    """
    Start and await `true` with the server's runner, in another folder as
    the server does: wall time, and CPU of this process and of the
    children, per process.
    """
    from twisted.internet import defer, task

    from medimage_tx.addons.command import build_command
    from medimage_tx.addons.runner import run_process

    command = build_command("true param1", "medium", {"param1": "/tmp/x.jpg"})
    figures = {}
    folder = tempfile.mkdtemp(prefix="medimage-bench-cwd-")

    async def measure(reactor):
        for parallel in (1, 4):
            before, wall_before = os.times(), time.perf_counter()
            for _ in range(count // parallel):
                results = await defer.gatherResults([
                    run_process(reactor, command, folder, dict(os.environ), 30) for _ in range(parallel)])
                assert all(r.ok for r in results)
            after = os.times()
            figures[parallel] = {
                "wall_ms": (time.perf_counter() - wall_before) / count * 1000,
                "parent_ms": (after[0] + after[1] - before[0] - before[1]) / count * 1000,
                "children_ms": (after[2] + after[3] - before[2] - before[3]) / count * 1000}

    try:
        task.react(lambda reactor: defer.ensureDeferred(measure(reactor)))
    except SystemExit:
        pass
    os.rmdir(folder)
    return figures


def print_start_cost() -> None:
    for parallel, figure in process_start_cost().items():
        print(f"process start (true, {parallel} at a time): {figure['wall_ms']:.2f} ms wall, CPU "
              f"{figure['parent_ms']:.2f} ms in the starting process + {figure['children_ms']:.2f} ms "
              f"in the process, per process")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--uploads", type=int, default=240)
    parser.add_argument("--size-mb", type=float, default=3.0)
    parser.add_argument("--start-only", action="store_true", help="only the process start cost")
    args = parser.parse_args()
    if args.start_only:
        print_start_cost()
        return
    photo = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + os.urandom(int(args.size_mb * 1024 * 1024) - 13) + b"\xff\xd9"
    base = Path(tempfile.mkdtemp(prefix="medimage-bench-", dir=os.environ.get("BENCH_DIR")))
    results: dict[bool, list[dict]] = {False: [], True: []}
    try:
        for _ in range(args.rounds):
            for with_addon in (False, True):
                results[with_addon].append(one_round(base / "round", with_addon, args.clients,
                                                     args.uploads, photo))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"uploads: {args.uploads} x {args.size_mb:g} MB, {args.clients} clients, one target (move), "
          f"{args.rounds} alternating rounds")
    print("| add-on | uploads/s answered | uploads/s copied | server+add-on CPU / upload | p50 | failed |")
    print("| --- | --- | --- | --- | --- | --- |")
    for with_addon in (False, True):
        for r in results[with_addon]:
            print(f"| {'one medium no-op' if with_addon else 'none'} | {r['answered']:.1f} | "
                  f"{r['copied']:.1f} | {r['cpu_ms']:.1f} ms | {r['p50_ms']:.0f} ms | {r['failed']} |")
    none = statistics.median(r["copied"] for r in results[False])
    one = statistics.median(r["copied"] for r in results[True])
    cpu_none = statistics.median(r["cpu_ms"] for r in results[False])
    cpu_one = statistics.median(r["cpu_ms"] for r in results[True])
    print(f"median uploads/s copied: none {none:.1f}, with the add-on {one:.1f} ({(one / none - 1) * 100:+.0f} %); "
          f"CPU per upload {cpu_none:.1f} -> {cpu_one:.1f} ms ({cpu_one - cpu_none:+.1f} ms)")
    print_start_cost()


if __name__ == "__main__":
    main()
