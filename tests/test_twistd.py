"""
The real `twistd -n medimage` process, from the installed package.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, protocol

from conftest import jpeg_bytes, multipart, write_config

TWISTD = Path(sys.executable).parent / "twistd"

pytestmark = pytest.mark.skipif(
    not TWISTD.exists(), reason=f"no twistd beside {sys.executable}: run the tests with `make test`"
)


class Twistd(protocol.ProcessProtocol):
    """
    Collects output; fires C{listening} with the port from the start-up
    line and C{ended} with the exit code.
    """

    def __init__(self):
        self.output = b""
        self.listening = defer.Deferred()
        self.ended = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        match = re.search(rb"listening on port (\d+)", self.output)
        if match and not self.listening.called:
            self.listening.callback(int(match.group(1)))

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        if not self.listening.called:
            self.listening.errback(RuntimeError(self.output.decode(errors="replace")))
            self.listening.addErrback(lambda f: None)
        # twistd ends itself with the signal it was stopped by, after a clean
        # shutdown, so the status is either an exit code or that signal.
        self.ended.callback(reason.value.exitCode if reason.value.signal is None else -reason.value.signal)


def spawn_twistd(tmp_path: Path, *args: str) -> Twistd:
    from twisted.internet import reactor

    process = Twistd()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # Run outside the repository so the installed package is what runs.
    reactor.spawnProcess(
        process, str(TWISTD),
        # --no-lan: never advertise on this machine's real network from a test.
        [str(TWISTD), "--nodaemon", "--pidfile=", "medimage", "--no-lan", *args],
        env=env, path=str(tmp_path),
    )
    return process


@pytest_twisted.ensureDeferred
async def test_twistd_runs_receives_and_stops_cleanly(tmp_path, http_client):
    target = tmp_path / "clinic"
    target.mkdir()
    data = tmp_path / "data"
    write_config(data / "config.json", backupTo=[target.as_posix()])
    process = spawn_twistd(tmp_path, "--data", str(data), "--port", "0", "--interface", "127.0.0.1")
    try:
        port = await process.listening
        photo = jpeg_bytes(200_000)
        body, content_type = multipart("#NHID1234-arm-27-Nov-2026-10-11-12.jpg", photo)
        response = await http_client.post(
            f"http://127.0.0.1:{port}/api/photo", data=body, headers={b"Content-Type": [content_type]}
        )
        assert response.code == 200
        assert await response.content() == b"Received upload successfully!"
        assert (target / "NHID1234" / "arm-27-Nov-2026-10-11-12.jpg").read_bytes() == photo
    finally:
        if not process.ended.called:
            process.transport.signalProcess(signal.SIGTERM)
    assert await process.ended == -signal.SIGTERM
    assert b"Received NHID1234/arm-27-Nov-2026-10-11-12.jpg (200013 bytes)" in process.output
    assert b"Main loop terminated" in process.output


@pytest_twisted.ensureDeferred
async def test_twistd_writes_default_config_on_first_start(tmp_path):
    data = tmp_path / "fresh"
    process = spawn_twistd(tmp_path, "--data", str(data), "--port", "0", "--interface", "127.0.0.1")
    await process.listening
    process.transport.signalProcess(signal.SIGTERM)
    assert await process.ended == -signal.SIGTERM
    assert (data / "config.json").exists()
    assert f"wrote the defaults to {data / 'config.json'}".encode() in process.output
    assert f"photos arrive in {data / 'photos'}".encode() in process.output


@pytest_twisted.ensureDeferred
async def test_twistd_refuses_bad_config_with_one_line(tmp_path):
    config = write_config(tmp_path / "bad.json", listenPort="abc")
    process = spawn_twistd(tmp_path, "--config", str(config), "--data", str(tmp_path / "d"))
    assert await process.ended == 1
    lines = process.output.decode().strip().splitlines()
    assert lines == [f"medimage: {config}: key 'listenPort': expected a port number from 0 to 65535, got 'abc'"]
