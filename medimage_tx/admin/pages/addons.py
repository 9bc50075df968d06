"""
C{/admin/addons}: the installed add-ons, install from a URL or a file,
remove.  The forms go to the add-on routes (C{/addon/install-addon},
medimage_tx.addons.web), which answer JSON, so a little JavaScript sends
them and shows the answer.  lockDown hides install and removal, as the
original does.
"""

from __future__ import annotations

from twisted.web.template import Flattenable, Tag, tags

from ...addons.installer import list_addons
from ...web.answers import render_async
from .layout import AdminPage, csrf_input, field, notice, page, send

INSTALL_ROUTE = "/addon/install-addon"


class AddonsPage(AdminPage):
    pc_only = True

    def render_GET(self, request):
        return render_async(request, self._show)

    async def _show(self, request):
        addons = self.state.addons
        listed = []
        if addons is not None:
            listed = await self.state.in_thread(list_addons, addons.parent_dir, addons.registry,
                                                addons.python_addons)
        send(request, self._page(request, listed))
        return None

    def _page(self, request, listed: list[dict]) -> Tag:
        locked = self.state.config.lockDown
        rows = []
        for index, addon in enumerate(listed):
            events = ", ".join(sorted({e["event"] for e in addon.get("events", [])}))
            if locked:
                action: Flattenable = ""
            elif addon.get("kind") == "python":
                action = "installed as a Python package"
            else:
                action = tags.form(csrf_input(request, self.state),
                                   tags.input(type="hidden", name="uninstall", value=addon["name"]),
                                   tags.button(f"Remove {addon['name']}", type="submit", class_="danger"),
                                   method="post", action=INSTALL_ROUTE,
                                   **{"data-json": "1", "data-result": "addon-result",
                                      "data-confirm": f"Remove the add-on {addon['name']}?"})
            rows.append(tags.tr(tags.td(addon["name"]), tags.td(addon.get("version", "")),
                                tags.td(addon.get("description", "")), tags.td(events), tags.td(action)))
        table = tags.table(
            tags.thead(tags.tr(*[tags.th(h, scope="col") for h in
                                 ("Add-on", "Version", "What it does", "Runs on", "")])),
            tags.tbody(*rows or [tags.tr(tags.td("No add-ons installed.", colspan="5"))]))
        content: list = [table, tags.div(id="addon-result", role="status")]
        if locked:
            content.append(notice("lockDown is on in config.json: add-ons cannot be installed or "
                                  "removed from here."))
        else:
            content += [
                tags.h2("Install an add-on"),
                tags.form(csrf_input(request, self.state),
                          field("Add-on address (.zip)", tags.input(type="url", name="zipfileURL",
                                                                    id="zip-url", required="required")),
                          tags.button("Install from address", type="submit"),
                          method="post", action=INSTALL_ROUTE,
                          **{"data-json": "1", "data-result": "addon-result"}),
                tags.form(csrf_input(request, self.state),
                          field("Add-on file (.zip)", tags.input(type="file", name="file1", id="zip-file",
                                                                 accept=".zip", required="required")),
                          tags.button("Install from file", type="submit"),
                          method="post", action=INSTALL_ROUTE, enctype="multipart/form-data",
                          **{"data-json": "1", "data-result": "addon-result"}),
                tags.p("Add-ons run programs on this PC: install only those you trust.", class_="hint"),
            ]
        return page(request, self.state, "Add-ons", "/admin/addons", *content)
