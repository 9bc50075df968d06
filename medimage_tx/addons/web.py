"""
C{/addon/...}: the original's urlRequest add-ons, and the routes the
admin page uses to install, remove and list add-ons.

- C{GET|POST /addon/<scriptURLName>[?query]}: runs the matching urlRequest
  entry with C{param1} = the query, URL-encoded as the original builds it.
  C{waitForRequestFinish: "page.html"} waits for the script and serves the
  page from the pages folder with the script's C{returnParams:} filled in
  (C{CHANGELOCATION} picks another page); C{waitForRequestFinish: ""} serves
  the file the script names with C{returnPhotoFile:}; without it the
  answer comes at once (C{afterRequest} page, or empty) and the script
  runs on.
- C{POST /addon/install-addon}: C{zipfileURL=<url>} or an uploaded zip
  (multipart field C{file1}) installs; C{uninstall=<name>} removes.
  C{GET /addon/install-addon?zipfileURL=...} (or C{?uninstall=...}), the
  original's link, changes nothing: it shows the admin a page that says
  what would be installed or removed, whose button sends that C{POST}.
- C{GET /addon/installed}: the installed add-ons as JSON.
- L{PublicFiles}: C{GET /<folder>/<file>}, a file of C{parentdir/public}
  (add-ons' pages, scripts, styles, images; L{public}).

Add-on pages can run any program the clinic installed, so they are the
clinic's administrator's (docs/security.md): served only under this
server's own names, never to another site's page (C{Origin},
C{Sec-Fetch-Site}, C{Referer}), and only to the PC itself or a browser
signed in with the C{basicAuthent} password; install and remove are also
C{POST} with a CSRF token, and refused in C{lockDown}; an add-on's own
C{POST} forms need only come from a page of this server.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional
from urllib.parse import quote, urlsplit

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web import pages
from twisted.web.resource import Resource
from twisted.web.template import tags

from ..admin import form_fields, set_admin_headers
from ..admin.pages.layout import csrf_input, notice, page, send
from ..errors import Rejected
from ..web.answers import Answer, answer_now, render_async
from . import installer
from .installer import InstallError, install, list_addons, uninstall
from .output import parse_output
from .pipeline import in_daemon_thread, photos_relative
from .public import HTML, content_type, fill_header, public_file, read_header
from .python_api import Page, UrlRequest
from treq.client import HTTPClient
from twisted.web.client import HTTPConnectionPool
from ..outbound.proxy_tunnel import make_agent
from ..outbound.tls import one_line
from ..outbound.response_limits import (
    CappedBody,
    ResponseTooLarge,
    ResponseTooSlow,
    discard,
    in_time,
    timed_out,
)
from .output import parse_query

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from ..admin.access import Access
    from ..state import ServerState

log = Logger()

NO_CACHE = {b"cache-control": b"private, no-cache, no-store, must-revalidate",
            b"expires": b"-1", b"pragma": b"no-cache"}
#: Built-in names under /addon/ (an add-on cannot take them over).
INSTALL = b"install-addon"
INSTALLED = b"installed"


def encode_uri_component(text: str) -> str:
    """
    JavaScript's C{encodeURIComponent}.
    """
    return quote(text, safe="-_.!~*'()")


def script_param(rest: str, name: str) -> str:
    """
    C{param1} for C{/addon/<rest>} as the original builds it: C{%23} and
    C{%20} decoded once, C{name?} dropped, the rest URL-encoded.
    """
    rest = rest.replace("%23", "#", 1).replace("%20", " ", 1)
    return encode_uri_component(rest.replace(name + "?", "", 1))


def fill_page(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        if key:
            text = text.replace(key, value)
    return text


def _json(code: int, data: Any) -> Answer:
    return Answer(code, json.dumps(data).encode(), b"application/json", headers=dict(NO_CACHE))


class AddonResource(Resource):
    """
    C{/addon/}: built-in children first (C{get-session}, C{install-addon},
    C{installed}), then the registry's urlRequest names.
    """

    def __init__(self, state: ServerState):
        super().__init__()
        self.state = state
        self.putChild(INSTALL, InstallAddon(state))
        self.putChild(INSTALLED, InstalledAddons(state))

    def getChild(self, path: bytes, request):
        if self.state.addons is None or not path:
            return pages.notFound()
        return UrlRequestPage(self.state, path.decode("utf-8", "replace"))


def refusal(state: ServerState, request, form: Optional[dict] = None, csrf: bool = True) -> Optional[Answer]:
    """
    The access layer's decision, plus: a foreign C{Referer} is another
    site's page even where the browser sends no C{Origin} or
    C{Sec-Fetch-Site} (an old browser's C{<img>}).  C{csrf=False}: a
    C{POST} needs no token, only to come from a page of this server.
    """
    access = state.access
    referer = request.getHeader(b"referer")
    if referer is not None and not access._is_own_origin(request, referer.decode("latin-1")):
        return Answer(403, b"Refused: another site's page asked. Nothing was run.")
    return access.refusal(request, form, csrf=csrf)


def _asked_by_own_page(access: Access, request) -> bool:
    """
    A C{GET} runs an add-on, so it needs a sign that this server's own
    page (or the address bar) asked: another site's C{<img>} sends no
    C{Origin}, may send no C{Referer}, and browsers send C{Sec-Fetch-Site}
    only to secure origins (never to C{http://<the PC's LAN address>}).
    A password session counts (its cookie is C{SameSite=Strict}).
    """
    if access.signed_in(request):
        return True
    site = (request.getHeader(b"sec-fetch-site") or b"").lower()
    if site in (b"same-origin", b"none"):
        return True
    for header in (b"origin", b"referer"):
        value = request.getHeader(header)
        if value is not None and access.is_own_origin(request, value.decode("latin-1")):
            return True
    return False


class UrlRequestPage(Resource):
    isLeaf = True

    def __init__(self, state: ServerState, name: str):
        super().__init__()
        self.state = state
        self.name = name

    def render(self, request):
        if request.method not in (b"GET", b"POST", b"HEAD"):
            return super().render(request)
        set_admin_headers(request)
        return render_async(request, self.answer)

    async def answer(self, request) -> Answer:
        form = form_fields(request) if request.method == b"POST" else None
        # The original's add-on pages post plain forms, without our CSRF
        # token: the browser's Origin (else Referer) naming this server is
        # the check (another site's form sends its own, or none).
        refused = refusal(self.state, request, form, csrf=False)
        if refused is not None:
            return refused
        if request.method != b"POST" and not _asked_by_own_page(self.state.access, request):
            return Answer(403, b"Refused: open add-on pages from this server's own pages "
                               b"(a link, or the address typed in). Nothing was run.")
        addons = self.state.addons
        assert addons is not None  # AddonResource serves add-ons on a PC only
        rest = request.uri.decode("utf-8", "replace").split("/addon/", 1)[-1]
        if request.method == b"POST" and form is not None:
            request.content.seek(0)
            rest += "?" + request.content.read().decode("utf-8", "replace")
        for addon in addons.python_addons:
            if self.name in addon.url_names() and addon.handler("urlRequest"):
                return await self._python(addon, request, rest)
        entry = addons.registry.url_entry(self.name)
        if entry is None:
            return Answer(404, b"No add-on answers here", headers=dict(NO_CACHE))
        values = {"parentdir": str(addons.parent_dir), "param1": script_param(rest, self.name)}
        describe = f"/addon/{self.name}"
        # For basic-authentication/session.js: the sessions live now, hashed.
        sessions = {"MEDIMAGE_SESSIONS": ",".join(self.state.access.sessions.live_digests())}
        if entry.wait_for_request_finish is None:
            # The original answers at once and lets the script run on.
            Deferred.fromCoroutine(addons.run_entry(entry, values, describe, sessions))
            if entry.after_request:
                return await self._page(entry.after_request, None)
            return Answer(200, b"", HTML, headers=dict(NO_CACHE))
        result = await addons.run_entry(entry, values, describe, sessions)
        if not result.ok:
            return Answer(500, f"The add-on {entry.addon} failed ({result.describe()}); the server's "
                               "log has its output".encode(), headers=dict(NO_CACHE))
        out = parse_output(result.stdout)
        if out.reload_config:
            await addons.reload_config()
        if out.backup_files:
            await self._copy(out.backup_files, entry.addon)
        if entry.wait_for_request_finish == "":
            if out.return_photo_file:
                return await self._file(out.return_photo_file)
            return Answer(200, b"", HTML, headers=dict(NO_CACHE))
        page = entry.wait_for_request_finish
        params = out.return_params
        if params is not None and params.get("CHANGELOCATION"):
            page = params["CHANGELOCATION"]
        return await self._page(page, params)

    async def _python(self, addon, request, rest: str) -> Answer:
        addons = self.state.addons
        assert addons is not None  # AddonResource serves add-ons on a PC only
        name, _, query = rest.partition("?")
        call = UrlRequest(name=self.name, query=parse_query(query), raw_query=query,
                          method=request.method.decode(), parent_dir=addons.parent_dir,
                          photos=self.state.store.photos, pages=addons.pages,
                          config=self.state.config)
        d = in_daemon_thread(addons.reactor, addon.handler("urlRequest"), call)
        d.addTimeout(60, addons.clock)
        try:
            page = await d
        except Exception:
            log.failure("Python add-on {name} failed on /addon/{url}", name=addon.name, url=self.name)
            return Answer(500, f"The add-on {addon.name} failed; the server's log says why".encode())
        if not isinstance(page, Page):
            return Answer(200, b"", HTML, headers=dict(NO_CACHE))
        return Answer(page.code, page.body, page.content_type.encode(), headers=dict(NO_CACHE))

    async def _copy(self, named: list[str], addon: str) -> None:
        store = self.state.store
        relatives = []
        for each in named:
            relative = photos_relative(store.photos, each)
            if relative is None:
                log.warn("Add-on {addon} asked to copy {named}, which is not in the photos folder: "
                         "not copied", addon=addon, named=each)
            else:
                relatives.append(relative)
        failures = await self.state.in_thread(store.copy_files, relatives)
        if self.state.backups is not None:
            self.state.backups.note(failures, succeeded=store.backup_to)

    def _pages_path(self, page: str) -> Optional[Path]:
        assert self.state.addons is not None  # AddonResource serves add-ons on a PC only
        pages_folder = self.state.addons.pages
        relative = page.split("?", 1)[0].replace("\\", "/").lstrip("/")
        path = Path(os.path.normpath(pages_folder / relative))
        for root in (pages_folder, self.state.store.photos):
            try:
                path.relative_to(os.path.normpath(root))
            except ValueError:
                continue
            return path
        return None

    async def _page(self, page: str, params: Optional[dict[str, str]]) -> Answer:
        path = self._pages_path(page)
        if path is None:
            return Answer(404, b"The add-on's page is not in the pages folder", headers=dict(NO_CACHE))
        try:
            body = await self.state.in_thread(path.read_bytes)
        except OSError:
            log.warn("An add-on's page {path} cannot be read", path=path)
            return Answer(404, b"The add-on's page is missing", headers=dict(NO_CACHE))
        kind = content_type(path)
        if params is not None and kind == HTML:
            assert self.state.addons is not None  # AddonResource serves add-ons on a PC only
            values = dict(params)
            values["STANDARDHEADER"] = await self.state.in_thread(read_header, self.state.addons.parent_dir)
            body = fill_page(body.decode("utf-8", "replace"), values).encode("utf-8")
        return Answer(200, body, kind, headers=dict(NO_CACHE))

    async def _file(self, named: str) -> Answer:
        return await self._page(named, None)


class InstallAddon(Resource):
    """
    C{POST /addon/install-addon}.
    """

    isLeaf = True

    def __init__(self, state: ServerState):
        super().__init__()
        self.state = state

    def render_POST(self, request):
        set_admin_headers(request)
        return render_async(request, self.answer)

    def render_GET(self, request):
        """
        The original's C{GET ?zipfileURL=} link: a page asking the admin
        to confirm (a GET never installs anything).
        """
        set_admin_headers(request)
        refused = refusal(self.state, request)
        if refused is not None:
            return answer_now(request, refused)
        args = {k.decode("utf-8", "replace"): v[-1].decode("utf-8", "replace")
                for k, v in request.args.items() if v}
        url, name = args.get("zipfileURL", "").strip(), args.get("uninstall", "").strip()
        code = 200
        if self.state.addons is None:
            content: list = [notice("This server has no add-ons (a relay).", "error")]
            code = 404
        elif self.state.config.lockDown:
            content = [notice("lockDown is on in config.json: add-ons cannot be installed or removed.",
                              "error")]
            code = 403
        elif url or name:
            if url:
                question = tags.p("Install the add-on from ", tags.code(url), "?")
                hidden, button = ("zipfileURL", url), "Install this add-on"
            else:
                question = tags.p("Remove the add-on ", tags.code(name), "?")
                hidden, button = ("uninstall", name), f"Remove {name}"
            content = [
                question,
                tags.p("Add-ons run programs on this PC: install only those you trust.", class_="hint"),
                tags.form(csrf_input(request, self.state),
                          tags.input(type="hidden", name=hidden[0], value=hidden[1]),
                          tags.button(button, type="submit"),
                          method="post", action="/addon/install-addon",
                          **{"data-json": "1", "data-result": "addon-result",
                             "data-after": "/admin/addons"}),
                tags.div(id="addon-result", role="status"),
            ]
        else:
            content = [tags.p("Give ", tags.code("?zipfileURL=<address of a .zip>"), " or ",
                              tags.code("?uninstall=<name>"), ", or use the ",
                              tags.a("Add-ons page", href="/admin/addons"), ".")]
        return send(request, page(request, self.state, "Install an add-on", "/admin/addons", *content),
                    code)

    async def answer(self, request) -> Answer:
        uploaded = None
        form: Optional[dict[str, str]]
        if request.receiver is not None:
            try:
                received = request.receiver.finish()
            except Rejected as e:
                return _json(400, {"finished": False, "message": str(e)})
            request.receiver.disown()
            os.close(received.fd)
            uploaded, form = received.temp_path, dict(received.fields)
        else:
            form = form_fields(request)
        try:
            refused = refusal(self.state, request, form)
            if refused is not None:
                return refused
            assert form is not None  # refusal() refuses a POST without its form (no CSRF token)
            addons = self.state.addons
            if addons is None:
                return _json(404, {"finished": False, "message": "This server has no add-ons (a relay)"})
            config = self.state.config
            if config.lockDown:
                return _json(403, {"finished": False, "message": "Add-ons cannot be installed or "
                                   "removed: lockDown is on in config.json"})
            try:
                if form.get("uninstall"):
                    report = await self.state.in_thread(uninstall, form["uninstall"],
                                                        addons.parent_dir, addons.registry, config)
                else:
                    if uploaded is None:
                        url = form.get("zipfileURL", "")
                        if not url:
                            return _json(400, {"finished": False, "message":
                                               "Send zipfileURL=<address of a .zip>, an uploaded zip "
                                               "(file1), or uninstall=<name>"})
                        uploaded = self.state.store.temp / f"addon-{secrets.token_hex(8)}.zip"
                        await download_zip(addons.reactor, url, uploaded, config.webProxy, addons.clock)
                    report = await self.state.in_thread(install, uploaded, addons.parent_dir,
                                                        addons.registry, config)
            except InstallError as e:
                log.warn("Add-on install or removal failed: {error}", error=str(e))
                return _json(400, {"finished": False, "message": str(e)})
        finally:
            if uploaded is not None:
                try:
                    os.unlink(uploaded)
                except OSError:
                    pass
        log.info("Add-on {name}: {message}", name=report.name, message=report.message)
        return _json(200, {"finished": True, "name": report.name, "version": report.version,
                           "message": report.message, "warnings": report.warnings})


class InstalledAddons(Resource):
    """
    C{GET /addon/installed}.
    """

    isLeaf = True

    def __init__(self, state: ServerState):
        super().__init__()
        self.state = state

    def render_GET(self, request):
        set_admin_headers(request)
        refused = refusal(self.state, request)
        if refused is not None:
            return answer_now(request, refused)
        addons = self.state.addons
        if addons is None:
            return answer_now(request, _json(404, []))
        listed = list_addons(addons.parent_dir, addons.registry, addons.python_addons)
        return answer_now(request, _json(200, listed))


async def download_zip(reactor: Any, url: str, dest: Path, web_proxy: str,
                       clock: Optional[IReactorTime] = None) -> None:
    """
    Fetch C{url} (http or https, through the clinic's C{webProxy}) into
    C{dest}: at most L{installer.DOWNLOAD_MAX_BYTES}, all within
    L{installer.DOWNLOAD_SECONDS} on C{clock} (default C{reactor}; a
    server that trickles its answer or never ends it is cut off).
    @raise InstallError.
    """
    if urlsplit(url).scheme.lower() not in ("http", "https"):
        raise InstallError("zipfileURL must be an http:// or https:// address")
    limit, seconds = installer.DOWNLOAD_MAX_BYTES, installer.DOWNLOAD_SECONDS
    too_large = f"The add-on's zip is larger than {limit // (1024 * 1024)} MiB, so it was not installed"
    too_slow = f"The add-on's zip did not arrive within {seconds:g} s, so it was not installed"
    clock = clock or reactor
    deadline = clock.seconds() + seconds
    client = HTTPClient(make_agent(reactor, HTTPConnectionPool(reactor, persistent=False), web_proxy))
    try:
        response = await in_time(client.get(url, unbuffered=True), seconds, clock)
    except Exception as e:
        if timed_out(e):  # no headers in time
            raise InstallError(too_slow) from None
        raise InstallError(f"Cannot download the add-on from {url}: {one_line(e)}") from None
    if response.code != 200:
        discard(response)
        raise InstallError(f"Cannot download the add-on: {url} answered {response.code}")
    if isinstance(response.length, int) and response.length > limit:
        discard(response)
        raise InstallError(too_large)
    with open(dest, "wb") as f:
        body = CappedBody(f.write, limit, deadline, clock, too_large, too_slow)
        response.deliverBody(body)
        try:
            await body.done
        except (ResponseTooLarge, ResponseTooSlow) as e:
            raise InstallError(str(e)) from None
        except Exception as e:
            raise InstallError(f"Cannot download the add-on from {url}: {one_line(e)}") from None


class PublicFiles(Resource):
    """
    C{GET /<segments>}: a file in C{parentdir/public}, for the clinic's
    administrator (the access layer's rules: own C{Host}, never another
    site's page, the PC itself or a password session; no CORS).  Read
    only: anything but C{GET} and C{HEAD} is 405.
    """

    isLeaf = True

    def __init__(self, state: ServerState, first: bytes):
        super().__init__()
        self.state = state
        self.first = first

    def render(self, request):
        set_admin_headers(request)
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD")
            return b"Not allowed: these files are only read"
        return render_async(request, self.answer)

    async def answer(self, request) -> Answer:
        assert self.state.addons is not None  # public files are a PC's (http_resource.pc_root)
        parent_dir = self.state.addons.parent_dir
        segments = [self.first, *request.postpath]
        path = await self.state.in_thread(public_file, parent_dir / "public", segments)
        if path is None:
            return Answer(404, b"Not found")
        refused = self.state.access.refusal(request)
        if refused is not None:
            return refused
        kind = content_type(path)
        try:
            body = await self.state.in_thread(path.read_bytes)
            if kind == HTML:
                header = await self.state.in_thread(read_header, parent_dir)
                body = fill_header(body.decode("utf-8", "replace"), header).encode("utf-8")
        except OSError:
            log.warn("A public file {path} cannot be read", path=path)
            return Answer(404, b"Not found")
        return Answer(200, body, kind)
