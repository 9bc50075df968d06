"""
HTTPS from config.json's C{httpsKey} and C{httpsCert} (PEM files): modern
TLS only (1.2 and up; for 1.2 only ECDHE key exchange with AEAD ciphers,
Mozilla's "intermediate" set without DHE), checked at start so a bad key or
certificate stops the server with a clear line instead of failing on the
first phone.
"""

from __future__ import annotations

import re
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from OpenSSL import SSL, crypto
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
_PEM_KEY = re.compile(rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.+?-----END \1PRIVATE KEY-----", re.S)

#: TLS 1.2 suites: forward secrecy (ECDHE) and authenticated encryption
#: (AES-GCM, ChaCha20-Poly1305) only; no RSA key exchange, no CBC, no SHA-1
#: MACs.  TLS 1.3 has only such suites and OpenSSL configures them apart.
TLS12_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
])


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
    key = _private_key(key_path, key_pem)
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
        acceptableCiphers=AcceptableCiphers.fromOpenSSLCipherString(TLS12_CIPHERS),
    )
    try:
        options.getContext()  # loads both and checks that they belong together
    except SSL.Error:
        raise TLSConfigError(f"the key {key_path} does not belong to the certificate {cert_path}") from None
    return options


def _private_key(key_path: Path, key_pem: bytes) -> crypto.PKey:
    """
    The first private key in the file.  Loaded with no passphrase callback,
    so an encrypted key fails at once instead of OpenSSL asking for its
    passphrase on a console that a service does not have.
    """
    block = _PEM_KEY.search(key_pem)
    if block is None:
        raise TLSConfigError(f"{key_path} is not a PEM private key")
    try:
        key = load_pem_private_key(block.group(0), password=None)
    except TypeError:
        # cryptography's way of saying "needs a password".
        raise TLSConfigError(f"{key_path} is encrypted (passphrase-protected): give a key without "
                             "a passphrase, e.g. openssl pkey -in KEY -out PLAIN") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TLSConfigError(f"{key_path} is not a PEM private key") from None
    # The kinds that sign (pyOpenSSL takes no other): an X25519 or DH key
    # made pyOpenSSL raise TypeError.
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey,
                            ed448.Ed448PrivateKey, dsa.DSAPrivateKey)):
        raise TLSConfigError(f"{key_path} holds a key that cannot be used for TLS: give an RSA or EC key")
    return crypto.PKey.from_cryptography_key(key)
