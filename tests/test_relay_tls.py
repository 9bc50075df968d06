"""
An HTTPS relay whose certificate this PC does not trust: one readable line
saying why and what to do (never a Failure repr or a traceback), and
C{relayCA} to trust the clinic's own CA.  Real relay and PC on loopback.
"""

from __future__ import annotations

import datetime
import ipaddress
import sys
from pathlib import Path

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher

from conftest import jpeg_bytes, upload_photo, within
from medimage_tx.outbound.tls import explain_certificate
from processes import spawn
from test_relay import APP_NAME, DELIVERED_AS, PAIRED_ID, fast_retries, next_delivery, start_relay_with

REPO = Path(__file__).parent.parent
DAY = datetime.timedelta(days=1)


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _write(folder: Path, name: str, key, certificate) -> tuple[Path, Path]:
    key_path, cert_path = folder / f"{name}.key", folder / f"{name}.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def _certificate(subject: str, key, issuer: str, issuer_key, names, ca: bool = False, expired: bool = False):
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = (now - 10 * DAY, now - DAY) if expired else (now - DAY, now + 30 * DAY)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


LOOPBACK = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]


def self_signed(folder: Path, names=LOOPBACK, expired: bool = False) -> tuple[Path, Path]:
    key = _key()
    return _write(folder, "relay", key, _certificate("relay", key, "relay", key, names, expired=expired))


def clinic_ca_signed(folder: Path) -> tuple[Path, Path, Path]:
    """
    A relay certificate from a clinic CA: (key, certificate, CA certificate).
    """
    ca_key, key = _key(), _key()
    ca = _certificate("Clinic CA", ca_key, "Clinic CA", ca_key, None, ca=True)
    _, ca_path = _write(folder, "clinic-ca", ca_key, ca)
    key_path, cert_path = _write(folder, "relay", key, _certificate("relay", key, "Clinic CA", ca_key, LOOPBACK))
    return key_path, cert_path, ca_path


@pytest.fixture
def warnings():
    lines: list[str] = []

    def observe(event):
        if event.get("log_namespace", "").startswith("medimage_tx") and "relay" in formatEvent(event):
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


async def relay_with_photo(start_server, http_client, key_path: Path, cert_path: Path, ca_path: Path):
    from treq.client import HTTPClient
    from twisted.internet import reactor
    from twisted.web.client import Agent, HTTPConnectionPool

    from medimage_tx.outbound.tls import RelayTLSPolicy

    relay = await start_relay_with(start_server, httpsKey=str(key_path), httpsCert=str(cert_path))
    url = relay.url.replace("http://", "https://")
    phone = HTTPClient(Agent(reactor, contextFactory=RelayTLSPolicy(ca_path),
                             pool=HTTPConnectionPool(reactor, persistent=False)))
    photo = jpeg_bytes()
    code, _, _ = await upload_photo(phone, url, APP_NAME, photo)
    assert code == 200
    return url, photo


async def pc_pulling(start_server, tmp_path, relay_url: str, name: str, **settings):
    target = tmp_path / f"{name}-clinic"
    target.mkdir()
    pc = await start_server(name, tune=fast_retries, readProxy=f"{relay_url}/read/{PAIRED_ID}",
                            globalId=PAIRED_ID, backupTo=[target.as_posix()], keepMaster=False, **settings)
    return pc, target


async def first_outage_line(warnings: list[str]) -> str:
    from conftest import eventually

    await eventually(lambda: any("Cannot get photos" in line for line in warnings), "the outage warning")
    [line] = [line for line in warnings if "Cannot get photos" in line]
    return line


