"""
Slow readers of a relay: how much memory a relay process holds while N
readers from one address each have a photo leased to them and read
nothing more (issue 19 finding 2).  One relay node on a throwaway
PostgreSQL (or, with --local, on its disk).

    .venv/bin/python bench/relay_slow_readers.py [--local] [--readers 32] [--mb 20]

Each reader asks for a photo with acknowledgement (so each has its own
photo leased), takes the first 64 KiB with a 4 KiB receive window and
then reads nothing; the relay's resident memory is read before the
readers connect and once every photo is leased and every reader has had
its first 64 KiB.  Prints the growth, in all and per reader.
"""

from __future__ import annotations

import argparse
import random
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from postgres_server import ThrowawayPostgres  # noqa: E402
from relay_cluster import RELAY, rss_mb  # noqa: E402
from upload_load import request_bytes, start_server  # noqa: E402

PAIRED_ID = "BenchSlowReaders01"


def upload(port: int, name: str, photo: bytes) -> None:
    head, body, tail = request_bytes(port, name, photo)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(head + body + tail)
        answer = s.recv(4096)
    if not answer.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"upload answered {answer[:80]!r}")


def slow_reader(port: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET /read/{PAIRED_ID} HTTP/1.1\r\nHost: relay\r\nX-MedImage-Ack: 1\r\n\r\n".encode())
    received = b""
    while len(received) < 64 * 1024:
        data = s.recv(65536)
        if not data:
            raise SystemExit("the relay closed a reader's connection")
        received += data
    if not received.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"a reader got {received[:80]!r}")
    return s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--local", action="store_true", help="the local store instead of PostgreSQL")
    parser.add_argument("--readers", type=int, default=32)
    parser.add_argument("--mb", type=float, default=20.0, help="each photo's size in MB")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="medimage-slow-readers-"))
    postgres = None
    config = dict(RELAY, maxUploadSize=int(args.mb * 1_000_000) + 1024 * 1024)
    try:
        if not args.local:
            # Its own folder (chowned to the postgres user): work is root's only.
            postgres = ThrowawayPostgres(Path(tempfile.mkdtemp(prefix="medimage-slow-readers-pg-"))).init().start()
            config["relayStore"] = postgres.new_database()
        process, port = start_server(work / "relay", config)
        try:
            rng = random.Random(1)
            size = int(args.mb * 1_000_000)
            for i in range(args.readers):
                photo = b"\xff\xd8\xff\xe0" + rng.randbytes(size - 4)
                upload(port, f"#{PAIRED_ID}-#P{i}-photo.jpg", photo)
            time.sleep(1.0)  # let the uploads' buffers go
            before = rss_mb(process.pid)
            readers = [slow_reader(port) for _ in range(args.readers)]
            time.sleep(1.0)  # what the relay buffers settles
            after = rss_mb(process.pid)
            store = "local store" if args.local else "PostgreSQL"
            print(f"{store}: {args.readers} slow readers of {args.mb:g} MB photos: relay RSS "
                  f"{before:.1f} MB -> {after:.1f} MB (+{after - before:.1f} MB, "
                  f"{(after - before) / args.readers:.2f} MB per reader)")
            for reader in readers:
                reader.close()
        finally:
            process.terminate()
            process.wait(timeout=30)
    finally:
        if postgres is not None:
            postgres.stop()
            shutil.rmtree(postgres.folder, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
