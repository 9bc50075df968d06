"""
HTTPS from config.json's C{httpsKey} and C{httpsCert} (PEM files): modern
TLS only (1.2 and up), checked at start so a bad key or certificate stops
the server with a clear line instead of failing on the first phone.
"""

from __future__ import annotations

import re
from pathlib import Path

from OpenSSL import SSL, crypto
from twisted.internet.ssl import CertificateOptions, TLSVersion

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


class TLSConfigError(ValueError):
    pass


def server_tls_options(key_path: Path, cert_path: Path) -> CertificateOptions:
    """
    TLS options for a server; the certificate file may hold the chain after
    the server's own certificate.

    @raise TLSConfigError: unreadable, not PEM, or key and certificate do not match.
    """
    try:
        key_pem = key_path.read_bytes()
        cert_pem = cert_path.read_bytes()
    except OSError as e:
        raise TLSConfigError(f"cannot read {e.filename}: {e.strerror}") from None
    try:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem)
    except crypto.Error:
        raise TLSConfigError(f"{key_path} is not a PEM private key") from None
    blocks = _PEM_CERT.findall(cert_pem)
    try:
        certificates = [crypto.load_certificate(crypto.FILETYPE_PEM, block) for block in blocks]
    except crypto.Error:
        certificates = []
    if not certificates:
        raise TLSConfigError(f"{cert_path} holds no PEM certificate")
    options = CertificateOptions(
        privateKey=key, certificate=certificates[0], extraCertChain=certificates[1:],
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )
    try:
        options.getContext()  # loads both and checks that they belong together
    except SSL.Error:
        raise TLSConfigError(f"the key {key_path} does not belong to the certificate {cert_path}") from None
    return options
