"""
HTTPS with a certificate the test makes: modern TLS only; bad key or
certificate files stop the server with one clear line.
"""

from __future__ import annotations

import datetime
import os
import ipaddress
import ssl
import socket

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.x509.oid import NameOID
from twisted.internet import reactor
from twisted.internet.ssl import Certificate
from twisted.internet.threads import deferToThread
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from treq.client import HTTPClient

from conftest import jpeg_bytes, multipart, within, write_config
from medimage_tx.config import ConfigError


def make_certificate(folder):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "medimage test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = folder / "key.pem", folder / "cert.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@pytest_twisted.ensureDeferred
async def test_https_upload_with_trusted_certificate(start_server, tmp_path):
    key_path, cert_path = make_certificate(tmp_path)
    server = await start_server(httpsKey=str(key_path), httpsCert=str(cert_path))
    url = server.url.replace("http://", "https://")
    pool = HTTPConnectionPool(reactor, persistent=False)
    trust = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(cert_path.read_bytes()))
    client = HTTPClient(Agent(reactor, contextFactory=trust, pool=pool))
    body, content_type = multipart("#NHID1-arm.jpg", jpeg_bytes())
    response = await client.post(url + "/api/photo", data=body, headers={b"Content-Type": [content_type]})
    assert (response.code, await response.content()) == (200, b"Received upload successfully!")

    port = int(url.rsplit(":", 1)[1])

    def handshake(maximum):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cert_path)
        context.maximum_version = maximum
        try:
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
            context.minimum_version = ssl.TLSVersion.TLSv1
        except (ssl.SSLError, ValueError):
            pass
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                return tls.version()

    assert await deferToThread(handshake, ssl.TLSVersion.MAXIMUM_SUPPORTED) in ("TLSv1.2", "TLSv1.3")
    with pytest.raises(ssl.SSLError):
        await deferToThread(handshake, ssl.TLSVersion.TLSv1_1)


@pytest.mark.parametrize("problem", ["mismatch", "not pem", "only key", "key-exchange key"])
def test_bad_key_or_certificate_refuses_to_start(tmp_path, problem):
    from medimage_tx.tap import build_service

    key_path, cert_path = make_certificate(tmp_path)
    settings = {"httpsKey": str(key_path), "httpsCert": str(cert_path), "lanMode": False}
    if problem == "mismatch":
        other = tmp_path / "other"
        other.mkdir()
        settings["httpsKey"] = str(make_certificate(other)[0])
        expected = "does not belong to the certificate"
    elif problem == "key-exchange key":
        # A valid PEM private key, of a kind that cannot sign (X25519): it
        # crashed the start with a TypeError from pyOpenSSL.
        key = x25519.X25519PrivateKey.generate()
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        expected = "cannot be used for TLS"
    elif problem == "not pem":
        cert_path.write_text("hello")
        expected = "holds no PEM certificate"
    else:
        del settings["httpsCert"]
        expected = "HTTPS needs both httpsKey and httpsCert"
    config = write_config(tmp_path / "data" / "config.json", **settings)
    with pytest.raises(ConfigError) as error:
        build_service(reactor, tmp_path / "data", config, port=0, interface="127.0.0.1")
    assert expected in str(error.value) and "\n" not in str(error.value)


@pytest_twisted.ensureDeferred
async def test_http_and_https_at_once(start_server, tmp_path, http_client):
    key_path, cert_path = make_certificate(tmp_path)
    server = await start_server(httpsKey=str(key_path), httpsCert=str(cert_path), httpsPort=0)
    plain = await http_client.get(server.url + "/")
    assert plain.code == 200
    await plain.content()
    https_port = server.service.https.port.getHost().port
    assert https_port != int(server.url.rsplit(":", 1)[1])
    trust = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(cert_path.read_bytes()))
    client = HTTPClient(Agent(reactor, contextFactory=trust, pool=HTTPConnectionPool(reactor, persistent=False)))
    secure = await client.get(f"https://127.0.0.1:{https_port}/")
    assert secure.code == 200
    await secure.content()


