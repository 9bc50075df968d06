"""
TLS from this PC to its relay and the pairing service: the public
authorities this OS trusts, plus the clinic's own CA when config.json's
C{relayCA} names one; and one readable line, with what to do, when the
relay's certificate is not trusted.

Twisted reports a refused certificate as a bare "certificate verify failed"
inside a list of Failures.  To say why (self-signed, unknown authority,
expired, another name) the PC tries the same address once more with the
standard library's C{ssl}, whose error carries OpenSSL's verify code.
"""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Optional, cast
from urllib.parse import urlsplit

from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.ssl import OpenSSLDefaultPaths, optionsForClientTLS, platformTrust
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from ..config import Config, resolve_path
from .ca_file import load_ca_certificates

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

#: The most the second try that says why a certificate was refused may
#: take, in all (connecting and the whole handshake).
DIAGNOSIS_SECONDS = 5.0

# OpenSSL's X509_V_ERR_* codes, as ssl.SSLCertVerificationError.verify_code.
_SELF_SIGNED = {18, 19}
_UNKNOWN_AUTHORITY = {2, 20, 21}
_EXPIRED, _NOT_YET_VALID = 10, 9
_OTHER_NAME = {62, 64}


def relay_ca_path(config: Config) -> Optional[Path]:
    """
    The C{relayCA} file (relative to config.json's folder), or None.
    """
    return resolve_path(config.relayCA, config.path.parent) if config.relayCA else None


class PlatformAndClinicCA(OpenSSLDefaultPaths):
    """
    What the OS trusts (Twisted's platform trust root), and the clinic's CA
    certificates besides.
    """

    def __init__(self, certificates: list[x509.Certificate]):
        self.certificates = certificates

    def _addCACertsToContext(self, context: SSL.Context) -> None:
        # The trust-root interface's one method (IOpenSSLTrustRoot).
        super()._addCACertsToContext(context)
        store = context.get_cert_store()
        assert store is not None  # an SSL_CTX always has one; pyOpenSSL types it Optional
        for certificate in self.certificates:
            store.add_cert(crypto.X509.from_cryptography(certificate))


@implementer(IPolicyForHTTPS)
class RelayTLSPolicy:
    """
    For an Agent's C{contextFactory}: verify the relay's certificate and name
    against the OS's authorities and C{ca_file}'s.
    """

    def __init__(self, ca_file: Optional[Path] = None):
        self.ca_file = ca_file
        self.trust = PlatformAndClinicCA(load_ca_certificates(ca_file)) if ca_file else platformTrust()

    def creatorForNetloc(self, hostname: bytes, port: int):
        return optionsForClientTLS(hostname.decode("ascii"), trustRoot=self.trust)


def policy_for(config: Config) -> RelayTLSPolicy:
    return RelayTLSPolicy(relay_ca_path(config))


def is_tls_refusal(error: BaseException) -> bool:
    """
    Did the connection fail because the certificate was refused?
    """
    from service_identity import VerificationError

    causes = [error] + [getattr(f, "value", f) for f in getattr(error, "reasons", None) or []]
    return any(isinstance(cause, (SSL.Error, VerificationError)) for cause in causes)


def one_line(error: BaseException) -> str:
    """
    An error as one readable line: Twisted's lists of Failures unpacked.
    """
    reasons = getattr(error, "reasons", None)
    if reasons:
        return "; ".join(dict.fromkeys(one_line(f.value) for f in reasons))
    if isinstance(error, (CancelledError, ConnectTimeout, TimeoutError)):
        return "no answer in time"  # treq's timeout cancels: the message is empty
    return " ".join(str(error).split()) or error.__class__.__name__


