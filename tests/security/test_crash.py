"""
kill -9 at random moments (seeded), during uploads, backup copies and relay
deliveries, with real processes; then restart.  Every photo that got a 200
must be present exactly once and byte-identical, and no temporary or partial
file may be visible in any folder a reader sees.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import socket
import sys
from pathlib import Path

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.web.client import Agent, HTTPConnectionPool
from treq.client import HTTPClient

from conftest import eventually, jpeg_bytes, upload_photo, write_config
from processes import WatchedProcess, spawn

TWISTD = Path(sys.executable).parent / "twistd"
KILLS = int(os.environ.get('MEDIMAGE_KILLS', 30))
PAIRED_ID = "CrashTestPairing001"


def spawn_server(data: Path, port: int) -> WatchedProcess:
    return spawn([str(TWISTD), "--nodaemon", "--pidfile=", "medimage", "--no-lan", "--data", str(data),
                  "--port", str(port), "--interface", "127.0.0.1"], str(data))


def starter(data: Path, port: int, started: list[WatchedProcess]):
    """
    What upload_through_kills calls to (re)start the server under test;
    each process goes in C{started}, for L{stop_all}.
    """
    async def start() -> WatchedProcess:
        process = spawn_server(data, port)
        started.append(process)
        await process.port()
        return process
    return start


async def stop_all(processes: list[WatchedProcess]) -> None:
    """
    In C{finally}: no server of a test outlives it, whatever failed.
    """
    for process in processes:
        if not process.ended.called:
            process.transport.signalProcess(signal.SIGKILL)
    for process in processes:
        await process.exited()


def stored_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and ".medimage-incoming" not in p.parts]


async def kill9(process: WatchedProcess) -> None:
    if not process.ended.called:
        process.transport.signalProcess(signal.SIGKILL)
    await process.exited()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def try_upload(client, url: str, name: str, content: bytes) -> bool:
    try:
        code, answer, _ = await upload_photo(client, url, name, content)
    except Exception:
        return False  # killed mid-request (or too slow): the phone keeps the photo and retries
    return code == 200 and answer == b"Received upload successfully!"


def visible_partials(*folders: Path) -> list[Path]:
    found = []
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file() and (path.suffix in (".part", ".tmp") or ".medimage-incoming" in path.parts):
                found.append(path)
    return found


async def upload_through_kills(rng: random.Random, photos: dict[str, bytes], start, url_of, client,
                               kills: int) -> tuple[set[str], int, WatchedProcess]:
    """
    Keep uploading the photos without a 200 yet, four at a time, killing
    the server at a random moment in each round until C{kills} kills are
    done; returns the acknowledged names, the number of kills, and the
    server, running.
    """
    acknowledged: set[str] = set()
    done_kills = 0
    while True:
        process = await start()
        if done_kills >= kills and len(acknowledged) == len(photos):
            return acknowledged, done_kills, process  # running, with nothing more to send
        url = url_of()
        pending = [name for name in photos if name not in acknowledged]
        rng.shuffle(pending)
        batch = pending[:4]
        uploads = [defer.ensureDeferred(try_upload(client, url, name, photos[name])) for name in batch]
        if done_kills < kills:
            await deferLater(reactor, rng.uniform(0.0, 0.25))
            await kill9(process)
            done_kills += 1
        results = await defer.gatherResults(uploads)
        acknowledged |= {name for name, ok in zip(batch, results) if ok}
        await kill9(process)


@pytest_twisted.ensureDeferred
async def test_pc_server_killed_at_random_loses_no_acknowledged_photo(tmp_path):
    rng = random.Random(20261127)
    data, target = tmp_path / "pc", tmp_path / "clinic"
    target.mkdir()
    # keepMaster true: every photo is also copied, so kills land in copies too.
    write_config(data / "config.json", backupTo=[str(target)], keepMaster=True, lanMode=False)
    photos = {f"#P{i % 7}-photo-{i}.jpg": jpeg_bytes(rng.randrange(20_000, 1_500_000), seed=i + 1)
              for i in range(40)}
    port = free_port()
    pool = HTTPConnectionPool(reactor, persistent=False)
    client = HTTPClient(Agent(reactor, pool=pool))

    started: list[WatchedProcess] = []
    try:
        acknowledged, kills, last = await upload_through_kills(
            rng, photos, starter(data, port, started), lambda: f"http://127.0.0.1:{port}", client, KILLS)
        await kill9(last)
        final = spawn_server(data, port)
        started.append(final)
        await final.port()
        await final.wait_for(rb"Recovered after restart|Start-up check done")
        final.transport.signalProcess(signal.SIGTERM)
        await final.exited()
    finally:
        await stop_all(started)

    assert kills >= KILLS and acknowledged == set(photos)
    for name, content in photos.items():
        folder, stem = re.match(r"#(P\d)-(.*)\.jpg", name).groups()
        digest = hashlib.sha256(content).digest()
        for root in (data / "photos", target):
            copies = [p for p in (root / folder).iterdir()
                      if hashlib.sha256(p.read_bytes()).digest() == digest]
            assert [p.name for p in copies] == [f"{stem}.jpg"], (root, name)
    assert len(stored_files(target)) == len(photos)  # exactly once: no "-1" duplicates from retries
    assert visible_partials(data / "photos", target) == []
    assert list((data / "tmp").iterdir()) == []
    print(f"PC server: {kills} kills, {len(photos)} photos acknowledged, 0 lost")


@pytest_twisted.ensureDeferred
async def test_relay_killed_at_random_loses_no_acknowledged_photo(tmp_path):
    rng = random.Random(112026)
    relay_data, pc_data, target = tmp_path / "relay", tmp_path / "pc", tmp_path / "clinic"
    target.mkdir()
    relay_port, pc_port = free_port(), free_port()
    write_config(relay_data / "config.json", allowPhotosLeaving=True, allowGettingRemotePhotos=False,
                 lanMode=False)
    write_config(pc_data / "config.json", readProxy=f"http://127.0.0.1:{relay_port}/read/{PAIRED_ID}",
                 globalId=PAIRED_ID, backupTo=[str(target)], keepMaster=False, lanMode=False)
    photos = {f"#{PAIRED_ID}-#R{i % 5}-photo-{i}.jpg": jpeg_bytes(rng.randrange(20_000, 800_000), seed=i + 100)
              for i in range(40)}
    pool = HTTPConnectionPool(reactor, persistent=False)
    client = HTTPClient(Agent(reactor, pool=pool))
    pc = spawn_server(pc_data, pc_port)
    started: list[WatchedProcess] = [pc]
    try:
        await pc.port()
        acknowledged, kills, relay = await upload_through_kills(
            rng, photos, starter(relay_data, relay_port, started), lambda: f"http://127.0.0.1:{relay_port}",
            client, KILLS)
        # Let the PC collect everything from the last relay run: counted in
        # the clinic folder (a log line can be missing for a photo stored
        # just before a kill and confirmed after the restart).
        try:
            # ...and confirmed: the PC stores, then confirms, so the last
            # confirmation may still be on its way when the files are there.
            await eventually(lambda: len(stored_files(target)) >= len(photos)
                             and not any(p.is_file() for p in (relay_data / "photos").rglob("*")),
                             "the PC collects and confirms every photo", seconds=180)
        except AssertionError as e:
            raise AssertionError(f"{e}:\n{pc.output.decode(errors='replace')[-3000:]}\nrelay:\n"
                                 f"{relay.output.decode(errors='replace')[-2000:]}") from None
        relay.transport.signalProcess(signal.SIGTERM)
        await relay.exited()
        pc.transport.signalProcess(signal.SIGTERM)
        await pc.exited()
    finally:
        await stop_all(started)

    assert kills >= KILLS and acknowledged == set(photos)
    for name, content in photos.items():
        folder, stem = re.match(rf"#{PAIRED_ID}-#(R\d)-(.*)\.jpg", name).groups()
        digest = hashlib.sha256(content).digest()
        copies = [p for p in (target / folder).iterdir() if hashlib.sha256(p.read_bytes()).digest() == digest]
        assert [p.name for p in copies] == [f"{stem}.jpg"], name
    assert len(stored_files(target)) == len(photos)
    assert visible_partials(target, pc_data / "photos") == []
    assert [p for p in (relay_data / "photos").rglob("*") if p.is_file()] == []  # all confirmed
    print(f"relay: {kills} kills, {len(photos)} photos acknowledged and delivered, 0 lost")
