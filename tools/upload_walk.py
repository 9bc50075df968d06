"""
The phone-to-disk walk: which of the package's modules one WiFi upload
passes through, from the request's bytes to the photo in the clinic's
folder, in the order each is first entered.

    .venv/bin/python tools/upload_walk.py

Runs a clinic PC server in this process (its config in a temporary
folder, LAN mode off, one backupTo folder), sends it one photo as the
MedImage app does, and prints the modules entered while the upload was
handled (the reactor thread and the thread pool).
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
from pathlib import Path

from twisted.internet import defer, task

PACKAGE = "medimage_tx"


def multipart(name: str, body: bytes) -> tuple[bytes, bytes]:
    boundary = b"walkboundary1234"
    data = (b"--" + boundary + b"\r\n"
            b'Content-Disposition: form-data; name="file1"; filename="' + name.encode() + b'"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n" + body + b"\r\n--" + boundary + b"--\r\n")
    return data, b"multipart/form-data; boundary=" + boundary


async def walk(reactor) -> list[str]:
    import treq
    from medimage_tx.tap import build_service

    folder = Path(tempfile.mkdtemp(prefix="upload-walk-"))
    (folder / "clinic").mkdir()
    (folder / "data").mkdir()
    (folder / "data" / "config.json").write_text(json.dumps(
        {"backupTo": [str(folder / "clinic")], "lanMode": False}))
    entered: dict[str, None] = {}
    recording = threading.Event()

    def profile(frame, event, arg):
        if event == "call" and recording.is_set():
            module = frame.f_globals.get("__name__", "")
            if module.startswith(PACKAGE) and module not in entered:
                entered[module] = None

    body, content_type = multipart("#NHID1234-arm-27-Nov-2026-10-11-12.jpg",
                                   b"\xff\xd8\xff\xe0" + b"\0" * 20_000 + b"\xff\xd9")
    # Set before the server starts, so its thread pool's threads have it.
    threading.setprofile(profile)
    sys.setprofile(profile)
    service = build_service(reactor, folder / "data", port=0, interface="127.0.0.1")
    service.startService()
    port = (await service.http.listening).getHost().port
    await service.state.backups.recovered
    recording.set()
    try:
        response = await treq.post(f"http://127.0.0.1:{port}/api/photo", data=body,
                                   headers={b"Content-Type": content_type}, persistent=False)
        await response.content()
    finally:
        recording.clear()
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
    await service.stopService()
    assert response.code == 200, response.code
    return list(entered)


def main(reactor):
    async def run():
        modules = await walk(reactor)
        print(f"{len(modules)} modules entered by one WiFi upload:")
        for module in modules:
            print(f"  {module}")
    return defer.ensureDeferred(run())


if __name__ == "__main__":
    task.react(main)
