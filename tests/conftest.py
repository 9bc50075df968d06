"""
Shared test helpers: sample files, raw multipart bodies as the MedImage app
sends them, and a real server on a loopback port.
"""

from __future__ import annotations

import json
import os
import sys
import random
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest
import pytest_twisted
from twisted.internet.defer import ensureDeferred

pytest_plugins = ["postgres_fixtures"]

# No per-example time limit for hypothesis: on a shared machine a plain
# function took 269 ms once (DeadlineExceeded, a false failure); speed is
# measured in bench/, never in tests.
from hypothesis import settings  # noqa: E402

settings.register_profile("medimage", deadline=None)
settings.load_profile("medimage")


def pytest_collection_modifyitems(items) -> None:
    """
    Mark every test that runs the reactor (servers, sockets, processes):
    `make mutate` runs only the others, many times over.
    """
    import inspect

    for item in items:
        function = getattr(item, "function", None)
        if (function is not None and inspect.iscoroutinefunction(function)) or \
                {"start_server", "http_client", "tiny_disk"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.reactor)


def jpeg_bytes(size: int = 20_000, seed: int = 0) -> bytes:
    """
    Bytes that sniff as JPEG: the SOI/APP0 marker, noise, then EOI.
    """
    body = random.Random(seed).randbytes(size) if seed else os.urandom(size)
    return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + body + b"\xff\xd9"


def multipart(
    filename: Optional[str],
    content: bytes,
    *,
    field: str = "file1",
    title: Optional[str] = "photo",
    boundary: Optional[str] = None,
) -> tuple[bytes, bytes]:
    """
    A body and content type as the app's uploader (Cordova FileTransfer or a
    browser FormData) builds them.
    """
    boundary = boundary or "----medimage" + uuid.uuid4().hex
    parts = []
    if title is not None:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="title"\r\n\r\n{title}\r\n'.encode()
        )
    disposition = f'form-data; name="{field}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    parts.append(
        f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        f"Content-Type: image/jpeg\r\n\r\n".encode() + content + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}".encode()


#: The longest any single wait in a test may take before it is a failure.
#: It only turns a hang into a failure: generous, because a machine shared
#: with other test runs can take many seconds for what takes one here.
WAIT = 60.0


def within(awaitable: Any, seconds: float = WAIT, rule: Optional[str] = None):
    """
    A Deferred for C{awaitable} (a Deferred or a coroutine) that fails with
    L{defer.TimeoutError} after C{seconds}: a regression that hangs fails
    the test instead of hanging the suite.

    @param rule: where only this bound running out shows a fault (an answer
        that never comes), the rule it breaks: the failure is then an
        L{AssertionError} naming it, not a bare timeout.
    """
    from twisted.internet import defer, reactor

    d = defer.ensureDeferred(awaitable) if not isinstance(awaitable, defer.Deferred) else awaitable
    if rule is None:
        return d.addTimeout(seconds, reactor)

    def named(result, timeout):
        # Whatever the cancelled call failed with (a request: "response
        # never received"), the time ran out: say which rule that breaks.
        raise AssertionError(f"no answer within {timeout:.0f} s: {rule}")

    return d.addTimeout(seconds, reactor, onTimeoutCancel=named)


async def eventually(check, what: str, seconds: float = WAIT) -> None:
    """
    Wait until C{check()} (or what it returns, when awaitable) is true,
    looking every 20 ms, for at most C{seconds}; for outcomes that no
    Deferred announces (a file appearing, what another client sees).
    """
    import inspect

    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds:.0f} s: {what}")
        await deferLater(reactor, 0.02)


async def ended(calls, what: str, seconds: float = WAIT) -> None:
    """
    Wait until every delayed call in C{calls} (a copy of a test Clock's
    C{getDelayedCalls()}, which is the clock's own list) was cancelled or
    has run.  A client cancels the
    time limit for an answer's head when the head has been read: with the
    limit on a test Clock, that is how a test knows the body is being read.
    """
    await eventually(lambda: not any(call.active() for call in calls), what, seconds)


