"""
Start-up failures end the real twistd process at once, in the foreground and
as a daemon: one line on stderr, a non-zero exit, no pid file left behind.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import sys
from pathlib import Path

import pytest
import pytest_twisted

from conftest import jpeg_bytes, multipart, write_config
from processes import spawn

TWISTD = Path(sys.executable).parent / "twistd"
pytestmark = pytest.mark.skipif(not TWISTD.exists(), reason=f"no twistd beside {sys.executable}: use `make test`")

# Generous for a loaded machine; a hang (the old daemon behaviour) is what fails.
START_LIMIT = 30.0


@pytest.fixture
def busy_port():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    yield holder.getsockname()[1]
    holder.close()


def _kill_daemon_left(pidfile: Path) -> None:
    # Only if the test failed: a daemon that did start must not outlive it.
    if pidfile.exists():
        try:
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        except (ValueError, ProcessLookupError):
            pass


async def _start_fails(tmp_path: Path, daemon: bool, *server_args: str) -> str:
    data = tmp_path / "data"
    mode = [] if daemon else ["--nodaemon"]
    process = spawn([str(TWISTD), *mode, "medimage", "--no-lan", "--data", str(data), *server_args], str(tmp_path))
    try:
        status = await process.ended_within(START_LIMIT)
    finally:
        if not process.ended.called:
            process.transport.signalProcess(signal.SIGKILL)
        _kill_daemon_left(data / "twistd.pid")
    assert status == 1, process.output
    assert not (data / "twistd.pid").exists()
    assert not (tmp_path / "twistd.pid").exists()
    lines = process.errors.decode().strip().splitlines()
    assert len(lines) == 1, process.errors
    return lines[0]


@pytest.mark.parametrize("daemon", [True, False], ids=["daemon", "nodaemon"])
@pytest_twisted.ensureDeferred
async def test_busy_port_ends_the_start_with_one_line(tmp_path, busy_port, daemon):
    line = await _start_fails(tmp_path, daemon, "--port", str(busy_port), "--interface", "127.0.0.1")
    assert line.startswith(f"medimage: cannot listen on port {busy_port} (127.0.0.1): Address already in use")


@pytest.mark.parametrize("daemon", [True, False], ids=["daemon", "nodaemon"])
@pytest_twisted.ensureDeferred
async def test_unusable_config_ends_the_start_with_one_line(tmp_path, daemon):
    config = write_config(tmp_path / "data" / "config.json", maxUploadSize="big")
    line = await _start_fails(tmp_path, daemon, "--port", "0")
    assert line.startswith(f"medimage: {config}: key 'maxUploadSize'")


@pytest.mark.parametrize("daemon", [True, False], ids=["daemon", "nodaemon"])
@pytest_twisted.ensureDeferred
async def test_unreadable_certificate_ends_the_start_with_one_line(tmp_path, daemon):
    (tmp_path / "key.pem").write_text("not a key")
    config = write_config(tmp_path / "data" / "config.json", httpsKey=str(tmp_path / "key.pem"),
                          httpsCert=str(tmp_path / "missing.pem"))
    line = await _start_fails(tmp_path, daemon, "--port", "0")
    assert line.startswith(f"medimage: {config}: ")
    assert "missing.pem" in line and line.endswith("No such file or directory")


@pytest_twisted.ensureDeferred
async def test_a_daemon_starts_keeps_its_pid_in_the_data_folder_stores_readable_photos_and_stops(
        tmp_path, http_client):
    data, clinic = tmp_path / "data", tmp_path / "clinic"
    clinic.mkdir()
    write_config(data / "config.json", backupTo=[clinic.as_posix()])
    port = _free_port()
    old_umask = os.umask(0o022)  # the shell's usual; twistd's daemon default would be 077
    try:
        process = spawn([str(TWISTD), "medimage", "--no-lan", "--data", str(data), "--port", str(port),
                         "--interface", "127.0.0.1"], str(tmp_path))
    finally:
        os.umask(old_umask)
    pidfile = data / "twistd.pid"
    try:
        assert await process.ended_within(START_LIMIT) == 0, process.output
        assert process.errors == b""
        pid = int(pidfile.read_text())
        body, content_type = multipart("#NHID5-hand.jpg", jpeg_bytes())
        response = await http_client.post(f"http://127.0.0.1:{port}/api/photo", data=body,
                                          headers={b"Content-Type": [content_type]})
        assert response.code == 200, (data / "medimage.log").read_text()[-3000:]
        for folder in (data / "photos", clinic):
            assert stat.S_IMODE((folder / "NHID5" / "hand.jpg").stat().st_mode) == 0o644
            assert stat.S_IMODE((folder / "NHID5").stat().st_mode) == 0o755
        os.kill(pid, signal.SIGTERM)
        for _ in range(300):  # the daemon is not our child: watch its pid file go, bounded
            if not pidfile.exists():
                break
            await _pause(0.1)
        assert not pidfile.exists()
        log = (data / "medimage.log").read_bytes()
        assert b"listening on port" in log and b"Server Shut Down." in log
    finally:
        _kill_daemon_left(pidfile)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _pause(seconds: float):
    from twisted.internet import reactor, task

    return task.deferLater(reactor, seconds, lambda: None)


def test_a_port_taken_after_the_check_still_fails_as_twistd_reports_daemon_errors(tmp_path, busy_port):
    # The check before daemonizing can race another program; then the listen
    # itself fails, with an exception twistd hands back to the launcher.
    from twisted.internet import reactor

    from medimage_tx.tap import StartupFailed, build_service

    service = build_service(reactor, tmp_path / "data", port=busy_port, interface="127.0.0.1", no_lan=True)
    with pytest.raises(StartupFailed) as failed:
        service.http.privilegedStartService()
    assert isinstance(failed.value, Exception)
    assert str(failed.value).startswith(
        f"medimage: cannot listen on port {busy_port} (127.0.0.1): Address already in use")


COMMAND = Path(sys.executable).parent / "medimage-tx"


@pytest.mark.parametrize("daemon", [False, True], ids=["foreground", "daemon"])
@pytest_twisted.ensureDeferred
async def test_a_second_server_on_the_same_data_folder_says_one_line_and_the_first_keeps_running(
        tmp_path, http_client, daemon):
    # Issue 20, item 6: twistd's own six lines ("Another twistd server is
    # running ... use the --pidfile and --logfile parameters") instead of
    # one that says what to do.
    from test_readme_claims import readme_says

    readme_says("another server already running with the same data folder (its pid; that one keeps running)")
    data = tmp_path / "data"
    first = spawn([str(COMMAND), "serve", "--data", str(data), "--port", "0", "--no-lan"], str(tmp_path))
    try:
        port = await first.port()
        await first.wait_for(rb"Start-up check done")
        second = spawn([str(COMMAND), "serve", *(["--daemon"] if daemon else []), "--data", str(data),
                        "--port", "0", "--no-lan"], str(tmp_path))
        assert await second.ended_within(START_LIMIT) == 1, second.output
        lines = second.errors.decode().strip().splitlines()
        assert len(lines) == 1, second.errors
        assert lines[0] == (f"medimage: another server (pid {first.transport.pid}) is running with the data folder "
                            f"{data}: stop it first, or give this one its own --data")
        assert not first.ended.called
        assert (data / "twistd.pid").read_text() == str(first.transport.pid)
        response = await http_client.get(f"http://127.0.0.1:{port}/")
        assert response.code == 200
    finally:
        if not first.ended.called:
            first.transport.signalProcess(signal.SIGTERM)
    assert await first.ended_within(60) == -signal.SIGTERM


def test_version_prints_ours():
    import subprocess

    from test_readme_claims import readme_says

    readme_says("`medimage-tx --version` says which version this is.")

    from medimage_tx import __version__

    done = subprocess.run([str(COMMAND), "--version"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, f"medimage-tx {__version__}\n"), done.stderr


@pytest_twisted.ensureDeferred
async def test_a_daemon_says_its_pid_its_log_file_and_how_to_stop_it(tmp_path, http_client):
    from test_readme_claims import readme_says

    readme_says("with `--daemon`, `DATA/medimage.log` (it says its pid, its log file and how to stop it as it goes)")
    data = tmp_path / "data"
    pidfile = data / "twistd.pid"
    process = spawn([str(COMMAND), "serve", "--daemon", "--data", str(data), "--port", str(_free_port()),
                     "--no-lan", "--interface", "127.0.0.1"], str(tmp_path))
    try:
        assert await process.ended_within(START_LIMIT) == 0, process.output
        pid = int(pidfile.read_text())
        said = process.output.decode()
        assert f"pid {pid}" in said and f"{data / 'medimage.log'}" in said, said
        assert f"kill {pid}" in said or f"kill $(cat {pidfile})" in said, said
        os.kill(pid, signal.SIGTERM)  # as it says
        for _ in range(300):  # the daemon is not our child: watch its pid file go, bounded
            if not pidfile.exists():
                break
            await _pause(0.1)
        assert not pidfile.exists()
    finally:
        _kill_daemon_left(pidfile)