class Diagnosis:
    """
    One diagnosis's connection, shared between the thread that makes it
    and the reactor, which ends it when its time is up: a server that
    drips its handshake cannot hold it.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._socket: Optional[socket.socket] = None
        self.over = False

    def connected(self, sock: socket.socket) -> bool:
        """
        Called by the thread with its socket; False when the time is up already.
        """
        with self._lock:
            self._socket = sock
            return not self.over

    def end(self) -> None:
        """
        Called by the reactor: the thread's handshake fails at once.
        """
        with self._lock:
            self.over = True
            if self._socket is not None:
                try:
                    # The plain socket's shutdown (an SSLSocket's own would
                    # drop its TLS state under the other thread's feet);
                    # it wakes a read blocked in the other thread.
                    socket.socket.shutdown(self._socket, socket.SHUT_RDWR)
                except OSError:
                    pass  # closed already


def verify_problem(host: str, port: int, ca_file: Optional[Path],
                   diagnosis: Optional[Diagnosis] = None) -> Optional[tuple[int, str]]:
    """
    OpenSSL's verify code and message for C{host:port}'s certificate, or
    None if it verifies (or the address cannot be reached, or
    C{diagnosis} was ended).  Blocking: the socket's own timeout bounds a
    connect that ending the diagnosis cannot cut short.
    """
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    try:
        with socket.create_connection((host, port), timeout=DIAGNOSIS_SECONDS) as raw:
            with context.wrap_socket(raw, server_hostname=host, do_handshake_on_connect=False) as tls:
                if diagnosis is not None and not diagnosis.connected(tls):
                    return None
                tls.do_handshake()
                return None
    except ssl.SSLCertVerificationError as e:
        return e.verify_code, e.verify_message
    except (OSError, ValueError):
        return None


def diagnose(host: str, port: int, ca_file: Optional[Path],
             clock: IReactorTime) -> Deferred[Optional[tuple[int, str]]]:
    """
    L{verify_problem} in a thread, with at most L{DIAGNOSIS_SECONDS} on
    C{clock} for all of it: then the connection is dropped and the
    answer is None (no reason found).
    """
    diagnosis = Diagnosis()
    answer: Deferred[Optional[tuple[int, str]]] = Deferred()

    def time_is_up() -> None:
        diagnosis.end()
        answer.callback(None)

    timer = clock.callLater(DIAGNOSIS_SECONDS, time_is_up)

    def finished(result):
        if not answer.called:
            timer.cancel()
            answer.errback(result) if isinstance(result, Failure) else answer.callback(result)

    deferToThread(verify_problem, host, port, ca_file, diagnosis).addBoth(finished)
    return answer


def explain_certificate(host: str, problem: Optional[tuple[int, str]]) -> str:
    """
    One line on what is wrong with C{host}'s certificate and what to do.
    """
    code, message = problem if problem else (None, "")
    trust_hint = ("or name the clinic's CA certificate file (or this certificate) in relayCA in "
                  "config.json; phones need a certificate they trust too")
    if code in _SELF_SIGNED:
        return (f"the relay {host} has a self-signed certificate, which this PC does not trust: give the "
                f"relay a certificate from a public authority (such as Let's Encrypt), {trust_hint}")
    if code in _UNKNOWN_AUTHORITY:
        return (f"the relay {host}'s certificate is from an authority this PC does not trust: use a "
                f"publicly trusted certificate, {trust_hint}")
    if code == _EXPIRED:
        return (f"the relay {host}'s certificate has expired (or this PC's clock is wrong): renew the "
                "certificate, or set the clock right")
    if code == _NOT_YET_VALID:
        return f"the relay {host}'s certificate is not valid yet: check this PC's clock and date"
    if code in _OTHER_NAME:
        return (f"the relay's certificate is not for {host}: use the relay address its certificate "
                f"names, or get a certificate for {host}")
    detail = f" ({message})" if message else ""
    return (f"the relay {host}'s certificate is not trusted{detail}: use a publicly trusted certificate, "
            f"{trust_hint}")


async def explain(error: BaseException, url: str, ca_file: Optional[Path], direct: bool = True,
                  clock: Optional[IReactorTime] = None) -> str:
    """
    One readable line for a failed request to C{url}.  For a refused
    certificate, says why when it can find out (only C{direct}ly: through a
    web proxy, the second try would not take the same path), within
    L{DIAGNOSIS_SECONDS} on C{clock} (default the reactor).
    """
    if not is_tls_refusal(error):
        return one_line(error)
    address = urlsplit(url)
    host, port = address.hostname or "", address.port or 443
    problem: Optional[tuple[int, str]] = None
    if direct:
        if clock is None:
            from twisted.internet import reactor

            clock = cast("IReactorTime", reactor)  # the installed reactor: Twisted types it as a module
        problem = await diagnose(host, port, ca_file, clock)
    return explain_certificate(host, problem)
