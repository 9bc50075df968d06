"""
Issue 19 item 3: disk trouble other than a full disk (permission denied, a
missing folder, an I/O error) on a real twistd PC.  Each app family gets
the try-later answer docs/protocol.md gives for transient trouble
(browser app and legacy iOS: 500 with Retry-After and a readable reason
phrase, never 503, which the browser app shows as "invalid URL"; legacy
Android: 206 without "200"), and nothing half-stored is left.

Permission denied and the I/O error are real failed system calls: strace
injects them into the real server's calls on the photo's final path only.
The missing folder is the server's own tmp/ removed while it runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
import pytest_twisted

from conftest import all_files, jpeg_bytes, multipart, post_upload, upload_photo, within, write_config
from processes import spawn
from test_app_answers import FAMILIES, kept_by

TWISTD = Path(sys.executable).parent / "twistd"

pytestmark = pytest.mark.skipif(not TWISTD.exists(), reason="needs twistd beside the test's Python (make test)")


def strace_injecting(path: Path, error: str) -> list[str]:
    strace = shutil.which("strace")
    if strace is None:
        if os.environ.get("CI"):
            pytest.fail("strace is needed in CI (.ci/run installs it)")
        pytest.skip("strace is not installed")
    calls = "link,linkat,open,openat,rename,renameat,renameat2"
    return [strace, "-f", "-qq", "-o", "/dev/null", "-P", str(path),
            "-e", f"trace={calls}", "-e", f"inject={calls}:error={error}"]


async def start_pc(data: Path, wrapper: list[str] = ()):
    write_config(data / "config.json", lanMode=False)
    process = spawn([*wrapper, str(TWISTD), "--nodaemon", "--pidfile=", "medimage", "--data", str(data),
                     "--port", "0", "--interface", "127.0.0.1"], str(data.parent))
    return process, f"http://127.0.0.1:{await within(process.port())}"


async def every_family_is_told_to_try_later(http_client, url: str, name: str, data: Path) -> None:
    for family, boundary in FAMILIES.items():
        body, content_type = multipart(name, jpeg_bytes(30_000), boundary=boundary)
        code, answer, response = await post_upload(http_client, url, body, content_type)
        assert code != 503, f"{family}: 503 is 'invalid URL' to the browser app; disk trouble is try-later"
        kept_by(family, response, answer, permanent=False)
        if family != "legacy Android":
            assert code == 500, (family, code, answer)
    assert all_files(data / "tmp") == [] if (data / "tmp").is_dir() else True
    assert all_files(data / "photos") == []


@pytest.mark.parametrize("error", ["EACCES", "EIO"])
@pytest_twisted.ensureDeferred
async def test_permission_denied_or_io_error_is_try_later_for_every_family(tmp_path, http_client, error):
    data = tmp_path / "data"
    destination = data / "photos" / "P" / "x.jpg"
    process, url = await start_pc(data, strace_injecting(destination, error))
    await every_family_is_told_to_try_later(http_client, url, "#P-x.jpg", data)
    reason = {"EACCES": "Permission denied", "EIO": "Input/output error"}[error]
    assert f"cannot store the photo right now: {reason}".encode() in process.output
    # Another name is not affected: the server goes on working.
    code, body, _ = await upload_photo(http_client, url, "#P-y.jpg", jpeg_bytes(30_000))
    assert code == 200, body


@pytest_twisted.ensureDeferred
async def test_a_missing_folder_is_try_later_then_made_again(tmp_path, http_client):
    data = tmp_path / "data"
    process, url = await start_pc(data)
    shutil.rmtree(data / "tmp")
    # The server's own tmp/ gone (someone tidied the data folder): made
    # again for the next upload, so the phone's retry is stored.
    code, body, _ = await upload_photo(http_client, url, "#P-x.jpg", jpeg_bytes(30_000))
    assert code == 200, (
        f"an upload after tmp/ was removed got {code} {body!r}: the server must make its own "
        "tmp folder again")
    # The data folder itself gone (an unplugged drive): never made again
    # here, try-later for every family.
    shutil.rmtree(data)
    await every_family_is_told_to_try_later(http_client, url, "#P-z.jpg", data)
    assert not data.exists(), "the server made its data folder again where the drive was"