@pytest_twisted.ensureDeferred
async def test_self_signed_relay_gives_one_readable_line_and_works_with_relay_ca(
        start_server, http_client, tmp_path, warnings):
    key_path, cert_path = self_signed(tmp_path)
    relay_url, photo = await relay_with_photo(start_server, http_client, key_path, cert_path, cert_path)

    pc, _ = await pc_pulling(start_server, tmp_path, relay_url, "untrusting")
    line = await first_outage_line(warnings)
    assert line == ("Cannot get photos from the relay: the relay 127.0.0.1 has a self-signed certificate, "
                    "which this PC does not trust: give the relay a certificate from a public authority "
                    "(such as Let's Encrypt), or name the clinic's CA certificate file (or this "
                    "certificate) in relayCA in config.json; phones need a certificate they trust too. "
                    "Retrying with backoff.")
    await pc.service.stopService()

    trusting, target = await pc_pulling(start_server, tmp_path, relay_url, "trusting", relayCA=str(cert_path))
    assert await within(next_delivery(trusting)) == DELIVERED_AS
    assert (target / DELIVERED_AS).read_bytes() == photo


@pytest_twisted.ensureDeferred
async def test_unknown_authority_is_named_and_relay_ca_trusts_the_clinic_ca(
        start_server, http_client, tmp_path, warnings):
    key_path, cert_path, ca_path = clinic_ca_signed(tmp_path)
    relay_url, photo = await relay_with_photo(start_server, http_client, key_path, cert_path, ca_path)
    pc, _ = await pc_pulling(start_server, tmp_path, relay_url, "untrusting")
    assert "the relay 127.0.0.1's certificate is from an authority this PC does not trust" in \
        await first_outage_line(warnings)
    await pc.service.stopService()
    trusting, target = await pc_pulling(start_server, tmp_path, relay_url, "trusting", relayCA=str(ca_path))
    assert await within(next_delivery(trusting)) == DELIVERED_AS
    assert (target / DELIVERED_AS).read_bytes() == photo


@pytest_twisted.ensureDeferred
async def test_a_certificate_for_another_name_says_so(start_server, http_client, tmp_path, warnings):
    key_path, cert_path = self_signed(tmp_path, names=[x509.DNSName("relay.example")])
    relay = await start_relay_with(start_server, httpsKey=str(key_path), httpsCert=str(cert_path))
    # Trusted (relayCA), but for another name than the address used.
    await pc_pulling(start_server, tmp_path, relay.url.replace("http://", "https://"), "pc",
                     relayCA=str(cert_path))
    assert "the relay's certificate is not for 127.0.0.1: use the relay address its certificate names" in \
        await first_outage_line(warnings)


def test_expired_and_other_problems_are_explained():
    assert "has expired (or this PC's clock is wrong)" in explain_certificate("r.example", (10, "expired"))
    assert "not valid yet" in explain_certificate("r.example", (9, "not yet valid"))
    assert "is not trusted (odd): " in explain_certificate("r.example", (99, "odd"))
    assert "is not trusted: " in explain_certificate("r.example", None)


@pytest_twisted.ensureDeferred
async def test_pair_command_against_a_self_signed_relay_is_one_line(start_server, http_client, tmp_path):
    key_path, cert_path = self_signed(tmp_path)
    relay = await start_relay_with(start_server, httpsKey=str(key_path), httpsCert=str(cert_path))
    config = tmp_path / "pc" / "config.json"
    config.parent.mkdir()
    config.write_text("{}")
    relay_url = relay.url.replace("http://", "https://")
    # --custom-pairing: the relay's own pairing service, never AtomJump's real one.
    process = spawn([sys.executable, "-m", "medimage_tx", "pair", "--relay", relay_url, "--custom-pairing",
                     f"{relay_url}/med-genid.php", "--config", str(config)], str(REPO), env=None)
    assert await within(process.ended) == 1
    lines = process.output.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("medimage: Cannot pair: the relay 127.0.0.1 has a self-signed certificate")
    assert "Failure" not in lines[0] and "OpenSSL" not in lines[0]


def test_a_timed_out_relay_is_named_in_the_outage_line():
    from twisted.internet.defer import CancelledError
    from twisted.python.failure import Failure
    from twisted.web._newclient import ResponseNeverReceived

    from medimage_tx.outbound.tls import one_line

    # treq's timeout cancels the request: these carry no message of their own.
    assert one_line(CancelledError()) == "no answer in time"
    assert one_line(ResponseNeverReceived([Failure(CancelledError())])) == "no answer in time"
    assert one_line(ResponseNeverReceived([Failure(ConnectionRefusedError("refused"))])) == "refused"