async def post_upload(client, url: str, body: Any, content_type: bytes, headers: Optional[dict] = None):
    """
    POST a raw upload body to C{url}/api/photo: (status, body, response).
    """
    all_headers = {b"Content-Type": [content_type]}
    all_headers.update(headers or {})
    response = await within(client.post(url + "/api/photo", data=body, headers=all_headers))
    return response.code, await within(response.content()), response


async def upload_photo(client, url: str, name: Optional[str], content: bytes, **multipart_options: Any):
    """
    Upload C{content} under file name C{name} as the app does: (status, body,
    response).  The one upload helper of the suite.
    """
    body, content_type = multipart(name, content, **multipart_options)
    return await post_upload(client, url, body, content_type)


def write_config(path: Path, **settings: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings))
    return path


@dataclass
class RunningServer:
    service: Any
    url: str
    data: Path

    @property
    def photos(self) -> Path:
        return self.data / "photos"

    @property
    def store(self):
        return self.service.state.store


def all_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def start_server(tmp_path):
    """
    Start real servers on 127.0.0.1, port 0; stopped after the test.
    """
    from twisted.internet import reactor

    from medimage_tx.tap import build_service

    started = []

    async def start(name: str = "pc", clock: Any = None, tune: Any = None, **settings: Any) -> RunningServer:
        data = tmp_path / name
        # Never advertise on this machine's real network from a test.
        settings.setdefault("lanMode", False)
        config = write_config(data / "config.json", **settings)
        service = build_service(reactor, data, config, port=0, interface="127.0.0.1", clock=clock)
        if tune is not None:
            tune(service)
        service.startService()
        started.append(service)
        port = await service.http.listening
        await service.state.backups.recovered
        return RunningServer(service, f"http://127.0.0.1:{port.getHost().port}", data)

    yield start
    for service in started:
        pytest_twisted.blockon(service.stopService())


def skip_here_fail_in_ci(reason: str) -> None:
    """
    A test this machine cannot run (no root, no loop devices...) is skipped
    on a developer's machine, but fails in CI, which must run every test.
    """
    if os.environ.get("CI"):
        pytest.fail(f"this test must run in CI: {reason}")
    pytest.skip(reason)


def skip_unless_user_runs_this_python(user: str) -> None:
    """
    Tests that start the server as a service user need this Python to be
    one that user can run.  pyenv's Pythons under /root (the suite's second
    run, on the newest Python) are not: the run as that user is skipped
    there, with the reason; the first run (Debian's or the PATH's Python)
    covers it, and fails if it cannot.
    """
    import subprocess

    tried = subprocess.run(["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups",
                            sys.executable, "-c", "pass"], capture_output=True, text=True)
    if tried.returncode != 0:
        reason = (f"user {user} cannot run {sys.executable}: "
                  f"{(tried.stderr.strip().splitlines() or ['?'])[-1]}")
        if sys.version_info[:2] == (3, 11):
            skip_here_fail_in_ci(reason)
        pytest.skip(reason)


def program_here(name: str) -> Optional[str]:
    """
    Where an installed program is: on the PATH, or in the sbin folders a
    user's PATH may leave out (Debian puts haproxy in /usr/sbin).
    """
    import shutil

    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"]))


def need_program(found: Optional[str], program: str, package: str) -> str:
    """
    C{found} (a program's path), or skip the test saying how to install it
    (README "Set up" lists these); in CI the test fails instead.
    """
    if found is None:
        skip_here_fail_in_ci(f"{program} is not installed here (apt-get install {package})")
    return found


#: The programs some tests drive, and their Debian packages (README, Set up).
TEST_PROGRAMS = {"chromium": "chromium", "haproxy": "haproxy", "initdb": "postgresql", "strace": "strace",
                 "systemd-analyze": "systemd"}


