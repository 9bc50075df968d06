"""
C{/admin/settings}: where photos go (C{backupTo}: the output photo folder
first, then further copies), the allowed file types and LAN mode.  Saved
atomically to config.json with every other key kept
(L{ServerState.save_config}); a new C{backupTo} applies at once, so the
next photo goes there.  Never saved over a config.json that cannot be
used (a typo made by hand): that would lose the hand edits.  Hidden in lockDown, as the original does.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from twisted.logger import Logger
from twisted.web.template import Flattenable, Tag, tags

from ...config import SHIPPED_DEFAULT_TYPES, ConfigError, new_allowed_type, resolve_path
from ...web.answers import render_async
from .layout import AdminPage, csrf_input, field, notice, page, send

if TYPE_CHECKING:
    from ...config import Config

log = Logger()


def writable_problem(folder: Path) -> str:
    """
    Why photos cannot be saved in C{folder}, or C{""}: it must exist, be a
    folder, and take a file (really written and removed: permissions,
    read-only shares and full disks all show).
    """
    if not folder.exists():
        return f"{folder} does not exist. Create it first (or connect its drive)."
    if not folder.is_dir():
        return f"{folder} is a file, not a folder."
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".medimage-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return f"This server cannot write in {folder}: {e.strerror or e}."
    return ""


def unusable_config(problem: str) -> str:
    return (f"config.json cannot be used: {problem}. Nothing was saved: saving would write over "
            "the file and lose what was edited in it by hand. Correct it first (the home page "
            "says when it can be used again).")


def type_choices(config: Config) -> list[dict]:
    """
    The original's shipped types, then any others config.json has, as raw entries.
    """
    raw = config.raw.get("allowedTypes")
    entries = [dict(t) for t in SHIPPED_DEFAULT_TYPES]
    known = {t["extension"] for t in entries}
    for entry in raw if isinstance(raw, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("extension"), str):
            extension = entry["extension"].lower()
            extension = extension if extension.startswith(".") else "." + extension
            if extension not in known:
                known.add(extension)
                entries.append(entry)
    return entries


def _extension(entry: dict) -> str:
    extension = entry["extension"].lower()
    return extension if extension.startswith(".") else "." + extension


class SettingsPage(AdminPage):
    hidden_in_lockdown = True
    pc_only = True

    def render_GET(self, request):
        return render_async(request, self._show)

    async def _show(self, request):
        broken = await self.state.config_file_problem()
        error = (f"config.json cannot be used: {broken}. Saving here is refused until it is corrected "
                 "(it would write over what was edited by hand).") if broken else ""
        return self._answer(request, self._form(request, error=error))

    def render_POST(self, request, form: dict[str, str]):
        return render_async(request, self._save, form)

    def _form(self, request, message: Flattenable = "", error: str = "", values: dict | None = None) -> Tag:
        config = self.state.config
        folders = list(config.backupTo)
        values = values or {"output": folders[0] if folders else "", "copies": "\n".join(folders[1:])}
        allowed = {t.extension for t in config.allowedTypes}
        boxes = []
        for index, entry in enumerate(type_choices(config)):
            extension = _extension(entry)
            box_id = f"type-{index}"
            boxes.append(tags.div(
                tags.input(type="checkbox", id=box_id, name=f"type:{extension}", value="on",
                           **({"checked": "checked"} if extension in allowed else {})),
                " ", tags.label(f"{extension} ({entry.get('mime', '')})", for_=box_id, class_="inline")))
        lan = tags.input(type="checkbox", id="lan", name="lanMode", value="on",
                         **({"checked": "checked"} if config.lanMode else {}))
        return page(
            request, self.state, "Settings", "/admin/settings",
            notice(error, "error") if error else "", notice(message) if message else "",
            tags.form(
                csrf_input(request, self.state),
                tags.h2("Where photos go"),
                field("Output photo folder", tags.input(type="text", name="output", id="output",
                                                        value=values["output"]),
                      f"Photos are filed here. Empty: they stay in {self.state.store.photos}. "
                      "Applied at once: the next photo goes to the new folder."),
                field("Also copy photos to (one folder per line)",
                      tags.textarea(values["copies"], name="copies", id="copies", rows="3"),
                      "Backup drives or shares; each folder must exist and be writable."),
                tags.h2("Allowed file types"),
                tags.fieldset(tags.legend("Files phones may send"), *boxes),
                tags.fieldset(
                    tags.legend("Add a type"),
                    field("Extension", tags.input(type="text", name="newExtension", id="newExtension",
                                                  value=values.get("newExtension", ""), placeholder=".png")),
                    field("MIME type", tags.input(type="text", name="newMime", id="newMime",
                                                  value=values.get("newMime", ""), placeholder="image/png"),
                          "Files are checked by their content: a type this server cannot recognise is refused.")),
                tags.h2("WiFi"),
                tags.div(lan, " ", tags.label("Let phones on the WiFi find this PC (LAN mode)", for_="lan",
                                              class_="inline")),
                tags.p("LAN mode changes when the server restarts.", class_="hint"),
                tags.button("Save settings", type="submit"),
                method="post", action="/admin/settings"),
            tags.p("Saved to ", tags.code(str(config.path)), "; other settings there are kept."))

    async def _save(self, request, form: dict[str, str]):
        config = self.state.config
        output = form.get("output", "").strip()
        copies = [line.strip() for line in form.get("copies", "").splitlines() if line.strip()]
        values = {"output": output, "copies": form.get("copies", ""),
                  "newExtension": form.get("newExtension", ""), "newMime": form.get("newMime", "")}
        if copies and not output:
            return self._answer(request, self._form(
                request, error="Give the output photo folder first; copies come after it.", values=values), 400)
        folders = ([output] if output else []) + copies
        broken = await self.state.config_file_problem()
        if broken:
            return self._answer(request, self._form(request, error=unusable_config(broken), values=values), 409)
        for folder in folders:
            problem = await self.state.in_thread(writable_problem, resolve_path(folder, config.path.parent))
            if problem:
                return self._answer(request, self._form(request, error=problem + " Nothing was saved.",
                                                        values=values), 400)
        types = [entry for entry in type_choices(config) if form.get(f"type:{_extension(entry)}") == "on"]
        if values["newExtension"].strip() or values["newMime"].strip():
            try:
                added = new_allowed_type(values["newExtension"], values["newMime"])
            except ValueError as e:
                return self._answer(request, self._form(
                    request, error=f"Cannot add that type: {e}. Nothing was saved.", values=values), 400)
            types = [entry for entry in types if _extension(entry) != added["extension"]] + [added]
        if not types:
            return self._answer(request, self._form(
                request, error="Choose at least one file type. Nothing was saved.", values=values), 400)
        lan = form.get("lanMode") == "on"
        try:
            await self.state.save_config(backupTo=folders, allowedTypes=types, lanMode=lan)
        except ConfigError as e:  # broken by hand since the check above
            return self._answer(request, self._form(request, error=unusable_config(str(e)), values=values), 409)
        log.info("Settings saved from the web admin: photos go to {where}",
                 where=folders[0] if folders else str(self.state.store.photos))
        said = [f"Saved. New photos go to {folders[0] if folders else self.state.store.photos}."]
        if self.state.backups is not None:
            # Photos waiting for a target that went away go to the new one now.
            report = await self.state.backups.retry_now()
            if report is not None and report.photos_backed_up:
                said.append(f" {report.photos_backed_up} photo(s) that were waiting were filed there too.")
        if lan != config.lanMode:
            said.append(" LAN mode changes when the server restarts.")
        return self._answer(request, self._form(request, message=said))

    def _answer(self, request, document: Tag, code: int = 200):
        send(request, document, code)
        return None
