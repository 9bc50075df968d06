"""
The clinic's own CA file (config.json's C{relayCA}): PEM certificates read
with no other part of the server, so config validation can check the file
and the TLS policy can trust it.
"""

from __future__ import annotations

import re
from pathlib import Path

from cryptography import x509

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def load_ca_certificates(path: Path) -> list[x509.Certificate]:
    """
    @raise ValueError: unreadable, or no PEM certificate in it.
    """
    try:
        blocks = _PEM_CERT.findall(path.read_bytes())
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    try:
        certificates = [x509.load_pem_x509_certificate(block) for block in blocks]
    except ValueError:
        certificates = []
    if not certificates:
        raise ValueError(f"{path} holds no PEM certificate")
    return certificates