def make_rsa_certificate(folder):
    """
    An RSA certificate: with it, a server that allows RSA key exchange
    would agree to it.
    """
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "medimage rsa test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = folder / "rsa-key.pem", folder / "rsa-cert.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def tls12_handshake(port: int, cert_path, ciphers: str) -> str:
    """
    A TLS 1.2 client offering only C{ciphers}; the suite agreed on.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cert_path)
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(ciphers + ":@SECLEVEL=0")  # an old client really offers these
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return tls.cipher()[0]


@pytest.mark.parametrize("kind", ["rsa", "ec"])
@pytest_twisted.ensureDeferred
async def test_tls12_takes_only_ecdhe_with_aead(start_server, tmp_path, kind):
    """
    Finding 13: clients offering only RSA key exchange (no forward secrecy)
    or only CBC with SHA-1 must fail the handshake; a client with Mozilla's
    "intermediate" suites (and a TLS 1.3 client) must work.
    """
    key_path, cert_path = (make_rsa_certificate if kind == "rsa" else make_certificate)(tmp_path)
    server = await start_server(httpsKey=str(key_path), httpsCert=str(cert_path))
    port = int(server.url.rsplit(":", 1)[1])
    weak = {
        "rsa": ["AES128-SHA", "AES256-SHA", "AES128-GCM-SHA256", "AES256-SHA256", "ECDHE-RSA-AES128-SHA",
                "ECDHE-RSA-AES256-SHA384"],
        "ec": ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA", "ECDHE-ECDSA-AES128-SHA256"],
    }[kind]
    for ciphers in weak:
        with pytest.raises(ssl.SSLError):
            agreed = await deferToThread(tls12_handshake, port, cert_path, ciphers)
            pytest.fail(f"the server agreed to {agreed}")
    intermediate = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
                    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
                    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384")
    agreed = await deferToThread(tls12_handshake, port, cert_path, intermediate)
    assert agreed.startswith("ECDHE-") and ("GCM" in agreed or "CHACHA20" in agreed)

    def tls13() -> str:
        context = ssl.create_default_context(cafile=str(cert_path))
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                return tls.version()

    assert await deferToThread(tls13) == "TLSv1.3"


@pytest.mark.parametrize("terminal", [False, True], ids=["stdin closed", "a terminal"])
@pytest.mark.parametrize("pem_format", ["PKCS8", "TraditionalOpenSSL"])
@pytest_twisted.ensureDeferred
async def test_passphrase_protected_key_fails_at_once(tmp_path, terminal, pem_format):
    """
    Finding 14: a passphrase-protected httpsKey must stop the real twistd at
    once with one line saying the key is encrypted: no passphrase prompt
    (before the fix OpenSSL asked on the terminal and the start hung), and
    not "not a PEM private key" when there is no terminal.
    """
    from processes import WatchedProcess
    from test_crash import TWISTD

    key_path, cert_path = make_certificate(tmp_path)
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           getattr(serialization.PrivateFormat, pem_format),
                                           serialization.BestAvailableEncryption(b"clinic secret")))
    data = tmp_path / "data"
    write_config(data / "config.json", httpsKey=str(key_path), httpsCert=str(cert_path), lanMode=False)
    process = WatchedProcess()
    argv = [str(TWISTD), "--nodaemon", "--pidfile=", "medimage", "--no-lan", "--data", str(data),
            "--port", "0", "--interface", "127.0.0.1"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    reactor.spawnProcess(process, argv[0], argv, env=env, path=str(tmp_path), usePTY=terminal)
    if not terminal:
        process.transport.closeStdin()
    try:
        code = await within(process.ended)
    finally:
        if not process.ended.called:
            process.transport.signalProcess("KILL")
    output = process.output.decode(errors="replace")
    assert code != 0, output
    assert "pass phrase" not in output.lower()
    lines = [line for line in output.splitlines() if "encrypted" in line]
    assert len(lines) == 1 and str(key_path) in lines[0], output
    assert "not a PEM private key" not in output
