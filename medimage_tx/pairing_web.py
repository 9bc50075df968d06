"""
Pairing over HTTP (PROTOCOL.md A5).

Relay: L{PairingService} at C{/med-genid.php} (the original's path) and
C{/pair/code}: C{POST} issues a code, C{GET ?compare=<CODE>} redeems one.

PC: L{PairPage} at C{GET /pair?proxyServer=<relay>}: asks the relay for a
code, stores C{globalId} and C{readProxy}, and shows the code.
L{request_code} is shared with the C{medimage-tx pair} command.
"""

from __future__ import annotations

import html
import time
from typing import Any
from urllib.parse import parse_qs

from twisted.logger import Logger
from twisted.web.resource import Resource
from treq.client import HTTPClient
from twisted.web.client import HTTPConnectionPool

from .admin import AdminResource
from .identity import fingerprint
from .proxy_tunnel import make_agent
from .pairing import (
    CODE_LIFETIME, BadPairingAnswer, IssuedCode, PairingBook, issue_answer, parse_issue_answer,
    redeem_answer,
)
from .web import Answer, answer_now, html_page, render_async

log = Logger()

MAX_FORM = 4096


class PairingService(Resource):
    """
    The relay's pairing service.
    """

    isLeaf = True

    def __init__(self, book: PairingBook):
        super().__init__()
        self.book = book

    def render_POST(self, request):
        form = parse_qs(request.content.read(MAX_FORM).decode("utf-8", "replace"))

        def field(name: str) -> str:
            return form.get(name, [""])[0].strip()

        proxy_server = field("proxyServer")
        if not proxy_server.startswith(("http://", "https://")) or any(c.isspace() for c in proxy_server):
            return answer_now(request, Answer(400, b"proxyServer must be the relay's http(s) address"))
        pairing = self.book.issue(field("guid"), proxy_server.rstrip("/"), field("country")[:64])
        log.info("Pairing: issued a code for {fp}", fp=fingerprint(pairing.paired_id))
        return answer_now(request, Answer(200, issue_answer(pairing).encode()))

    def render_GET(self, request):
        values = request.args.get(b"compare")
        if not values:
            return answer_now(request, Answer(400, b"Expected ?compare=<code>"))
        address = request.getClientAddress().host or "unknown"
        pairing = self.book.redeem(values[0].decode("utf-8", "replace"), address)
        return answer_now(request, Answer(200, redeem_answer(pairing).encode()))


async def request_code(client: HTTPClient, pairing_url: str, guid: str, proxy_server: str,
                       country: str) -> IssuedCode:
    """
    Ask a pairing service for a code.

    @raise BadPairingAnswer: an answer that is not a pairing.
    @raise Exception: the service cannot be reached (network errors).
    """
    response = await client.post(
        pairing_url,
        data={"guid": guid, "proxyServer": proxy_server, "country": country},
    )
    body = (await response.content()).decode("utf-8", "replace")
    if response.code != 200:
        raise BadPairingAnswer(f"the pairing service answered {response.code}: {body.strip()[:80]}")
    return parse_issue_answer(body)


def pairing_url_for(proxy_server: str, custom: str = "") -> str:
    return custom or proxy_server.rstrip("/") + "/med-genid.php"


class PairPage(AdminResource):
    """
    C{GET /pair?proxyServer=<relay URL>[&country=..][&customPairing=..]} on a
    clinic PC, for its admin only.  Works in lockDown mode too: it is how
    clinics add phones.
    """

    def render_GET(self, request):
        return render_async(request, self._pair)

    async def _pair(self, request) -> Answer:
        config = self.state.config

        def arg(name: bytes) -> str:
            values = request.args.get(name)
            return values[0].decode("utf-8", "replace").strip() if values else ""

        proxy_server = arg(b"proxyServer") or _relay_of(config.readProxy)
        if not proxy_server.startswith(("http://", "https://")):
            return html_page(400, "Pairing needs the relay's address",
                        "<p>Open <code>/pair?proxyServer=https://your-relay:5566</code>.</p>")
        proxy_server = proxy_server.rstrip("/")
        pairing_url = pairing_url_for(proxy_server, arg(b"customPairing"))
        country = arg(b"country") or (config.raw.get("countryCode") or "")
        try:
            issued = await request_code(one_off_client(self.state.reactor, config.webProxy), pairing_url, config.globalId,
                                        proxy_server, country)
        except BadPairingAnswer as e:
            return html_page(502, "The pairing service gave an answer this server cannot use",
                        f"<p>{html.escape(str(e))}</p><p>Nothing was changed.</p>")
        except Exception as e:
            return html_page(502, "Cannot reach the pairing service",
                        f"<p>{html.escape(pairing_url)}: {html.escape(str(e) or type(e).__name__)}</p>"
                        "<p>Check the relay address and this PC's internet connection "
                        "(and <code>webProxy</code>). Nothing was changed.</p>")
        await self.state.save_config(globalId=issued.paired_id, readProxy=issued.read_proxy)
        log.info("Paired with a relay; phones can use the code for an hour")
        expires = time.strftime("%H:%M", time.localtime(time.time() + CODE_LIFETIME))
        return html_page(200, "Pair a phone", (
            f"<p style='font-size:6em;letter-spacing:0.2em;font-family:monospace'>"
            f"{html.escape(issued.code)}</p>"
            f"<p>This code works until {expires} (one hour), for any number of phones.</p>"
            "<ol><li>Open the MedImage app on the phone and tap the large circle.</li>"
            "<li>When it asks for a pairing code, enter the code above.</li>"
            "<li>Take a photo: it arrives on this PC within seconds.</li></ol>"
        ))


def one_off_client(reactor: Any, web_proxy: str) -> HTTPClient:
    """
    A client whose connections close after use: pairing is rare.
    """
    return HTTPClient(make_agent(reactor, HTTPConnectionPool(reactor, persistent=False), web_proxy))


def _relay_of(read_proxy: str) -> str:
    return read_proxy.split("/read/")[0] if "/read/" in read_proxy else ""
