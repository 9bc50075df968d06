"""
Signing in with the C{basicAuthent} password: our own form
(C{/admin/login}, C{/admin/logout}) and the original add-on's API
(L{GetSession}, for C{/addon/get-session?pass=...}, C{?sessionId=...},
C{&logout=true}).  All of them set or clear the same session cookie.
"""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING

from twisted.web.resource import Resource

from ..web.answers import Answer, answer_now, html_page
from .access import SESSION_COOKIE, AdminResource, form_fields, set_admin_headers
from .sessions import PasswordNotSet, TooManyAttempts, WrongPassword

if TYPE_CHECKING:
    from ..state import ServerState


def set_session_cookie(request, session_id: str) -> None:
    request.addCookie(SESSION_COOKIE, session_id.encode("ascii"), path=b"/", httpOnly=True,
                      sameSite="strict", secure=request.isSecure() or None)


def clear_session_cookie(request) -> None:
    request.addCookie(SESSION_COOKIE, b"", path=b"/", httpOnly=True, sameSite="strict",
                      max_age=b"0", secure=request.isSecure() or None)


def peer(request) -> str:
    return getattr(request.getClientAddress(), "host", "") or "unknown"


class LoginPage(AdminResource):
    """
    C{GET /admin/login}: the form; C{POST}: check the password, set the
    session cookie, go to the status page.
    """

    need_admin = False

    def render_GET(self, request):
        access = self.state.access
        note = ("<p>This browser is on the PC itself: it needs no password.</p>"
                if access.is_local(request) else "")
        return answer_now(request, html_page(200, "Sign in", note + (
            "<form method='post' action='/admin/login'>"
            f"{access.csrf_field(request)}"
            "<label>Password (<code>basicAuthent</code> in config.json): "
            "<input type='password' name='password' autofocus></label> "
            "<button type='submit'>Sign in</button></form>")))

    def render_POST(self, request, form):
        try:
            session_id = self.state.access.sessions.login(form.get("password", ""), peer(request))
        except (PasswordNotSet, WrongPassword, TooManyAttempts) as e:
            code = 429 if isinstance(e, TooManyAttempts) else 403
            return answer_now(request, html_page(code, "Not signed in", (
                f"<p>{html.escape(str(e))}</p><p><a href='/admin/login'>Try again</a></p>")))
        set_session_cookie(request, session_id)
        request.setResponseCode(303)
        request.setHeader(b"location", b"/")
        return b""


class LogoutPage(AdminResource):
    """
    C{POST /admin/logout}: end the session.
    """

    need_admin = False

    def render_POST(self, request, form):
        access = self.state.access
        access.sessions.logout(access.session_id(request))
        clear_session_cookie(request)
        return answer_now(request, html_page(200, "Signed out", "<p><a href='/'>Home</a></p>"))


class GetSession(Resource):
    """
    The original basic-authentication add-on's API, answered as JSON:
    C{?pass=P} gives C{{"success": true, "sessionId": ".."}} (and the session
    cookie); C{?sessionId=S} says whether S is live; C{?sessionId=S&logout=true}
    ends it.  Served under this server's own names only, never to another
    site's page, and with wrong passwords throttled.
    """

    isLeaf = True

    def __init__(self, state: ServerState):
        super().__init__()
        self.state = state

    def render_GET(self, request):
        return self._answer(request, {k.decode("utf-8", "replace"): v[0].decode("utf-8", "replace")
                                      for k, v in request.args.items()})

    def render_POST(self, request):
        fields = form_fields(request) or {}
        fields.update({k.decode("utf-8", "replace"): v[0].decode("utf-8", "replace")
                       for k, v in request.args.items()})
        return self._answer(request, fields)

    def _answer(self, request, fields: dict[str, str]) -> bytes:
        set_admin_headers(request)
        access = self.state.access
        if not access.host_ok(request) or access.cross_origin(request):
            return _json(request, 403, {"success": False, "error": "Refused: not this server's own page."})
        sessions = access.sessions
        session_id: str | None
        if fields.get("pass"):
            try:
                session_id = sessions.login(fields["pass"], peer(request))
            except (PasswordNotSet, WrongPassword, TooManyAttempts) as e:
                code = 429 if isinstance(e, TooManyAttempts) else 200
                return _json(request, code, {"success": False, "error": str(e)})
            set_session_cookie(request, session_id)
            return _json(request, 200, {"success": True, "sessionId": session_id})
        session_id = fields.get("sessionId") or access.session_id(request)
        if session_id:
            if fields.get("logout") == "true":
                ended = sessions.logout(session_id)
                clear_session_cookie(request)
                return _json(request, 200, {"success": ended})
            return _json(request, 200, {"success": sessions.valid(session_id)})
        return _json(request, 400, {"success": False,
                                    "error": "You need to pass a parameter, either 'pass' or 'sessionId'."})


def _json(request, code: int, value: dict) -> bytes:
    # As the original's snippet.html answered it: text/html, so that the
    # guide's page code (jQuery, then JSON.parse(data)) gets a string.
    return answer_now(request, Answer(code, json.dumps(value).encode(), b"text/html; charset=utf-8"))

