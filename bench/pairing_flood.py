"""
A phone's upload latency on a relay while its pairing service is flooded
with code issues (issue 9, finding 7).  A real relay (`twistd medimage`
process on loopback); flooders on their own connections, each from its own
127.0.6.x address, pipeline batches of code issues (`POST /med-genid.php`)
as fast as the relay answers, while a phone-like client uploads 1 MB
photos one at a time.  Prints the upload latency without and with the
flood, and how the issues were answered.

    .venv/bin/python bench/pairing_flood.py [--flooders 4] [--batch 200] [--uploads 20]
    .venv/bin/python bench/pairing_flood.py --twistd /path/to/other/.venv/bin/twistd   # another build
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import multiprocessing
import time
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from conftest import jpeg_bytes, multipart  # noqa: E402  (test fixtures: a valid JPEG)

PAIRED_ID = "BenchPairedId0000001"


def start(twistd: str, data: Path) -> tuple[subprocess.Popen, int]:
    data.mkdir(parents=True)
    (data / "config.json").write_text(json.dumps(
        {"allowPhotosLeaving": True, "allowGettingRemotePhotos": False, "lanMode": False}))
    log = data / "server.log"
    process = subprocess.Popen(
        [twistd, "--nodaemon", "--pidfile=", "--logfile", str(log), "medimage",
         "--data", str(data), "--port", "0", "--interface", "127.0.0.1"], cwd=data)
    deadline = time.time() + 30
    while time.time() < deadline:
        match = re.search(r"listening on port (\d+)", log.read_text() if log.exists() else "")
        if match:
            return process, int(match.group(1))
        time.sleep(0.05)
    process.kill()
    raise SystemExit("the relay did not start")


def read_answer(stream) -> tuple[int, bytes]:
    """
    One answer; raises L{EOFError} if the server closed the connection.
    """
    line = stream.readline()
    if not line:
        raise EOFError
    status = int(line.split()[1])
    length = 0
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, stream.read(length)


def issue_request(port: int) -> bytes:
    body = urlencode({"guid": "", "proxyServer": f"http://127.0.0.1:{port}", "country": "NZ"}).encode()
    return (b"POST /med-genid.php HTTP/1.1\r\nHost: relay\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


def flood(port: int, source: str, batch: int, stop, answers, kind: str = "issue") -> None:
    """
    One flooder, in its own process (so the measuring client never waits
    for the GIL); C{answers} counts answers by status.
    """
    request = issue_request(port) if kind == "issue" else b"GET /check=x.jpg HTTP/1.1\r\nHost: relay\r\n\r\n"
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=120, source_address=(source, 0)) as s:
                s.sendall(request * batch)
                stream = s.makefile("rb")
                for _ in range(batch):
                    status, _ = read_answer(stream)
                    answers[str(status)] = answers.get(str(status), 0) + 1
        except EOFError:
            # Closed by the relay (past a limit): a new connection, and on.
            answers["closed"] = answers.get("closed", 0) + 1
        except OSError:
            answers["error"] = answers.get("error", 0) + 1


def upload_latencies(port: int, count: int, photo: bytes) -> list[float]:
    latencies = []
    for i in range(count):
        body, content_type = multipart(f"#{PAIRED_ID}-#P{i}-photo.jpg", photo)
        request = (b"POST /api/photo HTTP/1.1\r\nHost: relay\r\nContent-Type: " + content_type +
                   b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=300) as s:
            s.sendall(request)
            status, _ = read_answer(s.makefile("rb"))
        latencies.append((time.perf_counter() - started) * 1000)
        if status != 200:
            raise SystemExit(f"upload answered {status}")
    return latencies


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


def summary(latencies: list[float]) -> str:
    return (f"p50 {statistics.median(latencies):.0f} ms, max {max(latencies):.0f} ms "
            f"({len(latencies)} uploads)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--twistd", default=str(Path(sys.executable).parent / "twistd"))
    parser.add_argument("--flooders", type=int, default=4)
    parser.add_argument("--batch", type=int, default=200, help="issues pipelined per connection")
    parser.add_argument("--uploads", type=int, default=20)
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of flood before measuring")
    parser.add_argument("--kind", choices=["issue", "check"], default="issue",
                        help="what to pipeline: code issues, or cheap GET /check= requests")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pairing-flood-"))
    process, port = start(args.twistd, work / "relay")
    photo = jpeg_bytes(1_000_000)
    try:
        quiet = upload_latencies(port, args.uploads, photo)
        manager = multiprocessing.Manager()
        stop, answers = manager.Event(), manager.dict()
        flooders = [multiprocessing.Process(target=flood, args=(port, f"127.0.6.{n + 1}", args.batch, stop, answers, args.kind))
                    for n in range(args.flooders)]
        started = time.perf_counter()
        for thread in flooders:
            thread.start()
        time.sleep(args.warmup)
        flooded = upload_latencies(port, args.uploads, photo)
        stop.set()
        seconds = time.perf_counter() - started
        answers, cpu = dict(answers), cpu_seconds(process.pid)  # while measuring
        for thread in flooders:
            # A flooder the relay has paused waits on its socket: end it.
            thread.terminate()
            thread.join()
        print(f"relay: {args.twistd}")
        print(f"uploads, no flood:   {summary(quiet)}")
        print(f"uploads, with flood: {summary(flooded)}")
        total = sum(v for k, v in answers.items() if k.isdigit())
        print(f"flood: {args.flooders} addresses x {args.batch} pipelined {args.kind} requests; {total} answered in "
              f"{seconds:.1f} s ({total / seconds:.0f}/s): " +
              ", ".join(f"{k}: {v}" for k, v in sorted(answers.items(), key=str)))
        print(f"relay CPU: {cpu:.1f} s")
    finally:
        process.terminate()
        process.wait(30)
        if os.environ.get("KEEP_BENCH_LOG"):
            print((work / "relay" / "server.log").read_text()[-3000:])
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
