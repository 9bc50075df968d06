"""
Pairing over HTTP (PROTOCOL.md A5).

Relay: L{PairingService} at C{/med-genid.php} (the original's path) and
C{/pair/code}: C{POST} issues a code, C{GET ?compare=<CODE>} redeems one.

PC: L{PairPage} at C{/pair}, for the PC's admin only: C{GET} shows a form
(and contacts nobody), C{POST} pairs through the pairing service
(L{pc_pairing}, shared with the C{medimage-tx pair} command), after an
explicit confirmation when the PC would get a new id, and shows the code
exactly as the service gave it.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any, Callable, Optional
from urllib.parse import parse_qs

from twisted.logger import Logger
from twisted.web.resource import Resource

from ..admin import AdminResource
from ..identity import fingerprint
from ..relay_store.pairing_codes import NOMATCH, issue_answer, redeem_answer
from .request_budget import address_key
from ..errors import TryLater
from ..pc.pairing import (
    CENTRAL_PAIRING_URL,
    PairingError,
    PairingPlan,
    PairRequest,
    advice_for,
    paired_changes,
    plan,
    relay_of,
    request_code_as_configured,
)
from .answers import Answer, answer_now, render_async
from ..admin.pages.layout import html_in_layout

if TYPE_CHECKING:
    from ..relay_store import PairingDesk

log = Logger()

MAX_FORM = 4096


class PairingService(Resource):
    """
    The relay's pairing service, over a pairing desk: this process's
    (L{medimage_tx.relay_store.local.LocalPairingDesk}) or the shared
    database's; its C{issue} and C{redeem} are async and raise
    L{TryLater} for transient trouble.
    """

    isLeaf = True

    def __init__(self, desk: PairingDesk, note_reader: Optional[Callable[[str, str], Any]] = None):
        super().__init__()
        self.desk = desk
        # A code redeemed here names an id a clinic reads (the relay's
        # L{note_reader}): its phones' photos need not share the small pool.
        self.note_reader = note_reader

    def render_POST(self, request):
        return render_async(request, self._issue)

    async def _issue(self, request) -> Answer:
        form = parse_qs(request.content.read(MAX_FORM).decode("utf-8", "replace"))

        def field(name: str) -> str:
            return form.get(name, [""])[0].strip()

        proxy_server = field("proxyServer")
        address = client_address(request)
        if not proxy_server.startswith(("http://", "https://")) or any(c.isspace() for c in proxy_server):
            log.info("Pairing: refused a code request from {address}: no usable proxyServer", address=address)
            return Answer(400, b"proxyServer must be the relay's http(s) address")
        try:
            pairing = await self.desk.issue(field("guid"), proxy_server.rstrip("/"), field("country"),
                                            address)
        except TryLater as e:
            log.info("Pairing: refused a code request from {address}: {why}", address=address, why=str(e))
            close_after_answer(request)
            raise
        log.info("Pairing: issued a code for {fp} to {address}", fp=fingerprint(pairing.paired_id),
                 address=address)
        return Answer(200, issue_answer(pairing).encode())

    def render_GET(self, request):
        values = request.args.get(b"compare")
        if not values:
            return answer_now(request, Answer(400, b"Expected ?compare=<code>"))
        return render_async(request, self._compare, values[0].decode("utf-8", "replace"))

    async def _compare(self, request, code: str) -> Answer:
        address = client_address(request)
        checked, pairing = await self.desk.redeem(code, address)
        if not checked:
            log.info("Pairing: a code from {address} was not checked: over the guess limits", address=address)
            close_after_answer(request)
            return Answer(200, NOMATCH.encode())
        if pairing is None:
            log.info("Pairing: a code from {address} matched nothing", address=address)
        else:
            log.info("Pairing: a phone at {address} paired with {fp}", address=address,
                     fp=fingerprint(pairing.paired_id))
            if self.note_reader is not None:
                await self.note_reader(pairing.paired_id, address_key(address))
        return Answer(200, redeem_answer(pairing).encode())


def close_after_answer(request) -> None:
    """
    A client past a limit gets its answer and then the connection closes:
    requests it pipelined behind are dropped unread, so a flood costs it a
    new connection (capped per address) for every answer instead of
    keeping the reactor busy with a batch of refusals.
    """
    request.setHeader(b"connection", b"close")
    request.channel.persistent = False


def client_address(request) -> str:
    return getattr(request.getClientAddress(), "host", None) or "unknown"


class PairPage(AdminResource):
    """
    C{/pair} on a clinic PC.  Works in lockDown mode too: it is how clinics
    add phones.  The original's query (C{?proxyServer=..&country=..&style=..
    &customPairing=..}) only fills in the form.
    """

    def render_GET(self, request):
        def arg(name: bytes) -> str:
            values = request.args.get(name)
            return values[0].decode("utf-8", "replace").strip() if values else ""

        config = self.state.config
        linked = any(request.args.get(name) for name in (b"proxyServer", b"customPairing"))
        return answer_now(request, self._form(request, {
            "proxyServer": arg(b"proxyServer") or relay_of(config.readProxy),
            "country": arg(b"country") or _text(config.raw.get("countryCode")),
            "style": arg(b"style"),
            "customPairing": arg(b"customPairing"),
        }, notice=LINK_NOTICE if linked else ""))

    def render_POST(self, request, form: dict[str, str]):
        return render_async(request, self._pair, form)

    async def _pair(self, request, form: dict[str, str]) -> Answer:
        try:
            wanted = PairRequest.checked(form.get("proxyServer", ""), form.get("country", ""),
                                         form.get("style", ""), form.get("customPairing", ""))
        except PairingError as e:
            return self._form(request, form, error=str(e), code=400)
        broken = await self.state.config_file_problem()
        if broken:
            # Before a code is issued: a pairing that cannot be saved would
            # leave phones paired with an id this PC never reads.
            return self._form(request, form, error=f"config.json cannot be used: {broken}. Correct it "
                              "first; nothing was sent.", code=409)
        pairing = plan(self.state.config, wanted)
        if pairing.new_id and form.get("confirm") != "new-id":
            return self._confirm(request, pairing)
        try:
            issued = await request_code_as_configured(self.state.reactor, self.state.config, pairing)
        except PairingError as e:
            log.info("Pairing failed: {why}", why=str(e))
            return self._page(request, 502, "Not paired", (
                f"<p>{html.escape(str(e))}</p><p>Nothing was changed.</p>"
                "<p><a href='/pair'>Back to pairing</a></p>"))
        await self.state.save_config(**paired_changes(self.state.config, issued, wanted))
        log.info("Paired with a relay (id {fp}{new})", fp=fingerprint(issued.paired_id),
                 new=", a new id confirmed by the admin" if pairing.new_id else "")
        return self._page(request, 200, "Pair a phone", code_html(issued.code, wanted))

    def _page(self, request, code: int, title: str, body_html: str) -> Answer:
        return html_in_layout(request, self.state, code, title, "/admin/pair", body_html)

    def _form(self, request, values: dict[str, str], error: str = "", code: int = 200,
              notice: str = "") -> Answer:
        config = self.state.config
        current = relay_of(config.readProxy)
        status = (f"<p>This PC is paired with the relay <code>{html.escape(current)}</code>.</p>"
                  if current and config.globalId else "<p>This PC is not paired with a relay yet.</p>")
        problem = f"<p><strong>{html.escape(error)}</strong></p>" if error else notice

        def field(name: str, label: str, hint: str = "") -> str:
            value = html.escape(values.get(name, ""), quote=True)
            return (f"<p><label>{label}<br><input name='{name}' value='{value}' size='60'></label>"
                    f"{'<br><small>' + hint + '</small>' if hint else ''}</p>")

        return self._page(request, code, "Pair phones with this PC", (
            status + problem
            + "<form method='post' action='/pair'>" + self.state.access.csrf_field(request)
            + field("proxyServer", "Relay address (proxyServer)",
                    "The relay the phones send to, e.g. https://relay.example.org:5566")
            + field("country", "Country code (optional)")
            + field("customPairing", "Pairing service (leave empty for AtomJump's)",
                    "The MedImage app redeems codes only at AtomJump's pairing service. Another "
                    "service (such as a medimage_tx relay's own <code>/med-genid.php</code>) only "
                    "works for clients that can be pointed at it.")
            + f"<input type='hidden' name='style' value='{html.escape(values.get('style', ''), quote=True)}'>"
            + "<p><button type='submit'>Get a pairing code</button></p></form>"
            + PAIRING_NOTE))

    def _confirm(self, request, pairing: PairingPlan) -> Answer:
        wanted = pairing.request
        hidden = "".join(
            f"<input type='hidden' name='{name}' value='{html.escape(value, quote=True)}'>"
            for name, value in (("proxyServer", wanted.proxy_server), ("country", wanted.country),
                                ("style", wanted.style), ("customPairing", wanted.custom_pairing),
                                ("confirm", "new-id")))
        where = (f"the relay <code>{html.escape(pairing.current_relay)}</code>"
                 if pairing.current_relay else "its relay")
        return self._page(request, 200, "Give this PC a new pairing?", (
            f"<p>This PC is paired with {where}. Pairing with "
            f"<code>{html.escape(wanted.proxy_server)}</code> through "
            f"<code>{html.escape(wanted.service)}</code> gives it a <strong>new id</strong>: "
            "its current id is not sent there, and phones paired now stop reaching this PC "
            "until they are paired again with the new code.</p>"
            "<form method='post' action='/pair'>" + self.state.access.csrf_field(request) + hidden
            + "<button type='submit'>Yes, give this PC a new pairing</button> "
            "<a href='/pair'>No, keep the current pairing</a></form>"))


LINK_NOTICE = ("<p><strong>The link you followed filled in this form: check that the relay and "
               "the pairing service are your clinic's before you press the button.</strong></p>")

PAIRING_NOTE = (
    "<p>The code goes to the pairing service; this page contacts nothing until you press the "
    "button. The unchanged MedImage app redeems codes only at AtomJump's central pairing "
    "service (<code>" + CENTRAL_PAIRING_URL + "</code>), so leave the pairing service empty "
    "for real phones; any relay, a medimage_tx relay included, can be the relay.</p>")


def code_html(code: str, wanted: PairRequest) -> str:
    advice = advice_for(code, wanted)
    shown = (f"<p class='code' id='code'>"
             f"{html.escape(code)}</p>")
    if not advice.for_the_app:
        return (shown + f"<p><strong>{html.escape(advice.not_for_the_app)}</strong></p>"
                f"<p>This PC is now paired with <code>{html.escape(wanted.proxy_server)}</code>.</p>")
    case_note = " " + advice.case_note if advice.case_note else ""
    return (
        shown
        + f"<p>Pairing codes expire: enter it on the phones now.{case_note}</p>"
        "<ol><li>Open the MedImage app on the phone and tap the large circle.</li>"
        "<li>When it asks for a pairing code, enter the code above.</li>"
        "<li>Take a photo: it arrives on this PC within seconds.</li></ol>"
        f"<p>Phones send to <code>{html.escape(wanted.proxy_server)}</code>.</p>")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""
