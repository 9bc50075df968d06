"""
A hostile relay that answers the PC's first request with a status line and
then short header lines for ever (each far under Twisted's 16 KiB line
limit), as fast as the PC reads.  A real PC (`twistd medimage` on
loopback) pulls from it; prints the bytes the relay got to send, whether
and when the PC cut it off, and the PC's resident memory at start and at
its peak (VmHWM).

    .venv/bin/python bench/hostile_headers.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet import defer, task
from twisted.internet.protocol import Factory, Protocol

TWISTD = Path(sys.executable).parent / "twistd"
ROOT = Path(__file__).resolve().parent.parent
PAIRED_ID = "BenchPairedId0000001"
LINES = b"".join(b"X-Filler-%05d: abcdefgh\r\n" % i for i in range(2048))


class Flood(Protocol):
    def connectionMade(self):
        self.factory.connections += 1
        self.received, self.answering = b"", False

    def dataReceived(self, data):
        self.received += data
        if not self.answering and b"\r\n\r\n" in self.received:
            self.answering = True
            self.transport.write(b"HTTP/1.1 200 OK\r\n")
            self.transport.registerProducer(self, False)

    def resumeProducing(self):
        self.factory.sent += len(LINES)
        self.transport.write(LINES)

    def stopProducing(self):
        pass

    def connectionLost(self, reason):
        if self.answering and self.factory.cut_at is None:
            self.factory.cut_at = time.monotonic()


def memory(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {k: int(v) * 1024 for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.M)}


async def run(reactor, seconds: float) -> None:
    factory = Factory.forProtocol(Flood)
    factory.sent, factory.connections, factory.cut_at = 0, 0, None
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    with tempfile.TemporaryDirectory() as temp:
        data = Path(temp)
        (data / "config.json").write_text(json.dumps({
            "readProxy": f"http://127.0.0.1:{port.getHost().port}/read/{PAIRED_ID}",
            "globalId": PAIRED_ID, "lanMode": False}))
        log = data / "server.log"
        env = dict(os.environ, PYTHONPATH=str(ROOT))  # this checkout, not an installed copy
        process = subprocess.Popen(
            [str(TWISTD), "--nodaemon", "--pidfile=", "--logfile", str(log), "medimage",
             "--data", str(data), "--port", "0", "--interface", "127.0.0.1"], cwd=data, env=env)
        try:
            while "listening on port" not in (log.read_text() if log.exists() else ""):
                await task.deferLater(reactor, 0.02)
            start = memory(process.pid)
            began = time.monotonic()
            while time.monotonic() - began < seconds and factory.cut_at is None:
                await task.deferLater(reactor, 0.1)
            end = memory(process.pid)
        finally:
            process.terminate()
            process.wait()
    await defer.maybeDeferred(port.stopListening)
    cut = f"cut after {factory.cut_at - began:.2f} s" if factory.cut_at else f"not cut within {seconds:g} s"
    print(f"relay sent {factory.sent / 1e6:.1f} MB of header lines; {cut}")
    print(f"PC resident memory: {start['VmRSS'] / 1e6:.1f} MB at start, peak {end['VmHWM'] / 1e6:.1f} MB "
          f"(+{(end['VmHWM'] - start['VmRSS']) / 1e6:.1f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--seconds", type=float, default=30.0, help="stop waiting after this long")
    args = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, args.seconds)))


if __name__ == "__main__":
    main()
