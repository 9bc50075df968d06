"""
Issue 19 finding 1: many different photos under one file name.  A real
`twistd medimage` (PC, or relay with its local store) gets N different
photos of one size under one name; at each checkpoint the script times a
phone's upload of a new photo under that name and of one sent again (the
median of --tries each).  Before the fix each upload compared the photo
with every one already under the name.

    make test            # builds .venv (once)
    .venv/bin/python bench/same_name_flood.py --photos 240 --size 500000
    .venv/bin/python bench/same_name_flood.py --role relay --dir /dev/shm
    # another version of the code, e.g. main before the fix:
    .venv/bin/python bench/same_name_flood.py --code /tmp/main-checkout

Loopback only; the server and its folder are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PAIRED_ID = "uPSE4UWHmJ8XqFUqvf"
BOUNDARY = "----WebKitFormBoundaryq2Y7bX9kLm3ZpT0a"


def photo(number: int, size: int) -> bytes:
    """
    Photos of one size that differ only in their last bytes (the attack's
    worst case: a compare reads each to its end).
    """
    return (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + random.Random(0).randbytes(size - 8)
            + number.to_bytes(8, "big") + b"\xff\xd9")


def upload(port: int, name: str, content: bytes) -> float:
    """
    One upload as one write (no Nagle/delayed-ACK stall in the figures);
    the seconds until the whole answer is in.
    """
    body = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file1\"; filename=\"{name}\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode() + content + f"\r\n--{BOUNDARY}--\r\n".encode()
    request = (f"POST /api/photo HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
               f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=600) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    elapsed = time.perf_counter() - started
    if not answer.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"upload answered {answer[:80]!r}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=["pc", "relay"], default="pc")
    parser.add_argument("--photos", type=int, default=240)
    parser.add_argument("--size", type=int, default=500_000)
    parser.add_argument("--tries", type=int, default=3)
    parser.add_argument("--code", help="a folder holding another medimage_tx to run")
    parser.add_argument("--dir", help="where the server's data folder goes (e.g. /dev/shm: no disk "
                                      "write-back in the figures)")
    args = parser.parse_args()
    checkpoints = sorted({0, args.photos // 4, args.photos // 2, args.photos})
    folder = Path(tempfile.mkdtemp(prefix="same-name-bench-", dir=args.dir))
    data = folder / "data"
    data.mkdir()
    config = {"lanMode": False}
    if args.role == "relay":
        config.update(allowPhotosLeaving=True, allowGettingRemotePhotos=False)
    (data / "config.json").write_text(json.dumps(config))
    env = dict(os.environ)
    if args.code:
        env["PYTHONPATH"] = args.code
    twistd = Path(sys.executable).parent / "twistd"
    server = subprocess.Popen([str(twistd), "--nodaemon", "--pidfile=", "medimage", "--data", str(data),
                               "--port", "0", "--interface", "127.0.0.1"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, env=env, cwd=folder)
    try:
        for line in server.stdout:
            found = re.search(rb"listening on port (\d+)", line)
            if found:
                port = int(found.group(1))
                break
        else:
            raise SystemExit("the server did not start")
        name = (f"#{PAIRED_ID}-" if args.role == "relay" else "") + "#NHID1234-arm.jpg"
        print(f"{args.role}: {args.photos} photos of {args.size} bytes under one name; "
              f"median of {args.tries} uploads per checkpoint")
        print("| photos under the name | new photo | sent again |")
        print("| ---: | ---: | ---: |")
        stored = 0
        for checkpoint in checkpoints:
            while stored < checkpoint:
                upload(port, name, photo(stored, args.size))
                stored += 1
            new, again = [], []
            for _ in range(args.tries):
                # One address gets 20 requests a second after a burst of 100
                # (docs/security.md): wait for budget, so that the figure is
                # the upload's own time, not its wait for its turn.
                time.sleep(0.5)
                new.append(upload(port, name, photo(stored, args.size)))
                stored += 1
                time.sleep(0.5)
                again.append(upload(port, name, photo(stored - 1, args.size)))
            print(f"| {checkpoint} | {statistics.median(new) * 1000:.0f} ms | "
                  f"{statistics.median(again) * 1000:.0f} ms |", flush=True)
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
