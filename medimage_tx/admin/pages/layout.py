"""
The web admin's page shell (twisted.web.template): a header with the pages
this viewer may use, the page's content, and the server's own CSS and
JavaScript (clinics are often offline: nothing comes from elsewhere).
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Optional, cast

from twisted.web.resource import Resource
from twisted.web.template import Comment, Flattenable, Tag, flattenString, renderElement, tags

from ... import __version__
from ...addons.public import menu_entries
from .. import AdminResource, form_fields, set_admin_headers
from ..access import CSRF_FIELD
from ...web.answers import Answer, answer_now

if TYPE_CHECKING:
    from ...state import ServerState

DOCTYPE = b"<!DOCTYPE html>"


def nav_items(state: ServerState) -> list[tuple[str, str]]:
    """
    The pages in the header: lockDown hides settings and logs (as the
    original does); a relay has no photo folders, pairing page or add-ons.
    """
    config = state.config
    items = [("/", "Home")]
    if config.role == "relay":
        if not config.lockDown:
            items.append(("/admin/logs", "Logs"))
        return items
    items.append(("/admin/pair", "Pair phones"))
    if not config.lockDown:
        items += [("/admin/settings", "Settings"), ("/admin/logs", "Logs")]
    items.append(("/admin/addons", "Add-ons"))
    return items + addon_menu(state, {href for href, _ in items})


#: The standard settings page add-ons add their tabs to.
SETTINGS_PAGE = "/pages/addon-settings.html"


def addon_menu(state: ServerState, taken: set[str]) -> list[tuple[str, str]]:
    """
    The menu entries add-ons added to the standard header's side menu (as
    the original's install scripts do: e.g. "EHR Log"), links to this
    server only, each address once.  This server's own pages are
    L{nav_items}' to show or hide (lockDown), whatever the header says; in
    lockDown the add-on settings page is hidden with the settings.
    """
    if state.addons is None:
        return []
    entries = []
    for href, label in menu_entries(state.addons.parent_dir):
        own = href == "/" or href.startswith("/admin/")
        if own or (state.config.lockDown and href.startswith(SETTINGS_PAGE)):
            continue
        if href not in taken:
            taken.add(href)
            # The original's header calls it "Settings", like our own page.
            entries.append((href, "Add-on settings" if href == SETTINGS_PAGE else label))
    return entries


def csrf_input(request, state: ServerState) -> Tag:
    return tags.input(type="hidden", name=CSRF_FIELD, value=state.access.csrf_token(request))


def page(request, state: ServerState, title: str, current: str, *content: Flattenable) -> Tag:
    links = [tags.li(tags.a(label, href=href, **({"aria-current": "page"} if href == current else {})))
             for href, label in nav_items(state)]
    sign_out: Tag | str
    if state.access.signed_in(request):
        sign_out = tags.form(csrf_input(request, state),
                             tags.button("Sign out", type="submit", class_="secondary"),
                             method="post", action="/admin/logout")
    else:
        sign_out = ""
    return tags.html(
        tags.head(
            tags.meta(charset="utf-8"),
            tags.meta(name="viewport", content="width=device-width, initial-scale=1"),
            tags.title(f"{title} - MedImage"),
            tags.link(rel="stylesheet", href="/admin/static/admin.css"),
        ),
        tags.body(
            tags.header(
                tags.span("MedImage", class_="name"), " ",
                tags.nav(tags.ul(*links), **{"aria-label": "Admin pages"}),
            ),
            Tag("main")(tags.h1(title), *content, id="main"),  # HTML5 main: not in tags
            tags.footer(f"medimage_tx {__version__} \u00b7 ", config_name(state), sign_out),
            tags.script(src="/admin/static/admin.js", defer="defer"),
        ),
        lang="en",
    )


def config_name(state: ServerState) -> str:
    return state.config.serverName


def send(request, document: Tag, code: int = 200):
    """
    Render C{document} into the request (the admin headers are set by
    L{AdminResource} or here).
    """
    set_admin_headers(request)
    request.setResponseCode(code)
    # Twisted types the element as IRenderable; it flattens a Tag as well.
    return renderElement(request, document, doctype=DOCTYPE)  # type: ignore[arg-type]


#: Where L{html_in_layout} puts a page's own HTML.
BODY_MARK = "medimage-page-body"


def html_in_layout(request, state: ServerState, code: int, title: str, current: str, body_html: str) -> Answer:
    """
    The admin page shell (header, navigation, CSS) around C{body_html}, a
    page's HTML text already escaped: for the pages written as text
    (C{/pair}, C{/discovery}), whose forms tests and links rely on.
    """
    flattened: list[bytes] = []
    # Nothing in the shell waits: the Deferred has fired when this returns.
    flattenString(request, page(request, state, title, current, Comment(BODY_MARK))).addCallback(
        flattened.append)
    document = DOCTYPE + b"\n" + flattened[0].replace(f"<!--{BODY_MARK}-->".encode(), body_html.encode("utf-8"))
    return Answer(code, document, b"text/html; charset=utf-8")


def notice(text: Flattenable, kind: str = "notice") -> Tag:
    return tags.div(text, class_=kind, role="status" if kind == "notice" else "alert")


def field(label: str, control: Tag, hint: str = "", hint_id: Optional[str] = None) -> list:
    """
    A labelled form control; the hint is tied to it for screen readers.
    """
    parts: list = [tags.label(label, for_=control.attributes["id"]), control]
    if hint:
        hint_id = hint_id or cast(str, control.attributes["id"]) + "-hint"  # the controls here have str ids
        control.attributes["aria-describedby"] = hint_id
        parts.append(tags.p(hint, class_="hint", id=hint_id))
    return parts


class StaticFile(Resource):
    """
    C{/admin/static/<name>}: the admin's CSS and JavaScript, from the
    package (no CDN).  Served to anyone: they hold nothing about the PC.
    """

    isLeaf = True
    TYPES = {"admin.css": b"text/css; charset=utf-8", "admin.js": b"text/javascript; charset=utf-8"}

    def render_GET(self, request):
        name = request.postpath[0].decode("ascii", "replace") if request.postpath else ""
        if name not in self.TYPES:
            request.setResponseCode(404)
            return b"Not found"
        request.setHeader(b"content-type", self.TYPES[name])
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"cache-control", b"no-cache")
        return resources.files(__package__).joinpath("static", name).read_bytes()


class Favicon(Resource):
    """
    C{/favicon.ico}, which every browser asks for: our own small icon (a
    camera), so the log and the browser's console show no 404 for it.
    """

    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"image/x-icon")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"cache-control", b"max-age=86400")
        return resources.files(__package__).joinpath("static", "favicon.ico").read_bytes()


class AdminPage(AdminResource):
    """
    An admin page that lockDown may hide (C{hidden_in_lockdown}) and that
    only a clinic PC has (C{pc_only}).
    """

    hidden_in_lockdown = False
    pc_only = False

    def render(self, request):
        config = self.state.config
        if (self.hidden_in_lockdown and config.lockDown) or (self.pc_only and config.role == "relay"):
            set_admin_headers(request)
            form = form_fields(request) if request.method == b"POST" else None
            refused = self.state.access.refusal(request, form)
            if refused is not None:
                return answer_now(request, refused)
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return (b"Not available: lockDown is on in config.json" if config.lockDown
                    else b"Not available on a relay")
        return super().render(request)
