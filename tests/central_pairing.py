"""
A local stand-in for AtomJump's central pairing service
(https://medimage-pair.atomjump.com/med-genid.php, PROTOCOL.md A5), for
tests only: it issues mixed-case codes, compares them case-sensitively as
the real one does, and records every request it gets, so a test can say
exactly what a PC sent where.  Also usable as a hostile service: set
C{answer} to make it say anything.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass, field
from typing import Callable, Optional
from urllib.parse import parse_qs, quote

from twisted.web.resource import Resource
from twisted.web.server import Site


@dataclass
class Received:
    method: str
    query: dict[str, list[str]]
    form: dict[str, list[str]]
    raw_query: str


@dataclass
class CentralPairing(Resource):
    isLeaf = True
    requests: list[Received] = field(default_factory=list)
    codes: dict[str, tuple[str, str]] = field(default_factory=dict)  # code -> (id, relay)
    #: Replaces the normal answer to a POST: C{(status, body)} from the
    #: request's form fields.
    answer: Optional[Callable[[dict[str, list[str]]], tuple[int, bytes]]] = None

    def __post_init__(self):
        Resource.__init__(self)

    def render_POST(self, request):
        form = parse_qs(request.content.read().decode(), keep_blank_values=True)
        self._record(request, form)
        if self.answer is not None:
            code, body = self.answer(form)
            request.setResponseCode(code)
            return body
        guid = form.get("guid", [""])[0] or "".join(
            secrets.choice(string.ascii_letters + string.digits) for _ in range(18))
        relay = form.get("proxyServer", [""])[0]
        code = mixed_case_code()
        self.codes[code] = (guid, relay)
        country = quote(form.get("country", [""])[0])
        return f"{code} {guid} {relay} {country}\n".encode()

    def render_GET(self, request):
        self._record(request, {})
        code = request.args.get(b"compare", [b""])[0].decode()
        if code in self.codes:  # case-sensitive, as the real service
            paired_id, relay = self.codes[code]
            return f"{relay}/write/{paired_id}".encode()
        return b"nomatch"

    def _record(self, request, form) -> None:
        raw_query = request.uri.decode().partition("?")[2]
        self.requests.append(Received(request.method.decode(), parse_qs(raw_query), form, raw_query))


def mixed_case_code() -> str:
    """
    4 characters with at least one lower- and one upper-case letter, like
    the central service's C{2z2H}.
    """
    while True:
        code = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(4))
        if code.lower() != code and code.upper() != code:
            return code


async def start_central(reactor=None):
    """
    Listen on 127.0.0.1, any port.  Returns (service, url of
    med-genid.php, listening port to stop).
    """
    if reactor is None:
        from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint

    service = CentralPairing()
    root = Resource()
    root.putChild(b"med-genid.php", service)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(root))
    return service, f"http://127.0.0.1:{port.getHost().port}/med-genid.php", port


async def pair_on_page(http_client, pc_url: str, **fields: str):
    """
    Pair as the PC's admin does in a browser on the PC: open /pair (which
    sets the CSRF cookie and gives the token), then submit the form from
    that page.  Returns (response, body text).
    """
    import re
    from urllib.parse import urlencode

    page = await http_client.get(pc_url + "/pair")
    html = (await page.content()).decode()
    token = re.search(r"name='csrf' value='([0-9a-f]+)'", html).group(1)
    # The CSRF cookie travels in the client's cookie jar, as in a browser.
    response = await http_client.post(
        pc_url + "/pair", data=urlencode({"csrf": token, **fields}).encode(),
        headers={b"Content-Type": [b"application/x-www-form-urlencoded"], b"Origin": [pc_url.encode()]})
    return response, (await response.content()).decode()


def shown_code(page: str) -> str:
    import re

    return re.search(r"id='code'>([A-Za-z0-9]+)<", page).group(1)
