"""
Load test of direct uploads: N phone-like clients upload 3 MB JPEGs with
unique names, each client from its own loopback address, as fast as the
server answers, to a real `twistd medimage`
process on loopback.  Prints uploads/s, MB/s, p50/p99 latency and the
server's peak RSS.

    .venv/bin/python bench/upload_load.py [--clients 16] [--uploads 480] [--size-mb 3]

The client is plain asyncio sockets sending prebuilt bodies, so that the
figures measure the server, not the client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TWISTD = Path(sys.executable).parent / "twistd"


def start_server(data: Path, config: dict) -> tuple[subprocess.Popen, int]:
    data.mkdir(parents=True, exist_ok=True)
    (data / "config.json").write_text(json.dumps(config))
    process = subprocess.Popen(
        [str(TWISTD), "--nodaemon", "--pidfile=", "--logfile", str(data / "server.log"),
         "medimage", "--data", str(data), "--port", "0", "--interface", "127.0.0.1"],
        cwd=data,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        log = (data / "server.log").read_text() if (data / "server.log").exists() else ""
        match = re.search(r"listening on port (\d+)", log)
        if match:
            return process, int(match.group(1))
        time.sleep(0.05)
    process.kill()
    raise SystemExit("the server did not start:\n" + log)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def request_bytes(port: int, name: str, photo: bytes) -> tuple[bytes, bytes, bytes]:
    boundary = "----medimagebench" + os.urandom(8).hex()
    head = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nphoto\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file1\"; filename=\"{name}\"\r\n"
        f"Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    length = len(head) + len(photo) + len(tail)
    headers = (
        f"POST /api/photo HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()
    return headers + head, photo, tail


async def read_response(reader: asyncio.StreamReader) -> int:
    status = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return int(status.split()[1])


def phone_address(n: int) -> str:
    """
    Phone C{n}'s own loopback address (127.0.0.10 on): the server's request
    budget counts per address, and real phones do not share one.
    """
    return f"127.0.{(10 + n) // 250}.{(10 + n) % 250 + 1}"


async def client(port: int, names: list[str], photo: bytes, latencies: list[float], failures: list,
                 source: str = "127.0.0.1") -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    for name in names:
        head, body, tail = request_bytes(port, name, photo)
        started = time.perf_counter()
        writer.write(head)
        writer.write(body)
        writer.write(tail)
        await writer.drain()
        code = await read_response(reader)
        latencies.append(time.perf_counter() - started)
        if code != 200:
            failures.append((name, code))
    writer.close()
    await writer.wait_closed()


async def run_load(port: int, clients: int, uploads: int, photo: bytes) -> tuple[float, list[float], list]:
    latencies: list[float] = []
    failures: list = []
    names = [f"#BENCH{i % 50:02d}-photo-{i:05d}.jpg" for i in range(uploads)]
    started = time.perf_counter()
    await asyncio.gather(*(
        client(port, names[c::clients], photo, latencies, failures, phone_address(c)) for c in range(clients)
    ))
    return time.perf_counter() - started, latencies, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--uploads", type=int, default=480)
    parser.add_argument("--size-mb", type=float, default=3.0)
    parser.add_argument("--target", choices=["none", "move", "copy"], default="move",
                        help="backupTo: none; one target on the same disk with keepMaster false (move); "
                             "or one target with keepMaster true (copy)")
    args = parser.parse_args()
    photo = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + os.urandom(int(args.size_mb * 1024 * 1024) - 13) + b"\xff\xd9"
    work = Path(tempfile.mkdtemp(prefix="medimage-bench-", dir=os.environ.get("BENCH_DIR")))
    config: dict = {"lanMode": False}  # loopback only
    if args.target != "none":
        (work / "clinic").mkdir()
        config.update({"backupTo": [str(work / "clinic")], "keepMaster": args.target == "copy"})
    process, port = start_server(work / "data", config)
    try:
        asyncio.run(run_load(port, args.clients, min(args.clients * 2, args.uploads), photo))  # warm-up
        cpu_before = cpu_seconds(process.pid)
        client_before = time.process_time()
        elapsed, latencies, failures = asyncio.run(run_load(port, args.clients, args.uploads, photo))
        server_cpu = cpu_seconds(process.pid) - cpu_before
        client_cpu = time.process_time() - client_before
        rss = peak_rss_mb(process.pid)
    finally:
        process.terminate()
        process.wait()
        shutil.rmtree(work, ignore_errors=True)
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"uploads: {args.uploads} x {args.size_mb:g} MB, {args.clients} clients, target: {args.target}")
    print(f"failed: {len(failures)}")
    print(f"uploads/s: {args.uploads / elapsed:.1f}")
    print(f"MB/s: {args.uploads * len(photo) / elapsed / 1e6:.1f}")
    print(f"latency p50: {statistics.median(latencies) * 1000:.0f} ms, p99: {p99 * 1000:.0f} ms")
    print(f"server CPU: {server_cpu / args.uploads * 1000:.1f} ms per upload "
          f"({server_cpu / elapsed * 100:.0f}% of one core)")
    print(f"load client CPU: {client_cpu / elapsed * 100:.0f}% of one core")
    print(f"server peak RSS: {rss:.1f} MB")


if __name__ == "__main__":
    main()
