"""
The pairing id is a secret (it lets anyone read the relay queue).  What may
be shown instead (PROTOCOL.md B3): its fingerprint, and a proof that the
holder knows it.
"""

from __future__ import annotations

import hashlib
import hmac
import re

#: A paired id as the relay accepts it (PROTOCOL.md A1).
PAIRED_ID = re.compile(r"[A-Za-z0-9]{16,20}")


def fingerprint(global_id: str) -> str:
    """
    First 16 hex digits of SHA-256 of C{"medimage:" + id}: safe to show,
    advertise and log.
    """
    return hashlib.sha256(b"medimage:" + global_id.encode()).hexdigest()[:16]


def proof(global_id: str, nonce: str) -> str:
    """
    HMAC-SHA256 of C{nonce} keyed by the id, as hex.
    """
    return hmac.new(global_id.encode(), nonce.encode(), hashlib.sha256).hexdigest()
