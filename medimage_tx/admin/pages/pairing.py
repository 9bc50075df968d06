"""
C{/admin/pair}: the original's two ways of pairing phones, as buttons:
through AtomJump's service (a country from the list; the relay the
original keeps in C{proxy}), or through the clinic's own relay address.
Pairing itself is L{medimage_tx.pc.pairing}'s (shared with C{/pair} and
the C{pair} command): the PC's id goes only where it may, a new id only
after the admin confirms, and the code is shown exactly as issued.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.logger import Logger
from twisted.web.template import Tag, tags

from ...identity import fingerprint
from ...pc.pairing import (
    PairingError,
    PairRequest,
    advice_for,
    paired_changes,
    plan,
    relay_of,
    request_code_as_configured,
)
from ...web.answers import render_async
from .countries import COUNTRIES, DEFAULT_COUNTRY
from .layout import AdminPage, csrf_input, field, notice, page, send

if TYPE_CHECKING:
    from ...config import Config

log = Logger()

#: The AtomJump relay offered when config.json has no C{proxy} yet.
ATOMJUMP_RELAY = "https://medimage-nz1.atomjump.com"


def _text(config: Config, key: str) -> str:
    value = config.raw.get(key)
    return value.strip() if isinstance(value, str) else ""


class PairingPage(AdminPage):
    """
    Works in lockDown too: it is how clinics add phones (as C{/pair}).
    """

    pc_only = True

    def render_GET(self, request):
        return send(request, self._form(request))

    def render_POST(self, request, form: dict[str, str]):
        return render_async(request, self._pair, form)

    # -- the pages ---------------------------------------------------------

    def _status(self) -> Tag:
        config = self.state.config
        relay = relay_of(config.readProxy)
        if relay and config.globalId:
            return tags.p("This PC is paired with the relay ", tags.code(relay),
                          ". Pairing the same way again keeps phones paired.")
        return tags.p("This PC is not paired with a relay yet: phones reach it only on the clinic's WiFi.")

    def _form(self, request, error: str = "") -> Tag:
        config = self.state.config
        chosen = _text(config, "countryCode") or DEFAULT_COUNTRY
        options = [tags.option(name, value=code, **({"selected": "selected"} if code == chosen else {}))
                   for code, name in COUNTRIES]
        atomjump = tags.form(
            csrf_input(request, self.state),
            tags.input(type="hidden", name="way", value="atomjump"),
            tags.input(type="hidden", name="style", value=_text(config, "style")),
            tags.h2("Through AtomJump's service"),
            tags.p("The usual way: the MedImage app on any phone takes the code."),
            field("Country of the AtomJump relay", tags.select(*options, name="country", id="country")),
            field("AtomJump relay address",
                  tags.input(type="url", name="proxyServer", id="aj-relay",
                             value=_text(config, "proxy") or ATOMJUMP_RELAY),
                  "The AtomJump relay for that country, kept as proxy in config.json."),
            tags.button("Pair through AtomJump", type="submit"),
            method="post", action="/admin/pair", class_="card")
        own = tags.form(
            csrf_input(request, self.state),
            tags.input(type="hidden", name="way", value="own"),
            tags.h2("Through your own relay"),
            tags.p("For a clinic that runs its own relay (a medimage_tx relay or the original's)."),
            field("Your relay's address", tags.input(type="url", name="proxyServer", id="own-relay",
                                                     value=relay_of(config.readProxy),
                                                     placeholder="https://relay.example.org:5566"),
                  "The address phones send to."),
            field("Pairing service (leave empty for AtomJump's)",
                  tags.input(type="url", name="customPairing", id="own-service",
                             value=_text(config, "customPairing")),
                  "The MedImage app takes codes only from AtomJump's pairing service; a relay's own "
                  "/med-genid.php works only for clients that can be pointed at it."),
            tags.button("Pair with this relay", type="submit"),
            method="post", action="/admin/pair", class_="card")
        return page(request, self.state, "Pair phones", "/admin/pair",
                    notice(error, "error") if error else "", self._status(),
                    tags.p("Nothing is sent anywhere until you press a button."),
                    tags.div(atomjump, own, class_="ways"))

    def _confirm(self, request, form: dict[str, str], pairing) -> Tag:
        hidden = [tags.input(type="hidden", name=name, value=form.get(name, ""))
                  for name in ("way", "country", "style", "proxyServer", "customPairing")]
        current = pairing.current_relay
        return page(request, self.state, "Switch relay?", "/admin/pair",
                    notice(["This PC is paired with ",
                            tags.code(current) if current else "a relay",
                            ". Pairing with ", tags.code(pairing.request.proxy_server),
                            " gives it a new pairing: ",
                            tags.strong("phones paired now stop sending to this PC"),
                            " until each is paired again with the new code."], "error"),
                    tags.form(csrf_input(request, self.state), *hidden,
                              tags.input(type="hidden", name="confirm", value="new-id"),
                              tags.button("Yes, switch relay", type="submit", class_="danger"),
                              " ", tags.a("No, keep the current pairing", href="/admin/pair"),
                              method="post", action="/admin/pair"))

    def _code(self, request, code: str, wanted: PairRequest) -> Tag:
        advice = advice_for(code, wanted)
        shown = tags.p(code, class_="code", id="code", **{"aria-label": "Pairing code"})
        if not advice.for_the_app:
            return page(request, self.state, "Pairing code", "/admin/pair",
                        tags.p("The pairing service gave this code:"), shown,
                        notice(advice.not_for_the_app, "error"),
                        tags.p("This PC is now paired with ", tags.code(wanted.proxy_server), "."),
                        tags.p(tags.a("Pair another way", href="/admin/pair")))
        case_note = " " + advice.case_note if advice.case_note else ""
        return page(request, self.state, "Pairing code", "/admin/pair",
                    tags.p("Enter this code on the phone:"), shown,
                    tags.p("Pairing codes expire: enter it on the phones now.", case_note),
                    tags.h2("On each phone"),
                    tags.ol(tags.li("Open the MedImage app and tap the large circle."),
                            tags.li("When it asks for a pairing code, enter the code above."),
                            tags.li("Take a photo: it arrives on this PC within seconds.")),
                    tags.p("Phones send to ", tags.code(wanted.proxy_server), "."),
                    tags.p(tags.a("Pair another way", href="/admin/pair")))

    # -- pairing ------------------------------------------------------------

    def _wanted(self, form: dict[str, str]) -> PairRequest:
        config = self.state.config
        if form.get("way") == "atomjump":
            # AtomJump's service, unless config.json's customPairing names
            # another (pc_pairing.saved_service), as the command does.
            return PairRequest.checked(form.get("proxyServer", ""), form.get("country", ""),
                                       form.get("style", ""), _text(config, "customPairing"))
        return PairRequest.checked(form.get("proxyServer", ""), "", "", form.get("customPairing", ""))

    async def _pair(self, request, form: dict[str, str]):
        try:
            wanted = self._wanted(form)
        except PairingError as e:
            return self._answer(request, self._form(request, str(e)), 400)
        broken = await self.state.config_file_problem()
        if broken:
            # Checked before a code is issued: a pairing that cannot be saved
            # would leave phones paired with an id this PC never reads.
            return self._answer(request, self._form(
                request, f"config.json cannot be used: {broken}. Correct it first; nothing was sent."), 409)
        pairing = plan(self.state.config, wanted)
        if pairing.new_id and form.get("confirm") != "new-id":
            return self._answer(request, self._confirm(request, form, pairing))
        try:
            issued = await request_code_as_configured(self.state.reactor, self.state.config, pairing)
        except PairingError as e:
            log.info("Pairing failed: {why}", why=str(e))
            return self._answer(request, self._form(request, f"{e} Nothing was changed."), 502)
        changes = paired_changes(self.state.config, issued, wanted)
        if form.get("way") == "atomjump":
            # Remembered as the original does: the next pairing starts here.
            changes.update(proxy=wanted.proxy_server, style=wanted.style)
        await self.state.save_config(**changes)
        log.info("Paired with a relay (id {fp}{new})", fp=fingerprint(issued.paired_id),
                 new=", a new id confirmed by the admin" if pairing.new_id else "")
        return self._answer(request, self._code(request, issued.code, wanted))

    def _answer(self, request, document: Tag, code: int = 200):
        send(request, document, code)
        return None  # answered: render_async writes nothing more
