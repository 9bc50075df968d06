"""
Who may see the PC's own pages and change its settings (issue 9, findings
1, 2, 9):

- C{Host} must be one of this server's own names or addresses (else DNS
  rebinding would make an attacker's page "same-origin" with the PC);
- an admin is the PC itself (a loopback peer) or a browser holding a
  C{basicAuthent} password session (cookie C{medimage_session});
- every state change is a C{POST} with a CSRF token bound to the browser's
  C{medimage_csrf} cookie, from a page of this server (C{Origin}, else
  C{Referer}, must be this server);
- admin answers carry no CORS header, are never cached and never framed.

L{Access} is the one object that decides; L{AdminResource} applies it to a
resource.  Other parts (add-ons, the web admin) use them as they are.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import TYPE_CHECKING, Callable, Optional
from urllib.parse import parse_qs, urlsplit

from twisted.web.resource import Resource

from ..web.answers import Answer, answer_now, html_page
from .hosts import OwnNames, _canonical, is_loopback
from .sessions import SessionStore

if TYPE_CHECKING:
    from ..config import Config
    from ..state import ServerState

SESSION_COOKIE = b"medimage_session"
CSRF_COOKIE = b"medimage_csrf"
CSRF_FIELD = "csrf"

#: On every admin answer: not cached (codes, settings), not framed
#: (clickjacking a Confirm button), no Referer to other sites.
ADMIN_HEADERS = {
    b"cache-control": b"no-store",
    b"x-frame-options": b"DENY",
    b"content-security-policy": b"frame-ancestors 'none'",
    b"referrer-policy": b"same-origin",
    b"x-content-type-options": b"nosniff",
}


class Access:
    """
    The access rules of one server.

    @ivar sessions: the password sessions (L{SessionStore}); add-ons that
        offer the original's C{/addon/get-session} use this same store.
    """

    def __init__(self, state: ServerState, listen_address: Optional[str] = None,
                 now: Callable[[], float] = time.time):
        self.state = state
        self.names = OwnNames(time.monotonic, lambda: state.config.serverName, listen_address)
        self.sessions = SessionStore(lambda: _password(state.config), now)
        self._secret = secrets.token_bytes(32)

    # -- who is asking -------------------------------------------------

    def host_ok(self, request) -> bool:
        """
        The request's C{Host} names this server.
        """
        host = request.getHeader(b"host")
        return host is not None and self.names.allows(host.decode("latin-1"))

    def is_local(self, request) -> bool:
        """
        The peer is this machine: a loopback address, or one of its own
        interface addresses (a browser on the PC that opened its LAN
        address), asking itself: never a client a balancer or a proxy
        passed on (L{relayed}).  Only meaningful with L{host_ok}.
        """
        if relayed(request):
            return False
        peer = getattr(request.getClientAddress(), "host", "") or ""
        return is_loopback(peer) or self.names.is_own_address(peer)

    def session_id(self, request) -> Optional[str]:
        value = request.getCookie(SESSION_COOKIE)
        return value.decode("ascii", "replace") if value else None

    def signed_in(self, request) -> bool:
        return self.sessions.valid(self.session_id(request))

    def is_admin(self, request) -> bool:
        """
        The PC itself, or a password session, through one of this server's
        own names.
        """
        return self.host_ok(request) and (self.is_local(request) or self.signed_in(request))

    def cross_origin(self, request) -> bool:
        """
        A page of another origin (or another site) made this request: it
        must learn nothing from the answer.
        """
        for header in (b"origin", b"referer"):  # a foreign Referer: an old browser's <img>
            value = request.getHeader(header)
            if value is not None and not self.is_own_origin(request, value.decode("latin-1")):
                return True
        site = (request.getHeader(b"sec-fetch-site") or b"").lower()
        return site in (b"cross-site", b"same-site")

    def same_origin(self, request) -> bool:
        """
        C{Origin} (or, without one, C{Referer}) is this server as the
        request addressed it.  Neither: not same-origin.
        """
        origin = request.getHeader(b"origin")
        if origin is None:
            referer = request.getHeader(b"referer")
            if referer is None:
                return False
            origin = referer
        return self.is_own_origin(request, origin.decode("latin-1"))

    def is_own_origin(self, request, origin: str) -> bool:
        """
        C{origin} (an C{Origin} value or a URL) is this server as the
        request addressed it: same scheme, host and port.
        """
        host = request.getHeader(b"host")
        if host is None:
            return False
        scheme = "https" if request.isSecure() else "http"
        try:
            theirs = urlsplit(origin)
            ours = urlsplit(f"{scheme}://{host.decode('latin-1')}")
            return (theirs.scheme.lower() == scheme and theirs.hostname is not None
                    and _canonical(theirs.hostname) == _canonical(ours.hostname or "")
                    and _port(theirs) == _port(ours))
        except ValueError:
            return False

    _is_own_origin = is_own_origin  # the name add-ons first used

    # -- CSRF -------------------------------------------------------------

    def csrf_token(self, request) -> str:
        """
        The token for forms on this page, bound to the browser's CSRF
        cookie (set here if the browser has none).
        """
        browser = request.getCookie(CSRF_COOKIE)
        if not browser or len(browser) > 100:
            browser = secrets.token_urlsafe(24).encode("ascii")
            request.addCookie(CSRF_COOKIE, browser, path=b"/", httpOnly=True, sameSite="strict",
                              secure=request.isSecure() or None)
            request.received_cookies[CSRF_COOKIE] = browser
        return hmac.new(self._secret, b"csrf:" + browser, hashlib.sha256).hexdigest()

    def csrf_ok(self, request, token: str) -> bool:
        browser = request.getCookie(CSRF_COOKIE)
        if not browser or not token:
            return False
        expected = hmac.new(self._secret, b"csrf:" + browser, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected.encode("ascii"), token.encode("ascii", "replace"))

    def csrf_field(self, request) -> str:
        return f"<input type='hidden' name='{CSRF_FIELD}' value='{self.csrf_token(request)}'>"

    # -- the decision --------------------------------------------------------

    def refusal(self, request, form: Optional[dict[str, str]] = None,
                need_admin: bool = True, csrf: bool = True) -> Optional[Answer]:
        """
        Why this admin request may not go on (an answer to send), or
        L{None}.  C{form}: the fields of a C{POST}.  C{need_admin=False}
        (signing in and out): all checks but being an admin.  C{csrf=False}
        (the original's add-on forms, which cannot send our token): a
        C{POST} needs only to be same-origin.
        """
        if not self.host_ok(request):
            return html_page(403, "Wrong address for this server", (
                "<p>This page is only served under this server's own names and addresses, "
                "e.g. <code>http://localhost:" + str(self.state.config.listenPort) + "/</code> "
                "on the PC itself.</p>"))
        if self.cross_origin(request):
            return html_page(403, "Refused: another site's page asked", (
                "<p>This server's own pages answer only themselves. Nothing was changed.</p>"))
        if need_admin and not (self.is_local(request) or self.signed_in(request)):
            return html_page(403, "Sign in first", (
                "<p>This page is for the clinic's administrator: open it on the PC itself, "
                "or <a href='/admin/login'>sign in</a> with the password from "
                "<code>basicAuthent</code> in config.json.</p>"))
        if request.method == b"POST":
            if not self.same_origin(request):
                return html_page(403, "Refused: not sent from this server's own page", (
                    "<p>Changes are only accepted from this server's own pages. "
                    "Nothing was changed.</p>"))
            if csrf and (form is None or not self.csrf_ok(request, form.get(CSRF_FIELD, ""))):
                return html_page(403, "The form has expired", (
                    "<p>Open the page again and repeat what you did. Nothing was changed.</p>"))
        return None


#: Headers a proxy adds for the client it passes on; a browser never sends
#: them of itself.
FORWARDING_HEADERS = (b"forwarded", b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto",
                      b"x-real-ip", b"via")


def relayed(request) -> bool:
    """
    The request came through a PROXY-protocol balancer, or carries a
    proxy's forwarding headers: its client is somebody else than the peer
    (a reverse proxy on this machine connects from loopback for everyone).
    """
    if getattr(getattr(request, "transport", None), "via_proxy", False):
        return True
    return any(request.requestHeaders.hasHeader(name) for name in FORWARDING_HEADERS)


def _port(parts) -> int:
    if parts.port is not None:
        return parts.port
    return 443 if parts.scheme.lower() == "https" else 80


def _password(config: Config) -> str:
    value = config.raw.get("basicAuthent")
    return value if isinstance(value, str) else ""


def form_fields(request) -> Optional[dict[str, str]]:
    """
    The fields of a small urlencoded C{POST} body (first value of each), or
    L{None} if the body was not one (or was too large).
    """
    if getattr(request, "body_too_large", False):
        return None
    content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if content_type != b"application/x-www-form-urlencoded":
        return None
    request.content.seek(0)
    body = request.content.read().decode("utf-8", "replace")
    return {name: values[0] for name, values in parse_qs(body, keep_blank_values=True).items()}


def set_admin_headers(request) -> None:
    for name, value in ADMIN_HEADERS.items():
        request.setHeader(name, value)


class AdminResource(Resource):
    """
    A page of the PC's own: served only under its own names, only to an
    admin, with every C{POST} CSRF- and same-origin-checked.  Subclasses
    write C{render_GET(request)} and C{render_POST(request, form)}.
    C{need_admin = False} (signing in and out): every check but that one.
    """

    isLeaf = True
    need_admin = True

    def __init__(self, state: ServerState):
        super().__init__()
        self.state = state

    def render(self, request):
        set_admin_headers(request)
        form = form_fields(request) if request.method == b"POST" else None
        refused = self.state.access.refusal(request, form, self.need_admin)
        if refused is not None:
            return answer_now(request, refused)
        if request.method == b"POST":
            if not hasattr(self, "render_POST"):
                return super().render(request)  # 405
            return self.render_POST(request, form)
        return super().render(request)