def pytest_report_header(config) -> Optional[str]:
    from postgres_server import postgres_bin

    missing = [package for program, package in TEST_PROGRAMS.items()
               if (postgres_bin(program) if program == "initdb" else program_here(program)) is None]
    if not missing:
        return None
    then = "fail (CI=true)" if os.environ.get("CI") else "are skipped"
    return (f"not installed here: {', '.join(missing)}; the tests that need them {then} "
            f"(apt-get install {' '.join(missing)})")


@pytest.fixture(scope="session")
def chromium() -> str:
    """
    Debian's chromium for the browser tests (tests/browser.py).
    """
    from browser import CHROMIUM

    return need_program(CHROMIUM, "chromium", "chromium")


@pytest.fixture(scope="session")
def haproxy() -> str:
    """
    HAProxy in front of relay nodes (tests/haproxy_front.py).  Session-wide,
    so it is checked before the session's PostgreSQL is started.
    """
    return need_program(program_here("haproxy"), "haproxy", "haproxy")


@pytest.fixture
def tiny_disk(tmp_path):
    """
    A 1 MiB tmpfs: a real full disk (needs root; must run in CI).
    """
    folder = tmp_path / "tiny"
    folder.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        skip_here_fail_in_ci(f"cannot mount a tmpfs (needs root): {result.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture(autouse=True)
def stop_leftover_processes():
    """
    Every process a test started (L{processes.spawn}) and left running,
    because it failed or forgot, gets SIGTERM, then SIGKILL after 10 s, and
    is reaped before the next test.
    """
    yield
    from processes import RUNNING

    for process in list(RUNNING):
        stop_process(process)


def stop_process(process, sig: int = signal.SIGTERM) -> None:
    """
    Stop a process from a fixture's finaliser (outside the reactor's turn).
    """
    pytest_twisted.blockon(ensureDeferred(stop(process, sig)))


async def stop(process, sig: int = signal.SIGTERM) -> None:
    """
    Signal C{process} and every process it started (a wrapper such as
    strace, signalled alone, leaves its child running, and the child holds
    the output pipe); SIGKILL after 10 s; until it has ended.
    """
    import psutil
    from twisted.internet import defer

    family: list = []
    for signal_number in (sig, signal.SIGKILL):
        if process.ended.called:
            return
        pid = process.transport.pid  # None once reaped (psutil would take None for this process)
        if pid is not None:
            try:
                wrapper = psutil.Process(pid)
                family = list({p.pid: p for p in family + wrapper.children(recursive=True) + [wrapper]}.values())
            except psutil.Error:
                pass  # gone meanwhile: what it started is known from the first round
        for member in family:
            try:
                member.send_signal(signal_number)
            except psutil.Error:
                pass
        try:
            await process.exited(10)
            return
        except defer.TimeoutError:
            continue


@pytest.fixture
def log_lines():
    """
    The lines medimage_tx logs while the test runs, formatted.
    """
    from twisted.logger import formatEvent, globalLogPublisher

    lines: list[str] = []

    def observe(event):
        if event.get("log_namespace", "").startswith("medimage_tx"):
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


@pytest.fixture
def http_client():
    """
    A treq client with its own connection pool, closed after the test.
    """
    from twisted.internet import reactor
    from twisted.web.client import Agent, HTTPConnectionPool
    from treq.client import HTTPClient

    pool = HTTPConnectionPool(reactor, persistent=True)
    yield HTTPClient(Agent(reactor, pool=pool))
    pytest_twisted.blockon(pool.closeCachedConnections())


@pytest.fixture
def central():
    """
    A local stand-in for AtomJump's central pairing service (central_pairing.py);
    C{central.url} is its med-genid.php.
    """
    from central_pairing import start_central

    service, url, port = pytest_twisted.blockon(ensureDeferred(start_central()))
    service.url = url
    yield service
    pytest_twisted.blockon(port.stopListening())


if os.environ.get("MEDIMAGE_TEST_LOG"):
    # Debugging aid: MEDIMAGE_TEST_LOG=1 pytest -s shows the servers' logs.
    import sys

    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
