"""
Relay nodes on one PostgreSQL (docs/relay-cluster.md) against one node on
the local store.

    .venv/bin/python bench/relay_cluster.py throughput [--nodes 3] [--photos 240]
    .venv/bin/python bench/relay_cluster.py throughput --local
    .venv/bin/python bench/relay_cluster.py latency [--local] [--photos 40]
    .venv/bin/python bench/relay_cluster.py idle [--nodes 3] [--polls 20000]
    .venv/bin/python bench/relay_cluster.py idle --local --polls 5000

throughput: phones (plain asyncio sockets, one keep-alive connection each,
each from its own loopback address as real phones are) upload 3 MB JPEGs as fast as the relay answers, through HAProxy to the
nodes; PC-like readers long-poll with acknowledgement (B4) through HAProxy,
one per paired id, and confirm each photo.  Prints uploads/s, MB/s, upload
latency, and delivery latency (the phone's 200 to the reader holding the
whole photo) p50/p99, which here includes waiting behind the photos queued
before it.  PostgreSQL runs with fsync on, as in production.

latency: one photo at a time; the phone's 200 to a long-polling reader
holding the whole photo, p50/p99.

idle: PC-like long polls (wait=60, one paired id each, from many loopback
addresses so the per-address connection cap is not what is measured) held
directly on the nodes; prints the nodes' memory held per poll (the growth
of the nodes' resident memory, all nodes together, over the number held).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from haproxy_front import haproxy_argv, haproxy_config  # noqa: E402
from postgres_server import ThrowawayPostgres, free_port  # noqa: E402
from upload_load import cpu_seconds, phone_address, read_response, request_bytes, start_server  # noqa: E402

RELAY = {"allowPhotosLeaving": True, "allowGettingRemotePhotos": False, "lanMode": False}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def paired_id(n: int) -> str:
    return f"BenchPairing{n:08d}"


class Cluster:
    """
    The relay under test: one node on the local store, or N nodes on one
    PostgreSQL behind HAProxy.  C{front} is the port phones and PCs use.
    """

    def __init__(self, work: Path, nodes: int, local: bool, front: bool = True):
        self.processes: list[subprocess.Popen] = []
        self.ports: list[int] = []
        self.postgres = None
        self.haproxy = None
        config = dict(RELAY)
        if not local:
            self.postgres = ThrowawayPostgres(work / "postgres", fsync=True).init().start()
            config["relayStore"] = self.postgres.new_database()
            # Behind HAProxy the nodes learn each client's address from it.
            config["proxyProtocol"] = front
        for i in range(1 if local else nodes):
            process, port = start_server(work / f"node{i}", config)
            self.processes.append(process)
            self.ports.append(port)
        self.front = self.ports[0]
        if not local and front:
            self.front = free_port()
            cfg = work / "haproxy.cfg"
            cfg.write_text(haproxy_config(self.front, self.ports))
            self.haproxy = subprocess.Popen(haproxy_argv(cfg), stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
            time.sleep(1.0)

    def stop(self) -> None:
        for process in self.processes + ([self.haproxy] if self.haproxy else []):
            process.terminate()
        for process in self.processes + ([self.haproxy] if self.haproxy else []):
            process.wait(timeout=30)
        if self.postgres is not None:
            self.postgres.stop()


async def read_http(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status = int((await reader.readline()).split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def phone(port: int, jobs: asyncio.Queue, photo: bytes, acknowledged: dict, upload_ms: list,
                n: int = 0) -> None:
    # Each phone from its own loopback address, as real phones are: the
    # relay's request budget (20/s per address) is not what is measured.
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(phone_address(n), 0))
    while True:
        try:
            name = jobs.get_nowait()
        except asyncio.QueueEmpty:
            break
        head, body, tail = request_bytes(port, name, photo)
        started = time.perf_counter()
        writer.write(head)
        writer.write(body)
        writer.write(tail)
        await writer.drain()
        status = await read_response(reader)
        ended = time.perf_counter()
        if status != 200:
            raise SystemExit(f"upload answered {status}")
        acknowledged[name] = ended
        upload_ms.append((ended - started) * 1000)
    writer.close()


async def pc(port: int, pid: str, expected: int, delivered: dict, n: int = 0) -> None:
    # Each clinic PC from its own address too (127.0.1.x).
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(f"127.0.1.{n + 1}", 0))
    got = 0
    while got < expected:
        writer.write(f"GET /read/{pid}?wait=30 HTTP/1.1\r\nHost: relay\r\nX-MedImage-Ack: 1\r\n\r\n".encode())
        status, headers, body = await read_http(reader)
        if status != 200 or "file-name" not in headers:
            continue
        at = time.perf_counter()
        name = headers["file-name"]
        delivered[name] = at
        got += 1
        receipt = headers["x-medimage-receipt"]
        writer.write(f"DELETE /read/{pid}/{receipt} HTTP/1.1\r\nHost: relay\r\n\r\n".encode())
        status, _, _ = await read_http(reader)
        if status != 200:
            raise SystemExit(f"confirmation answered {status}")
    writer.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def throughput(cluster: Cluster, photos: int, phones: int, pcs: int, size: int) -> dict:
    photo = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + os.urandom(size) + b"\xff\xd9"
    names = [f"#{paired_id(i % pcs)}-#B{i}-photo.jpg" for i in range(photos)]
    expected = {p: sum(1 for i in range(photos) if i % pcs == p) for p in range(pcs)}
    # Warm-up: one photo per reader, not counted.
    warm: asyncio.Queue = asyncio.Queue()
    for p in range(pcs):
        warm.put_nowait(f"#{paired_id(p)}-#W-photo.jpg")
    readers = [asyncio.create_task(pc(cluster.front, paired_id(p), 1, {}, p)) for p in range(pcs)]
    await phone(cluster.front, warm, photo, {}, [])
    await asyncio.gather(*readers)
    jobs: asyncio.Queue = asyncio.Queue()
    for name in names:
        jobs.put_nowait(name)
    acknowledged: dict = {}
    delivered: dict = {}
    upload_ms: list = []
    cpu_before = sum(cpu_seconds(p.pid) for p in cluster.processes)
    started = time.perf_counter()
    readers = [asyncio.create_task(pc(cluster.front, paired_id(p), expected[p], delivered, p)) for p in range(pcs)]
    await asyncio.gather(*[phone(cluster.front, jobs, photo, acknowledged, upload_ms, n) for n in range(phones)])
    uploaded = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*readers), 120)
    cpu = sum(cpu_seconds(p.pid) for p in cluster.processes) - cpu_before
    latencies = []
    for name, at in acknowledged.items():
        pid = name[1:].split("-#", 1)[0]
        number = name.split("-#B", 1)[1].split("-", 1)[0]
        key = f"/{pid}/B{number}/photo.jpg"
        # A reader can hold the photo before the phone reads its 200: 0 ms.
        latencies.append(max(0.0, (delivered[key] - at) * 1000))
    elapsed = uploaded - started
    return {
        "uploads/s": round(photos / elapsed, 1),
        "MB/s": round(photos * len(photo) / elapsed / 1e6, 1),
        "upload p50 ms": round(statistics.median(upload_ms), 1),
        "upload p99 ms": round(percentile(upload_ms, 0.99), 1),
        "delivery p50 ms": round(statistics.median(latencies), 1),
        "delivery p99 ms": round(percentile(latencies, 0.99), 1),
        "node CPU ms/photo": round(cpu / photos * 1000, 2),
        "delivered": len(delivered),
    }


async def latency(cluster: Cluster, photos: int, size: int) -> dict:
    """
    One photo at a time: the phone's 200 to the long-polling reader holding
    the whole photo (as bench/relay_latency.py, with a PC-like reader).
    """
    photo = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + os.urandom(size) + b"\xff\xd9"
    pid = paired_id(0)
    delivered: dict = {}
    reader = asyncio.create_task(pc(cluster.front, pid, photos + 1, delivered))
    latencies = []
    for i in range(photos + 1):  # the first is a warm-up
        jobs: asyncio.Queue = asyncio.Queue()
        jobs.put_nowait(f"#{pid}-#L{i}-photo.jpg")
        acknowledged: dict = {}
        await phone(cluster.front, jobs, photo, acknowledged, [])
        key = f"/{pid}/L{i}/photo.jpg"
        while key not in delivered:
            await asyncio.sleep(0.001)
        if i:
            latencies.append(max(0.0, (delivered[key] - acknowledged[f"#{pid}-#L{i}-photo.jpg"]) * 1000))
        await asyncio.sleep(0.05)  # the reader confirms and polls again
    await asyncio.wait_for(reader, 30)
    return {
        "photos": photos,
        "delivery p50 ms": round(statistics.median(latencies), 1),
        "delivery p99 ms": round(percentile(latencies, 0.99), 1),
        "delivery max ms": round(max(latencies), 1),
    }


PER_ADDRESS = 30  # under the relay's cap of 32 connections per address
POLLS_PER_WORKER = 5000  # one process holds this many sockets (the fd limit is 20,000 here)


async def hold_polls(ports: list[int], first: int, count: int) -> int:
    """
    Open C{count} long polls (numbers C{first}...), spread over the nodes;
    returns how many were answered early (none should be).
    """
    connections = []

    async def hold(i: int) -> None:
        port = ports[i % len(ports)]
        source = f"127.{100 + (i // PER_ADDRESS) // 250}.{(i // PER_ADDRESS) % 250 + 1}.1"
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        writer.write(f"GET /read/{paired_id(i)}?wait=60 HTTP/1.1\r\nHost: relay\r\n"
                     f"X-MedImage-Ack: 1\r\n\r\n".encode())
        await writer.drain()
        connections.append((reader, writer))

    for batch in range(first, first + count, 500):
        await asyncio.gather(*[hold(i) for i in range(batch, min(first + count, batch + 500))])
    await asyncio.sleep(1)
    return sum(1 for reader, _ in connections if reader.at_eof() or len(reader._buffer))


def poll_worker(ports: list[int], first: int, count: int, pipe) -> None:
    """
    A process holding its share of the polls until told to let go.
    """
    async def run() -> None:
        answered = await hold_polls(ports, first, count)
        pipe.send(answered)
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)

    asyncio.run(run())


def idle(cluster: Cluster, polls: int) -> dict:
    import multiprocessing

    before = [rss_mb(p.pid) for p in cluster.processes]
    started = time.perf_counter()
    workers = []
    for first in range(0, polls, POLLS_PER_WORKER):
        ours, theirs = multiprocessing.Pipe()
        worker = multiprocessing.Process(target=poll_worker, args=(
            cluster.ports, first, min(POLLS_PER_WORKER, polls - first), theirs))
        worker.start()
        workers.append((worker, ours))
    answered = sum(pipe.recv() for _, pipe in workers)
    opened = time.perf_counter() - started
    time.sleep(3)  # the nodes have read every request and parked it
    after = [rss_mb(p.pid) for p in cluster.processes]
    for worker, pipe in workers:
        pipe.send("go")
        worker.join(60)
    held_mb = sum(after) - sum(before)
    return {
        "polls held": polls,
        "answered early (should be 0)": answered,
        "seconds to open": round(opened, 1),
        "nodes RSS before MB": [round(x, 1) for x in before],
        "nodes RSS after MB": [round(x, 1) for x in after],
        "KB per held poll (all nodes)": round(held_mb * 1024 / polls, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["throughput", "latency", "idle"])
    parser.add_argument("--local", action="store_true", help="one node on the local store")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--photos", type=int, default=240)
    parser.add_argument("--phones", type=int, default=8)
    parser.add_argument("--pcs", type=int, default=8)
    parser.add_argument("--size-mb", type=float, default=3.0)
    parser.add_argument("--polls", type=int, default=20000)
    args = parser.parse_args()
    # Held connections need descriptors; the nodes inherit the limit.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = Path(tempfile.mkdtemp(prefix="medimage-cluster-bench-"))
    os.chmod(work, 0o755)  # PostgreSQL's folder inside is its own user's
    # Idle polls go straight to the nodes: it is the nodes' memory we measure.
    cluster = Cluster(work, args.nodes, args.local, front=args.mode != "idle")
    try:
        size = int(args.size_mb * 1024 * 1024)
        if args.mode == "throughput":
            result = asyncio.run(throughput(cluster, args.photos, args.phones, args.pcs, size))
        elif args.mode == "latency":
            result = asyncio.run(latency(cluster, args.photos, size))
        else:
            result = idle(cluster, args.polls)
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    setup = "1 node, local store" if args.local else f"{args.nodes} nodes, PostgreSQL" + (
        ", HAProxy" if args.mode != "idle" else "")
    print(json.dumps({"setup": setup, **result}, indent=2))


if __name__ == "__main__":
    main()
