"""
The `medimage-tx` command: its subcommands, and `serve` as a real process.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted

from conftest import jpeg_bytes, multipart, write_config
from medimage_tx import cli
from medimage_tx.cli.serve import twistd_arguments
from processes import spawn

COMMAND = Path(sys.executable).parent / "medimage-tx"

needs_install = pytest.mark.skipif(
    not COMMAND.exists(), reason=f"no medimage-tx beside {sys.executable}: run the tests with `make test`"
)


def test_every_subcommand_module_has_help_and_run():
    parser = cli.build_parser()
    for name, module_name in cli.COMMANDS.items():
        module = __import__(module_name, fromlist=["run"])
        assert module.HELP and callable(module.run), name
    assert set(cli.COMMANDS) >= {"serve", "pair", "discover", "send"}
    assert parser.parse_args(["discover", "--timeout", "1"]).timeout == 1.0


def test_serve_runs_in_the_foreground_unless_daemon():
    assert twistd_arguments(["--data", "/srv/m", "--port", "5567"]) == [
        "--nodaemon", "medimage", "--data", "/srv/m", "--port", "5567"]
    assert twistd_arguments(["--daemon", "--pidfile", "/run/m.pid", "--logfile=/var/log/m.log", "--no-lan"]) == [
        "--pidfile=/run/m.pid", "--logfile=/var/log/m.log", "medimage", "--no-lan"]
    assert twistd_arguments(["-n", "--pidfile="]) == ["--nodaemon", "--pidfile=", "medimage"]
    with pytest.raises(ValueError, match="--logfile needs a value"):
        twistd_arguments(["--logfile"])


@needs_install
def test_command_lists_its_subcommands_and_python_m_is_the_same():
    listed = subprocess.run([str(COMMAND), "--help"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0
    for name in cli.COMMANDS:
        assert f"    {name} " in listed.stdout
    same = subprocess.run([sys.executable, "-m", "medimage_tx", "--help"], capture_output=True, text=True,
                          timeout=60, cwd="/")
    assert same.stdout == listed.stdout
    serve_help = subprocess.run([str(COMMAND), "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert serve_help.returncode == 0
    assert "--discovery-port" in serve_help.stdout or "--no-lan" in serve_help.stdout
    assert "--daemon" in serve_help.stdout


@needs_install
def test_serve_version_names_this_program_not_only_twisted():
    # `serve --version` and `twistd medimage --version` once printed only
    # "Twisted version: 26.10.0", which tells a clinic nothing.
    from medimage_tx import __version__

    for command in ([str(COMMAND), "serve", "--version"], [str(COMMAND.parent / "twistd"), "medimage", "--version"]):
        shown = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, command
        assert f"medimage-tx {__version__}" in shown.stdout, (command, shown.stdout)


@needs_install
@pytest_twisted.ensureDeferred
async def test_serve_receives_a_photo_and_stops_cleanly(tmp_path, http_client):
    target = tmp_path / "clinic"
    target.mkdir()
    data = tmp_path / "data"
    write_config(data / "config.json", backupTo=[target.as_posix()])
    process = spawn([str(COMMAND), "serve", "--no-lan", "--data", str(data), "--port", "0",
                     "--interface", "127.0.0.1"], str(tmp_path))
    try:
        port = await process.port()
        assert (data / "twistd.pid").read_text() == str(process.transport.pid)
        photo = jpeg_bytes(50_000)
        body, content_type = multipart("#NHID1234-arm.jpg", photo)
        response = await http_client.post(
            f"http://127.0.0.1:{port}/api/photo", data=body, headers={b"Content-Type": [content_type]})
        assert response.code == 200
        assert (target / "NHID1234" / "arm.jpg").read_bytes() == photo
    finally:
        if not process.ended.called:
            process.transport.signalProcess(signal.SIGTERM)
    assert await process.exited() == -signal.SIGTERM
    assert not (data / "twistd.pid").exists()
    assert not (tmp_path / "twistd.pid").exists()
    assert b"Main loop terminated" in process.output
    # No Twisted chatter: listeners starting and stopping, object addresses.
    assert b"Starting factory" not in process.output and b"Stopping factory" not in process.output
    assert b"starting on" not in process.output and b"Port" not in process.output


def test_windows_paths_use_no_unix_only_calls(monkeypatch, capsys, tmp_path):
    # What runs on Windows: no fork (--daemon is refused), no systemd; the
    # umask read, the log file and its rotation work without /proc or SIGUSR1.
    import argparse
    import signal

    from medimage_tx import logs
    from medimage_tx.cli import serve, service
    from medimage_tx.photos.store import process_umask

    monkeypatch.setattr(sys, "platform", "win32")
    assert serve.run(argparse.Namespace(rest=["--daemon", "--data", "C:\\MedImage"])) == 2
    assert "--daemon is for Unix" in capsys.readouterr().err
    assert service.run(argparse.Namespace(dry_run=True)) == 2
    assert "NSSM" in capsys.readouterr().err
    assert serve.twistd_arguments(["--data", "C:\\MedImage", "--logfile", "C:\\MedImage\\medimage.log"]) == [
        "--nodaemon", "--logfile=C:\\MedImage\\medimage.log", "medimage", "--data", "C:\\MedImage"]
    monkeypatch.delattr(signal, "SIGUSR1")
    monkeypatch.setattr("builtins.open", _no_proc(open))
    assert 0 <= process_umask() <= 0o777
    observer = logs.make_observer(str(tmp_path / "medimage.log"))
    assert observer is not None


def _no_proc(real_open):
    def open_without_proc(path, *args, **kwargs):
        if str(path).startswith("/proc"):
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)
    return open_without_proc
