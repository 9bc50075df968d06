"""
Issue 19 finding 1: many different photos under one file name.  Before the
fix every further upload of that name compared the new photo with each one
already stored under it (byte by byte when the sizes matched): about 480
such photos made a phone's upload take 3.6-6.1 s instead of ~0 s, on the PC
and on the relay (its local store on disk, and PostgreSQL, one query per
photo).  Now the photos under one name are found by their content's digest.

The tests count what the real process reads (strace of a real twistd: the
files it opens in the photos folder) or asks (the statements PostgreSQL
logs), never how long it takes.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import pytest_twisted

from conftest import jpeg_bytes, upload_photo, within, write_config
from processes import spawn

TWISTD = Path(sys.executable).parent / "twistd"
PAIRED_ID = "uPSE4UWHmJ8XqFUqvf"
#: Different photos of one size under one name (the finding had 480).
PHOTOS = 40
SIZE = 60_000


def needs_strace() -> str:
    strace = shutil.which("strace")
    if strace is None:
        if os.environ.get("CI"):
            pytest.fail("strace is needed in CI (.ci/run installs it)")
        pytest.skip("strace is not installed")
    return strace


def photo(number: int) -> bytes:
    # The same size for each: a size check alone cannot tell them apart.
    return jpeg_bytes(SIZE, seed=1000 + number)


async def flood_one_name(http_client, url: str, name: str) -> None:
    for number in range(PHOTOS):
        code, body, _ = await upload_photo(http_client, url, name, photo(number))
        assert code == 200, body
    # Sent again (the phone never saw the 200): the same photo, no new file.
    for number in (0, PHOTOS // 2, PHOTOS - 1):
        code, body, _ = await upload_photo(http_client, url, name, photo(number))
        assert code == 200, body


def opened_photos(trace: Path, folder: Path) -> list[str]:
    """
    The photo files (not folders) the traced process opened in C{folder}.
    """
    pattern = re.compile(r'open(at)?\(.*"' + re.escape(str(folder)) + r'/[^"]+\.jpg"')
    return [line for line in trace.read_text().splitlines() if pattern.search(line)]


@pytest.mark.skipif(not TWISTD.exists(), reason="needs twistd beside the test's Python (make test)")
@pytest.mark.parametrize("role", ["pc", "relay"])
@pytest_twisted.ensureDeferred
async def test_many_photos_under_one_name_are_not_each_read_again(tmp_path, http_client, role):
    """
    A real twistd (PC, and relay with its local store) gets 40 different
    photos of one size under one name, then 3 of them again.  Each photo is
    read back at most once in all, on average (before the fix: each upload
    read every photo already under the name: 842 opens; after: 4);
    the re-sent ones are answered 200 with no new file, and no photo was
    overwritten.
    """
    strace = needs_strace()
    data = tmp_path / "data"
    if role == "pc":
        write_config(data / "config.json", lanMode=False)
        name, folder = "#NHID1234-arm.jpg", data / "photos" / "NHID1234"
    else:
        write_config(data / "config.json", lanMode=False, allowPhotosLeaving=True,
                     allowGettingRemotePhotos=False)
        name, folder = f"#{PAIRED_ID}-#NHID1234-arm.jpg", data / "photos" / PAIRED_ID / "NHID1234"
    trace = tmp_path / "trace.txt"
    process = spawn([strace, "-f", "-qq", "-o", str(trace), "-e", "trace=open,openat",
                     str(TWISTD), "--nodaemon", "--pidfile=", "medimage", "--data", str(data),
                     "--port", "0", "--interface", "127.0.0.1"], str(tmp_path))
    port = await within(process.port())
    await flood_one_name(http_client, f"http://127.0.0.1:{port}", name)
    stored = sorted(folder.iterdir())
    assert len(stored) == PHOTOS, [p.name for p in stored]
    assert sorted(p.read_bytes() for p in stored) == sorted(photo(n) for n in range(PHOTOS)), \
        "a photo under a taken name was lost or overwritten"
    reads = opened_photos(trace, folder)
    print(f"{role}: stored photos opened {len(reads)} times for {PHOTOS + 3} uploads under one name")
    assert len(reads) <= PHOTOS, (
        f"the duplicate check read stored photos {len(reads)} times for {PHOTOS + 3} uploads "
        f"under one name: it must find a photo by its digest, not compare it with every photo "
        f"under the name")


def logged_statements(log: Path, since: int) -> list[str]:
    with open(log, "rb") as f:
        f.seek(since)
        text = f.read().decode("utf-8", "replace")
    return [line for line in text.splitlines() if re.search(r"LOG:\s+(statement|execute)", line)]


@pytest.mark.skipif(not TWISTD.exists(), reason="needs twistd beside the test's Python (make test)")
@pytest_twisted.ensureDeferred
async def test_many_photos_under_one_name_cost_few_queries_on_postgresql(tmp_path, http_client, postgres):
    """
    A real twistd relay on PostgreSQL (its statements logged: the test's
    own database connection settings) gets 40 different photos under one
    name; then a 41st, and two of them again, ask a few statements each
    (before the fix: one per photo under the name, 101 in all; after: 24).
    """
    url = postgres.new_database() + "?options=-c%20log_statement%3Dall"
    data = tmp_path / "relay"
    write_config(data / "config.json", lanMode=False, allowPhotosLeaving=True,
                 allowGettingRemotePhotos=False, relayStore=url)
    process = spawn([str(TWISTD), "--nodaemon", "--pidfile=", "medimage", "--data", str(data),
                     "--port", "0", "--interface", "127.0.0.1"], str(tmp_path))
    port = await within(process.port())
    relay = f"http://127.0.0.1:{port}"
    name = f"#{PAIRED_ID}-#NHID1234-arm.jpg"
    await flood_one_name(http_client, relay, name)
    log = postgres.folder / "server.log"
    since = log.stat().st_size
    for content in (photo(PHOTOS), photo(0), photo(PHOTOS)):
        code, body, _ = await upload_photo(http_client, relay, name, content)
        assert code == 200, body
    statements = logged_statements(log, since)
    assert statements, "the relay's statements were not logged: the test cannot count them"
    print(f"statements for 3 uploads under a name with {PHOTOS} photos: {len(statements)}")
    assert len(statements) <= 45, (
        f"3 uploads under a name with {PHOTOS} photos asked {len(statements)} statements: the "
        f"duplicate check must find a photo by its digest, not look at every photo under the name")
    import psycopg

    with psycopg.connect(url.split("?")[0]) as conn:
        rows = conn.execute("SELECT relative, sha256 FROM relay_photos").fetchall()
    assert len(rows) == PHOTOS + 1
    assert len({sha for _, sha in rows}) == PHOTOS + 1, "a photo was stored twice"
