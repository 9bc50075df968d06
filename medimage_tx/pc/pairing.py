"""
A clinic PC pairing with a relay (PROTOCOL.md A5), as the original PC does:
it registers a code with a pairing service, by default AtomJump's central
one, the only one the unchanged MedImage app redeems codes at.

The POST goes to C{<pairing URL>?<the pair request's query string>} with
the form fields C{proxyServer}, C{country} and, only when the PC already has
an id, C{guid}.  The answer is C{<code> <id> <proxyServer> <country>}; the
code is kept exactly as returned (the central service's codes are mixed
case and compared as given).

Who may learn the PC's id (issue 9, findings 2 and 9): the id is sent only
for the relay the PC is paired with (its C{readProxy}), and only to the
pairing service it paired through (AtomJump's, or the C{customPairing}
saved in config.json when it paired) or that relay's own service.  Anything
else gets no id and issues a new one, which the PC adopts only when the
local admin has confirmed it.  Nothing a pairing service answers is ever
shown: errors are said in our own words.

Shared by the PC's C{/pair} page and the C{pair} command.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, cast
from urllib.parse import urlencode, urlsplit

from treq.client import HTTPClient
from twisted.web.client import HTTPConnectionPool

from ..identity import PAIRED_ID
from ..relay_store.pairing_codes import BadPairingAnswer, IssuedCode, parse_issue_answer
from ..outbound.proxy_tunnel import make_agent
from ..outbound.tls import explain, is_tls_refusal, policy_for
from ..outbound.response_limits import (
    CappedBody,
    ResponseHeadTooLong,
    ResponseTooLarge,
    ResponseTooSlow,
    in_time,
    timed_out,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from ..config import Config

#: AtomJump's central pairing service: every MedImage app version redeems
#: codes there (PROTOCOL.md A5), so it is the default.
CENTRAL_PAIRING_URL = "https://medimage-pair.atomjump.com/med-genid.php"
#: Points the PC at a local stand-in as AtomJump's service (tests and
#: tools/screenshots.py, which must send nothing to the internet).
CENTRAL_PAIRING_ENV = "MEDIMAGE_CENTRAL_PAIRING"


def central_pairing_url() -> str:
    return os.environ.get(CENTRAL_PAIRING_ENV) or CENTRAL_PAIRING_URL
#: The most of a pairing service's answer (its body) we read, and the
#: seconds it may take in all.
MAX_ANSWER = 4096
TIMEOUT_SECONDS = 30.0


class PairingError(Exception):
    """
    Pairing did not happen; the message says why, in our words.
    """


def relay_of(read_proxy: str) -> str:
    """
    The relay of a C{readProxy} (C{<relay>/read/<id>}), or C{""}.
    """
    return read_proxy.split("/read/")[0].rstrip("/") if "/read/" in read_proxy else ""


def same_url(a: str, b: str) -> bool:
    """
    Same scheme, host, port and path (case of scheme and host ignored).
    """
    try:
        x, y = urlsplit(a.strip()), urlsplit(b.strip())
        return (x.scheme.lower(), (x.hostname or ""), _port(x), x.path.rstrip("/")) == \
               (y.scheme.lower(), (y.hostname or ""), _port(y), y.path.rstrip("/"))
    except ValueError:
        return False


def _port(parts) -> Optional[int]:
    return parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())


def check_http_url(value: str, what: str) -> str:
    """
    C{value} if it is a plain http(s) URL with a host, else L{PairingError}.
    """
    value = value.strip()
    try:
        parts = urlsplit(value)
        usable = (parts.scheme.lower() in ("http", "https") and parts.hostname
                  and parts.username is None and not any(c.isspace() for c in value))
        parts.port  # raises on a bad port
    except ValueError:
        usable = False
    if not usable:
        raise PairingError(f"{what} must be an http:// or https:// address, "
                           "e.g. https://relay.example.org:5566")
    return value


@dataclass(frozen=True)
class PairRequest:
    """
    What the admin asked for: the original's C{/pair} parameters.
    """

    proxy_server: str
    country: str = ""
    style: str = ""
    custom_pairing: str = ""

    @classmethod
    def checked(cls, proxy_server: str, country: str = "", style: str = "",
                custom_pairing: str = "") -> "PairRequest":
        proxy_server = check_http_url(proxy_server, "The relay address").rstrip("/")
        custom_pairing = custom_pairing.strip()
        if custom_pairing:
            check_http_url(custom_pairing, "The pairing service address")
        return cls(proxy_server, country.strip()[:64], style.strip()[:64], custom_pairing)

    def query_string(self) -> str:
        """
        The query string of the original's pair request, which it passes on
        to the pairing service.
        """
        fields = [("country", self.country), ("style", self.style),
                  ("proxyServer", self.proxy_server), ("customPairing", self.custom_pairing)]
        return urlencode([(k, v) for k, v in fields if v])

    @property
    def service(self) -> str:
        return self.custom_pairing or central_pairing_url()

    @property
    def app_redeems(self) -> bool:
        """
        Whether the MedImage app can redeem this service's codes: only
        AtomJump's central service's (protocol.md, Pairing).
        """
        return same_url(self.service, central_pairing_url())

    def pairing_url(self) -> str:
        return self.service + ("&" if "?" in self.service else "?") + self.query_string()


@dataclass(frozen=True)
class PairingPlan:
    """
    What pairing will do, decided before anything is sent.

    @ivar guid: the id sent to the service; C{""} when it must not go there.
    @ivar kept_back: the PC's current id when it is not sent: the service
        will issue a new one, which only a confirming admin may adopt.
    """

    request: PairRequest
    guid: str
    current_relay: str
    kept_back: str = ""

    @property
    def new_id(self) -> bool:
        return bool(self.kept_back)

    def form(self) -> dict[str, str]:
        fields = {"proxyServer": self.request.proxy_server, "country": self.request.country}
        if self.guid:
            fields["guid"] = self.guid
        return fields


def saved_service(config: Config) -> str:
    """
    The pairing service this PC paired through (config.json C{customPairing},
    else AtomJump's).
    """
    value = config.raw.get("customPairing")
    return value.strip() if isinstance(value, str) and value.strip() else central_pairing_url()


def plan(config: Config, request: PairRequest) -> PairingPlan:
    """
    Decide whether the PC's id may go with this request.
    """
    current_id = config.globalId if PAIRED_ID.fullmatch(config.globalId or "") else ""
    current_relay = relay_of(config.readProxy)
    same_relay = bool(current_relay) and same_url(request.proxy_server, current_relay)
    known_service = (same_url(request.service, saved_service(config))
                     or (same_relay and same_url(request.service, current_relay + "/med-genid.php")))
    if current_id and same_relay and known_service:
        return PairingPlan(request, current_id, current_relay)
    return PairingPlan(request, "", current_relay, kept_back=current_id)


def check_answer(issued: IssuedCode, pairing: PairingPlan) -> None:
    """
    The answer must be for the relay asked for and, when the id was sent,
    for that id: a service may not re-point the PC.
    """
    if not same_url(issued.proxy_server, pairing.request.proxy_server):
        raise PairingError("The pairing service answered for a different relay than the one asked "
                           "for, so the answer was not used.")
    if pairing.guid and issued.paired_id != pairing.guid:
        raise PairingError("The pairing service answered with a different id than this PC's, so the "
                           "answer was not used (phones paired now stay paired).")


@dataclass(frozen=True)
class CodeAdvice:
    """
    What to tell the clinic about a code, the same on every way to pair.

    @ivar for_the_app: phones type it into the MedImage app.
    @ivar case_note: a sentence on letter case, or C{""}.
    @ivar not_for_the_app: why the app cannot use it, or C{""}.
    """

    for_the_app: bool
    case_note: str
    not_for_the_app: str


def advice_for(code: str, request: PairRequest) -> CodeAdvice:
    if request.app_redeems:
        # AtomJump's service compares codes exactly as given.
        has_letters = code.lower() != code.upper()
        return CodeAdvice(True, "Letters are case-sensitive: type them exactly as shown." if has_letters else "", "")
    return CodeAdvice(False, "", (
        f"This code comes from {request.service}, not AtomJump's pairing service, so the MedImage app "
        "cannot redeem it (the app redeems codes only at AtomJump's). It is for clients pointed at "
        "that service. To pair MedImage apps, pair again through AtomJump's service (no pairing "
        "service given); your relay can stay the relay."))


def unreachable(service: str) -> str:
    """
    The pairing service could not be reached: name the host and port a
    clinic's firewall (or proxy) must let this PC reach.
    """
    parts = urlsplit(service)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return (f"Cannot reach the pairing service at {parts.hostname} (port {port}). Check this PC's internet "
            f"connection, that the firewall lets it reach {parts.hostname} on port {port}, "
            "and webProxy in config.json.")


def paired_changes(config: Config, issued: IssuedCode, wanted: PairRequest) -> dict[str, str]:
    """
    What pairing changes in config.json: the id and relay as answered, the
    country (as the original does), and the pairing service when it is not
    AtomJump's (so the id goes only there next time).
    """
    changes = {"globalId": issued.paired_id, "readProxy": issued.read_proxy}
    if wanted.country:
        changes["countryCode"] = wanted.country
    if wanted.custom_pairing or "customPairing" in config.raw:
        changes["customPairing"] = wanted.custom_pairing
    return changes


def one_off_client(reactor: Any, web_proxy: str, tls=None) -> HTTPClient:
    """
    A client whose connections close after use: pairing is rare.

    @param tls: L{relay_tls.RelayTLSPolicy} (C{relayCA}); default the OS's trust.
    """
    return HTTPClient(make_agent(reactor, HTTPConnectionPool(reactor, persistent=False), web_proxy, tls))


async def request_code_as_configured(reactor: Any, config: Config, pairing: PairingPlan,
                                     clock: Optional[IReactorTime] = None) -> IssuedCode:
    """
    L{request_code} the way config.json says: through its C{webProxy},
    trusting what its C{relayCA} adds to the OS's trust.

    @param clock: what times the request (default C{reactor}; tests pass a
        L{twisted.internet.task.Clock}).
    """
    tls = policy_for(config)
    return await request_code(one_off_client(reactor, config.webProxy, tls), pairing, tls.ca_file,
                              via_proxy=bool(config.webProxy), clock=clock or reactor)


async def request_code(client: HTTPClient, pairing: PairingPlan, ca_file: Optional[Path] = None,
                       via_proxy: bool = False, clock: Optional[IReactorTime] = None) -> IssuedCode:
    """
    Register with the pairing service and return its checked answer.  The
    whole answer, headers and body, must come within L{TIMEOUT_SECONDS}
    (treq's C{timeout} ends at the headers: a service that dripped its
    answer held the pairing, and C{medimage-tx pair}, for as long as it
    liked), with at most L{MAX_ANSWER} bytes of body and 64 KiB of headers
    (L{response_limits}).

    @param ca_file: C{relayCA}, trusted by C{client}; and C{via_proxy}
        (C{webProxy} is set): to explain a refused certificate.
    @param clock: what times the whole answer and the certificate
        diagnosis (default the reactor).

    @raise PairingError: in our words; the service's body is never repeated.
    """
    if clock is None:
        from twisted.internet import reactor

        clock = cast("IReactorTime", reactor)  # the installed reactor: Twisted types it as a module
    url = pairing.request.pairing_url()
    deadline = clock.seconds() + TIMEOUT_SECONDS
    try:
        response = await in_time(client.post(url, data=pairing.form(), allow_redirects=False, unbuffered=True),
                                 TIMEOUT_SECONDS, clock)
    except Exception as e:
        if timed_out(e):
            raise PairingError(_TOO_SLOW)
        if any(isinstance(getattr(f, "value", None), ResponseHeadTooLong) for f in getattr(e, "reasons", None) or []):
            raise PairingError(_TOO_LONG)
        if is_tls_refusal(e):
            # Not the PC's internet connection: say what is wrong and what to do.
            explained = await explain(e, url, ca_file, direct=not via_proxy, clock=clock)
            raise PairingError(f"Cannot pair: {explained}.")
        raise PairingError(unreachable(pairing.request.service))
    chunks: list[bytes] = []
    reader = CappedBody(chunks.append, MAX_ANSWER, deadline, clock)
    response.deliverBody(reader)
    try:
        await reader.done
    except ResponseTooLarge:
        raise PairingError(_TOO_LONG)
    except ResponseTooSlow:
        raise PairingError(_TOO_SLOW)
    except Exception:
        raise PairingError("The pairing service's answer was cut off, so it was not used.")
    if response.code != 200:
        raise PairingError(f"The pairing service refused the request (HTTP {response.code}).")
    try:
        issued = parse_issue_answer(b"".join(chunks).decode("utf-8", "replace"))
    except BadPairingAnswer:
        raise PairingError("The pairing service's answer was not a pairing, so it was not used.")
    check_answer(issued, pairing)
    return issued


_TOO_SLOW = "The pairing service's answer was too slow, so it was not used."
_TOO_LONG = "The pairing service sent a far longer answer than a pairing, so it was not used."
