"""
Red-team round on current main (issue 9 variants), each attack on a real
`twistd medimage` process on loopback.  Each test performs an attack that
succeeded before its fix.
"""

from __future__ import annotations

import json
import signal

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock

import pytest
import pytest_twisted

from addon_helpers import PYTHON, RECORD_ARGS, calls, write_registry, write_script
from conftest import ended, eventually, within, write_config
from medimage_tx.cli import build_parser
from medimage_tx.cli import pair as pair_command
from medimage_tx.pc.pairing import TIMEOUT_SECONDS
from processes import spawn
from test_twistd import TWISTD, spawn_twistd

COMMAND = TWISTD.parent / "medimage-tx"

pytestmark = pytest.mark.skipif(not TWISTD.exists(), reason="run with `make test` (needs twistd)")


async def get(http_client, url: str, method: str = "GET", **headers: bytes):
    response = await http_client.request(
        method, url, headers={k.replace("_", "-").encode(): [v] for k, v in headers.items()})
    return response.code, await response.content()


@pytest_twisted.ensureDeferred
async def test_another_sites_img_without_origin_or_referer_runs_no_add_on(tmp_path, http_client):
    """
    A page in the clinic's browser adds C{<img referrerpolicy=no-referrer
    src="http://<the PC>:5566/addon/change-folder?newFolder=...">}.  Sent to
    the PC's LAN address over plain HTTP (or by a browser without fetch
    metadata), the request has no C{Origin}, no C{Referer} and no
    C{Sec-Fetch-Site}, and comes from the PC itself.  Before the fix the
    add-on ran (the original's change-folder add-on re-points C{backupTo});
    now nothing runs until the server's own page, or the address bar, asks.
    """
    data = tmp_path / "pc"
    write_config(data / "config.json", lanMode=False)
    write_script(data, "record.py", RECORD_ARGS + "print('returnParams:?MESSAGE=Saved')\n")
    pages = data / "public" / "pages"
    pages.mkdir(parents=True)
    (pages / "done.html").write_text("MESSAGE")
    write_registry(data, urlRequest=[{
        "addon": "test", "scriptURLName": "change-folder", "active": True, "priority": "medium",
        "runProcess": f"{PYTHON} parentdir/addons/test/record.py param1",
        "waitForRequestFinish": "done.html"}])
    process = spawn_twistd(tmp_path, "--data", str(data), "--port", "0", "--interface", "127.0.0.1")
    try:
        port = await process.port()
        url = f"http://127.0.0.1:{port}/addon/change-folder?newFolder=/tmp/attacker"
        for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
            for method in ("GET", "HEAD"):
                code, body = await get(http_client, url, method, Host=host.encode())
                assert code == 403, (host, method)
        # A cross-site request that does carry fetch metadata, as before.
        code, _ = await get(http_client, url, Sec_Fetch_Site=b"cross-site")
        assert code == 403
        assert calls(data) == []  # nothing ran
        # The admin's own ways still work: a link on the server's page, the
        # address typed in (Sec-Fetch-Site: none).
        own = f"http://127.0.0.1:{port}/".encode()
        assert await get(http_client, url, Referer=own) == (200, b"Saved")
        assert await get(http_client, url, Sec_Fetch_Site=b"none") == (200, b"Saved")
        assert len(calls(data)) == 2
    finally:
        if not process.ended.called:
            process.transport.signalProcess(signal.SIGTERM)
        await process.ended


class Dripper(protocol.Protocol):
    """
    A hostile pairing service: answers at once with headers and a byte of
    body, never reaching its length; the test drips the rest (a byte a
    second on its clock).  The factory's C{asked} fires with this protocol.
    """

    def dataReceived(self, data: bytes) -> None:
        if not self.factory.asked.called:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4000\r\n\r\na")
            self.factory.asked.callback(self)

    def connectionLost(self, reason=None) -> None:
        self.factory.closed.append(reason)


@pytest_twisted.ensureDeferred
async def test_a_dripping_pairing_service_cannot_hold_the_pairing(tmp_path, capsys):
    """
    C{medimage-tx pair} against a service that sends its headers and then
    drips its answer.  treq's C{timeout} ends at the headers, so before the
    fix the command (and the web page's pairing) waited as long as the
    service went on (here it would be 4,000 s); now it gives up after
    L{TIMEOUT_SECONDS} with one line, drops the connection, and changes
    nothing.  The command's own code from its arguments to its exit
    status, in this process: its time limit is on a test clock (exit
    statuses and messages of the real command: test_pairing.py).
    """
    factory = protocol.Factory.forProtocol(Dripper)
    factory.asked, factory.closed = defer.Deferred(), []
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    service = f"http://127.0.0.1:{port.getHost().port}"
    config = write_config(tmp_path / "pc" / "config.json", lanMode=False)
    before = config.read_text()
    clock = Clock()
    args = build_parser().parse_args(["pair", "--relay", service, "--custom-pairing",
                                      service + "/med-genid.php", "--config", str(config)])
    try:
        command = defer.ensureDeferred(pair_command.pair(reactor, args, clock))
        dripper = await within(factory.asked)
        await ended(list(clock.getDelayedCalls()), "the command reads the answer's body")
        for _ in range(int(TIMEOUT_SECONDS) - 1):
            clock.advance(1)
            dripper.transport.write(b"a")
        assert not command.called, "gave up before its time"
        clock.advance(1)
        assert command.called, "the dripping service held the pairing past its time limit"
        assert await command == 1
        said = capsys.readouterr()
        assert said.err.strip().endswith("too slow, so it was not used. Nothing was changed.")
        assert len(said.err.strip().splitlines()) == 1 and said.out == ""
        await eventually(lambda: factory.closed, "the connection was dropped")
        assert config.read_text() == before
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_migrate_from_a_hostile_folder_follows_no_link(tmp_path):
    """
    C{medimage-tx migrate --from} a folder whose C{photos} holds a link
    named like a photo to a file the migrating user can read (here a
    secret outside the folder).  Before the first fix the link was
    followed and the secret filed into the clinic's photo folder as
    C{leak.jpg}; then the link was skipped and the rest filed; now
    (issue 19: a link at the top, C{photos} itself, was still followed)
    any link stops the migration with one line, nothing changed.
    """
    secret = tmp_path / "elsewhere" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("not a photo: a secret")
    original = tmp_path / "original"
    (original / "photos" / "P1").mkdir(parents=True)
    write_config(original / "config.json", lanMode=False)
    (original / "photos" / "P1" / "ok.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 2000 + b"\xff\xd9")
    (original / "photos" / "P1" / "leak.jpg").symlink_to(secret)
    ours = tmp_path / "ours"
    process = spawn([str(COMMAND), "migrate", "--from", str(original), "--data", str(ours)], str(tmp_path))
    try:
        assert await process.exited(timeout=60) == 1
        assert process.errors.decode().count("\n") == 1, process.output
        assert "P1/leak.jpg: a link" in process.errors.decode()
        assert not ours.exists()
    finally:
        if not process.ended.called:
            process.transport.signalProcess(signal.SIGKILL)
