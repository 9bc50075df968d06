"""
The real `twistd -n medimage` process, from the installed package.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
import pytest_twisted

from conftest import jpeg_bytes, multipart, write_config
from processes import WatchedProcess, spawn

TWISTD = Path(sys.executable).parent / "twistd"

pytestmark = pytest.mark.skipif(
    not TWISTD.exists(), reason=f"no twistd beside {sys.executable}: run the tests with `make test`"
)


def spawn_twistd(tmp_path: Path, *args: str) -> WatchedProcess:
    # --no-lan: never advertise on this machine's real network from a test.
    # Run outside the repository so the installed package is what runs.
    return spawn([str(TWISTD), "--nodaemon", "--pidfile=", "medimage", "--no-lan", *args], str(tmp_path))


@pytest_twisted.ensureDeferred
async def test_twistd_runs_receives_and_stops_cleanly(tmp_path, http_client):
    target = tmp_path / "clinic"
    target.mkdir()
    data = tmp_path / "data"
    write_config(data / "config.json", backupTo=[target.as_posix()])
    process = spawn_twistd(tmp_path, "--data", str(data), "--port", "0", "--interface", "127.0.0.1")
    try:
        port = await process.port()
        photo = jpeg_bytes(200_000)
        body, content_type = multipart("#NHID1234-arm-27-Nov-2026-10-11-12.jpg", photo)
        response = await http_client.post(
            f"http://127.0.0.1:{port}/api/photo", data=body, headers={b"Content-Type": [content_type]}
        )
        assert response.code == 200, process.output.decode()[-3000:]
        assert await response.content() == b"Received upload successfully!"
        assert (target / "NHID1234" / "arm-27-Nov-2026-10-11-12.jpg").read_bytes() == photo
    finally:
        if not process.ended.called:
            process.transport.signalProcess(signal.SIGTERM)
    assert await process.exited() == -signal.SIGTERM
    assert b"Received NHID1234/arm-27-Nov-2026-10-11-12.jpg (200013 bytes)" in process.output
    assert b"Main loop terminated" in process.output


@pytest_twisted.ensureDeferred
async def test_twistd_writes_default_config_on_first_start(tmp_path):
    data = tmp_path / "fresh"
    process = spawn_twistd(tmp_path, "--data", str(data), "--port", "0", "--interface", "127.0.0.1")
    await process.port()
    process.transport.signalProcess(signal.SIGTERM)
    assert await process.exited() == -signal.SIGTERM
    assert (data / "config.json").exists()
    assert f"wrote the defaults to {data / 'config.json'}".encode() in process.output
    assert f"photos arrive in {data / 'photos'}".encode() in process.output


@pytest_twisted.ensureDeferred
async def test_twistd_refuses_bad_config_with_one_line(tmp_path):
    config = write_config(tmp_path / "bad.json", listenPort="abc")
    process = spawn_twistd(tmp_path, "--config", str(config), "--data", str(tmp_path / "d"))
    assert await process.exited() == 1
    lines = process.output.decode().strip().splitlines()
    assert lines == [f"medimage: {config}: key 'listenPort': expected a port number from 0 to 65535, got 'abc'"]
