"""
The home page (C{GET /} for the PC's admin): in plain words, is it working,
where photos go, held files, LAN and relay status, version.  Read-only.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from twisted.web.template import Tag, tags

from ... import __version__
from ..sessions import MIN_PASSWORD_LENGTH, SHIPPED_PASSWORD, usable_password
from ...pc.backups import RETRY_INTERVAL
from ...photos.held import HELD, WHAT_TO_DO, held_files as files_held
from ...pc.pairing import relay_of
from .layout import notice, page



def size_text(count: int) -> str:
    """
    Bytes in MB or GB, as a clinic reads them (decimal units).
    """
    if count >= 1_000_000_000:
        return f"{count / 1_000_000_000:.2f} GB"
    return f"{count / 1_000_000:.1f} MB"


def when(moment: float, now: float) -> str:
    local, today = time.localtime(moment), time.localtime(now)
    if local[:3] == today[:3]:
        return time.strftime("today %H:%M", local)
    return time.strftime("%d %b %Y %H:%M", local)


def folder_problem(folder: Path) -> str:
    """
    Why photos cannot be written to C{folder} now, or C{""}.
    """
    if not folder.is_dir():
        return "the folder does not exist (is the drive or network share connected?)"
    if not os.access(folder, os.W_OK | os.X_OK):
        return "this server may not write there (check the folder's permissions)"
    return ""


def home_page(request, state: Any) -> Tag:
    config = state.config
    content: list = []
    password = config.raw.get("basicAuthent", SHIPPED_PASSWORD)
    if not (isinstance(password, str) and usable_password(password)):
        content.append(notice([
            tags.strong("This server still has the default password. " if password == SHIPPED_PASSWORD
                        else f"This server's password is shorter than {MIN_PASSWORD_LENGTH} characters. "),
            "Signing in from another computer stays off until you set your own ",
            tags.code("basicAuthent"), " (8 characters or more) in ", tags.code(str(config.path)),
            "; it applies at once. On this PC itself no password is needed."], "error"))
    if config.role == "relay":
        content += relay_cards(state)
    else:
        content += pc_cards(state)
    content.append(tags.p(f"Version: medimage_tx {__version__} \u00b7 server name {config.serverName}"))
    return page(request, state, "MedImage server", "/", *content)


def pc_cards(state: Any) -> list:
    config, store = state.config, state.store
    now = time.time()
    targets = list(store.backup_to)
    failing = dict(state.backups.failing) if state.backups else {}
    problems = {}
    for target in targets:
        problems[str(target)] = failing.get(str(target)) or folder_problem(target)
    puller = state.puller
    relay = relay_of(config.readProxy)
    outage = getattr(puller, "outage", None) if relay else None
    trouble = [t for t, why in problems.items() if why] + (["relay"] if outage else [])

    activity = state.activity
    if trouble:
        status = tags.p("Needs attention", class_="big bad")
    else:
        status = tags.p("Working", class_="big ok")
    recent = list(activity.recent) if activity else []
    photos = tags.div(
        tags.h2("Is it working?"), status,
        tags.p(f"Photos received today: {activity.photos_today() if activity else 0}. ",
               f"Since the server started ({when(state.stats.started, now)}): "
               f"{activity.total if activity else state.stats.photos_received}."),
        tags.table(
            tags.caption("Last photos (time and folder only)"),
            tags.thead(tags.tr(tags.th("Time", scope="col"), tags.th("Folder", scope="col"),
                               tags.th("Came", scope="col"))),
            tags.tbody(*[tags.tr(tags.td(when(p.time, now)), tags.td(p.folder or "(main folder)"),
                                 tags.td("through the relay" if p.source == "relay" else "over WiFi"))
                         for p in recent] or [tags.tr(tags.td("No photos since the server started.",
                                                              colspan="3"))]),
        ),
        class_="card")

    where_rows = []
    if not targets:
        where_rows.append(tags.tr(tags.td(str(store.photos)), tags.td(tags.span("works", class_="ok"))))
    for index, target in enumerate(targets):
        why = problems[str(target)]
        label = "output folder" if index == 0 else "copy"
        where_rows.append(tags.tr(
            tags.td(str(target), tags.br(), tags.small(label)),
            tags.td(tags.span("not working: ", class_="bad"), why) if why
            else tags.td(tags.span("works", class_="ok"))))
    where = tags.div(
        tags.h2("Where photos go"),
        tags.table(tags.thead(tags.tr(tags.th("Folder", scope="col"), tags.th("State", scope="col"))),
                   tags.tbody(*where_rows)),
        tags.p(f"Photos that could not be copied are tried again every {RETRY_INTERVAL:g} seconds; "
               "nothing is lost."
               if any(problems.values()) else "", class_="hint"),
        (tags.p(tags.a("Change the photo folder", href="/admin/settings")) if not config.lockDown else ""),
        class_="card")

    cards = [photos, where, held_card(state), lan_card(state), relay_card(state, relay, outage)]
    return [tags.div(*cards, class_="cards")]


def held_card(state: Any) -> Tag:
    """
    Files from the relay this PC will not file (medimage_tx.photos.held), and what to do.
    """
    folder = state.store.data_dir / HELD
    files = files_held(state.store.data_dir)
    if not files:
        body = [tags.p("None: every file from the relay was filed.")]
    else:
        body = [tags.p(tags.span(f"{len(files)} file(s) held", class_="bad"), " in ",
                       tags.code(str(folder)), "."),
                tags.p(WHAT_TO_DO),
                tags.table(tags.thead(tags.tr(tags.th("File", scope="col"), tags.th("Why", scope="col"))),
                           tags.tbody(*[tags.tr(tags.td(f.name, tags.br(), tags.small(size_text(f.size))),
                                                tags.td(f.reason or "this PC does not file it"))
                                        for f in files]))]
    return tags.div(tags.h2("Held files"), *body, id="held", class_="card")


def lan_card(state: Any) -> Tag:
    status, config = state.discovery, state.config
    if status is None:
        if not config.lanMode:
            text = ["Off (lanMode is off): phones on the WiFi cannot find this PC; they send "
                    "through the relay."]
        else:
            text = ["Not running: phones on the WiFi cannot find this PC."]
    else:
        where = ", ".join(f"{i.name} {i.address}" for i in status.interfaces)
        text = [tags.span("On", class_="ok"), f": phones on the WiFi can find this PC "
                f"({where or 'no usable network interface: is the PC on the network?'})."]
        if status.udp_problem:
            text += [" ", tags.span("Problem: ", class_="bad"), status.udp_problem, "."]
        if status.last_error:
            text += [" Last error: ", status.last_error, "."]
    return tags.div(tags.h2("WiFi (LAN)"), tags.p(*text),
                    tags.p(tags.a("Why can't my phone find the PC?", href="/discovery")), class_="card")


def relay_card(state: Any, relay: str, outage) -> Tag:
    config, activity = state.config, state.activity
    if not relay:
        rows = [("Paired", "no: pair to receive photos away from the clinic's WiFi")]
    else:
        last = activity.last_from_relay if activity else 0
        rows = [("Paired", f"yes, with {relay}"),
                ("Connected", f"no: {outage}" if outage else "yes"),
                ("Last delivery", when(last, time.time()) if last else "none since the server started")]
    rows.append(("Transferred", size_text(config.transfer)))
    return tags.div(tags.h2("Relay"),
                    tags.table(tags.tbody(*[tags.tr(tags.th(k, scope="row"), tags.td(v)) for k, v in rows])),
                    tags.p(tags.a("Pair phones", href="/admin/pair")), class_="card")


def relay_cards(state: Any) -> list:
    stats = state.stats
    rows = [("Role", "Relay: queues photos for clinic PCs"),
            ("Photos received since start", str(stats.photos_received)),
            ("Received since start", size_text(stats.bytes_received))]
    return [tags.div(tags.div(tags.h2("Is it working?"), tags.p("Working", class_="big ok"),
                              tags.table(tags.tbody(*[tags.tr(tags.th(k, scope="row"), tags.td(v))
                                                      for k, v in rows])), class_="card"),
                     class_="cards")]
