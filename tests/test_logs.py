"""
Logs that help: one line per refused upload (reason, size, client address,
never the patient's name).
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.logger import globalLogPublisher

from conftest import jpeg_bytes, multipart


@pytest.mark.parametrize("case", ["wrong type", "too large", "no file1"])
@pytest_twisted.ensureDeferred
async def test_a_refused_upload_writes_one_line_without_the_patient_name(
        start_server, http_client, log_lines, case):
    server = await start_server(maxUploadSize=50_000)
    content = {"wrong type": b"MZ\x90\x00 not a photo" * 100, "too large": jpeg_bytes(80_000),
               "no file1": jpeg_bytes(1_000)}[case]
    body, content_type = multipart("#SmithJohn1970-arm.jpg", content,
                                   field="file2" if case == "no file1" else "file1")
    response = await http_client.post(f"{server.url}/api/photo", data=body,
                                      headers={b"Content-Type": [content_type]})
    assert response.code == 400
    reason = (await response.content()).decode()
    refused = [line for line in log_lines if "an upload from" in line]
    assert refused == [f"Refused an upload from 127.0.0.1: {reason} ({len(body)} bytes received)"]
    assert "SmithJohn" not in "\n".join(log_lines)


def _emit(observer_target, count: int, text: str = "line") -> None:
    from twisted.logger import Logger

    logger = Logger(namespace="medimage_tx.test", observer=observer_target)
    for n in range(count):
        logger.info("{text} {n}", text=text, n=n)


def test_log_file_rotates_and_keeps_a_bounded_number(tmp_path, monkeypatch):
    from medimage_tx import logs

    monkeypatch.setattr(logs, "ROTATE_BYTES", 2_000)
    path = tmp_path / "medimage.log"
    observer = logs.make_observer(str(path))
    _emit(observer, 2_000)
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == ["medimage.log"] + [f"medimage.log.{n}" for n in range(1, logs.KEEP_FILES + 1)]
    assert "line 1999" in path.read_text()


def test_an_unwritable_log_file_is_one_line(tmp_path):
    from medimage_tx.logs import LogFileTrouble, make_observer

    with pytest.raises(LogFileTrouble, match=f"cannot write the log file {tmp_path}/no/such/x.log: "
                                             "No such file or directory"):
        make_observer(str(tmp_path / "no" / "such" / "x.log"))


def test_twisted_chatter_is_left_out_unless_verbose():
    import io

    from twisted.internet.protocol import Factory
    from twisted.logger import Logger

    from medimage_tx.logs import make_observer

    quiet, verbose = io.StringIO(), io.StringIO()
    observers = [make_observer(None, stream=quiet), make_observer(None, verbose=True, stream=verbose)]
    for observer in observers:
        globalLogPublisher.addObserver(observer)
    try:
        factory = Factory()
        factory.doStart()
        factory.doStop()
        Logger(namespace="medimage_tx.test").debug("a debug line")
        Logger(namespace="medimage_tx.test").info("an info line")
    finally:
        for observer in observers:
            globalLogPublisher.removeObserver(observer)
    assert "Starting factory" in verbose.getvalue() and "a debug line" in verbose.getvalue()
    assert "factory" not in quiet.getvalue() and "a debug line" not in quiet.getvalue()
    assert "an info line" in quiet.getvalue()


def test_no_plugin_cache_warning_when_the_cache_cannot_be_written(tmp_path, monkeypatch):
    # As for a service user who may not write twisted/plugins/dropin.cache:
    # here the cache path is a folder, which even root cannot write over.
    import io
    import sys

    from twisted.plugin import IPlugin, getPlugins

    from medimage_tx.logs import make_observer

    package = tmp_path / "clinicplugins"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nothing.py").write_text("")
    (package / "dropin.cache").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    import clinicplugins

    quiet, everything = io.StringIO(), io.StringIO()
    observers = [make_observer(None, stream=quiet), make_observer(None, verbose=True, stream=everything)]
    for observer in observers:
        globalLogPublisher.addObserver(observer)
    try:
        assert list(getPlugins(IPlugin, clinicplugins)) == []
    finally:
        for observer in observers:
            globalLogPublisher.removeObserver(observer)
        sys.modules.pop("clinicplugins", None)
    assert "Unable to write to plugin cache" in everything.getvalue()
    assert "plugin cache" not in quiet.getvalue()


@pytest_twisted.ensureDeferred
async def test_each_pairing_attempt_logs_one_line_with_its_result(start_server, http_client, log_lines):
    from twisted.internet.task import Clock

    from medimage_tx.identity import fingerprint
    from test_pairing import pair_on_page, shown_code
    from test_relay import fast_retries

    relay = await start_server("relay", clock=Clock(), allowPhotosLeaving=True, allowGettingRemotePhotos=False)
    pc = await start_server("pc", tune=fast_retries)
    response, page = await pair_on_page(http_client, pc.url, proxyServer=relay.url,
                                        customPairing=relay.url + "/med-genid.php")
    assert response.code == 200, page
    code = shown_code(page)
    paired_id = json.loads((pc.data / "config.json").read_text())["globalId"]
    wrong = "".join("A" if c != "A" else "B" for c in code)
    for guess in (wrong, code):
        await (await http_client.get(f"{relay.url}/med-genid.php?compare={guess}")).content()
    pairing = [line for line in log_lines if "air" in line]
    fp = fingerprint(paired_id)
    assert f"Pairing: issued a code for {fp} to 127.0.0.1" in pairing
    assert any(line.startswith(f"Paired with a relay (id {fp}") for line in pairing)
    assert "Pairing: a code from 127.0.0.1 matched nothing" in pairing
    assert f"Pairing: a phone at 127.0.0.1 paired with {fp}" in pairing
    assert paired_id not in "\n".join(log_lines)


@pytest_twisted.ensureDeferred
async def test_a_relay_outage_is_one_warning_not_lines_per_retry(tmp_path):
    # A real twistd PC whose relay closes every connection at once: after
    # several retries, one warning and no Twisted chatter in its log.
    import signal
    import sys
    from pathlib import Path

    from twisted.internet import defer, protocol, reactor

    from conftest import write_config
    from processes import spawn

    tries: list = []
    enough = defer.Deferred()

    class Refuse(protocol.Protocol):
        def connectionMade(self):
            tries.append(1)
            if len(tries) == 4 and not enough.called:
                enough.callback(None)
            self.transport.loseConnection()

    relay = reactor.listenTCP(0, protocol.Factory.forProtocol(Refuse), interface="127.0.0.1")
    data = tmp_path / "pc"
    write_config(data / "config.json", readProxy=f"http://127.0.0.1:{relay.getHost().port}/read/OutageTestPairing01",
                 globalId="OutageTestPairing01")
    twistd = Path(sys.executable).parent / "twistd"
    process = spawn([str(twistd), "--nodaemon", "--pidfile=", "medimage", "--no-lan", "--data", str(data),
                     "--port", "0", "--interface", "127.0.0.1"], str(tmp_path))
    try:
        await enough.addTimeout(60, reactor)
    finally:
        if not process.ended.called:
            process.transport.signalProcess(signal.SIGTERM)
        await process.exited()
        await relay.stopListening()
    output = process.output.decode()
    assert output.count("Cannot get photos from the relay") == 1, output
    assert "factory" not in output.lower() and "Failure" not in output
