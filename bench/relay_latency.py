"""
End-to-end delivery latency, phone -> relay -> clinic PC: a real relay and a
real PC server (`twistd medimage` processes on loopback).  A phone-like
client uploads 3 MB JPEGs one at a time; latency is from the relay's 200 to
the photo being in the PC's target folder.  Run for long poll (our relay)
and legacy polling (the same relay behind a proxy that hides its B4
header, so the PC polls HEAD/GET every 5 s as the original does).

    .venv/bin/python bench/relay_latency.py [--photos 20] [--size-mb 3] [--mode both]
"""

from __future__ import annotations

import argparse
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

import treq
from twisted.internet import defer, task
from twisted.web import proxy, server

TWISTD = Path(sys.executable).parent / "twistd"
PAIRED_ID = "BenchPairedId0000001"


def start(data: Path, config: dict) -> tuple[subprocess.Popen, int]:
    data.mkdir(parents=True)
    (data / "config.json").write_text(json.dumps(config))
    log = data / "server.log"
    process = subprocess.Popen(
        [str(TWISTD), "--nodaemon", "--pidfile=", "--logfile", str(log), "medimage",
         "--data", str(data), "--port", "0", "--interface", "127.0.0.1"], cwd=data)
    deadline = time.time() + 30
    while time.time() < deadline:
        match = re.search(r"listening on port (\d+)", log.read_text() if log.exists() else "")
        if match:
            return process, int(match.group(1))
        time.sleep(0.05)
    process.kill()
    raise SystemExit(f"{data.name} did not start")


class WithoutB4(proxy.ProxyClient):
    def handleHeader(self, key, value):
        if key.lower() != b"x-medimage-relay":
            super().handleHeader(key, value)


class WithoutB4Factory(proxy.ProxyClientFactory):
    protocol = WithoutB4


class LegacyFront(proxy.ReverseProxyResource):
    """
    Our relay, looking like an original one.
    """

    proxyClientFactoryClass = WithoutB4Factory

    def getChild(self, path, request):
        return LegacyFront(self.host, self.port, self.path + b"/" + path, self.reactor)


def multipart(name: str, photo: bytes) -> tuple[bytes, bytes]:
    boundary = "----bench" + os.urandom(8).hex()
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file1\"; filename=\"{name}\"\r\n"
        f"Content-Type: image/jpeg\r\n\r\n"
    ).encode() + photo + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}".encode()


async def wait_for(reactor, path: Path, timeout: float = 30.0) -> float:
    deadline = time.perf_counter() + timeout
    while not path.exists():
        if time.perf_counter() > deadline:
            raise TimeoutError(path)
        await task.deferLater(reactor, 0.001)
    return time.perf_counter()


async def run_mode(reactor, work: Path, mode: str, photos: int, size: int) -> list[float]:
    relay, relay_port = start(work / f"relay-{mode}", {"allowPhotosLeaving": True,
                                                      "allowGettingRemotePhotos": False})
    read_port, front = relay_port, None
    if mode == "legacy":
        front = reactor.listenTCP(0, server.Site(LegacyFront("127.0.0.1", relay_port, b"")),
                                  interface="127.0.0.1")
        read_port = front.getHost().port
    target = work / f"clinic-{mode}"
    target.mkdir()
    pc, _ = start(work / f"pc-{mode}", {
        "readProxy": f"http://127.0.0.1:{read_port}/read/{PAIRED_ID}", "globalId": PAIRED_ID,
        "backupTo": [str(target)], "keepMaster": False, "lanMode": False})
    latencies = []
    try:
        for i in range(photos + 1):
            photo = b"\xff\xd8\xff\xe0" + os.urandom(size - 6) + b"\xff\xd9"
            body, content_type = multipart(f"#{PAIRED_ID}-#BENCH-photo-{mode}-{i}.jpg", photo)
            response = await treq.post(f"http://127.0.0.1:{relay_port}/api/photo", data=body,
                                       headers={b"Content-Type": [content_type]}, persistent=False)
            await response.content()
            assert response.code == 200, response.code
            on_relay = time.perf_counter()
            arrived = await wait_for(reactor, target / "BENCH" / f"photo-{mode}-{i}.jpg")
            if i:  # the first photo warms up connections
                latencies.append(arrived - on_relay)
            if mode == "legacy":
                # Photos arrive at random moments of the 5 s poll cycle, as in a clinic.
                await task.deferLater(reactor, (i * 0.37) % 5)
        lost = photos + 1 - len(list((target / "BENCH").iterdir()))
    finally:
        for process in (pc, relay):
            process.terminate()
            process.wait()
        if front is not None:
            await front.stopListening()
    return latencies, lost


def report(mode: str, latencies: list[float], lost: int) -> None:
    ordered = sorted(latencies)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    print(f"{mode}: {len(latencies)} photos, lost {lost}; latency p50 "
          f"{statistics.median(ordered) * 1000:.0f} ms, p90 {p90 * 1000:.0f} ms, "
          f"max {ordered[-1] * 1000:.0f} ms")


async def main(reactor, args) -> None:
    work = Path(tempfile.mkdtemp(prefix="medimage-relay-bench-"))
    try:
        modes = ["long-poll", "legacy"] if args.mode == "both" else [args.mode]
        for mode in modes:
            latencies, lost = await run_mode(reactor, work, mode, args.photos, int(args.size_mb * 1024 * 1024))
            report(mode, latencies, lost)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=20)
    parser.add_argument("--size-mb", type=float, default=3.0)
    parser.add_argument("--mode", choices=["both", "long-poll", "legacy"], default="both")
    args = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, args)))
