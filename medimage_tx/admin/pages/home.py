"""
The home page (C{GET /} for the PC's admin): in plain words, is it working,
where photos go, held files, LAN and relay status, version.  Read-only.
"Working" only while a phone's upload would be taken now (L{health}); a
config.json that cannot be used and likely typos in it are said first.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from twisted.web.template import Flattenable, Tag, tags

from ... import __version__
from ..sessions import MIN_PASSWORD_LENGTH, SHIPPED_PASSWORD, usable_password
from ...pc.backups import RETRY_INTERVAL
from ...pc.room import below_floor
from ...photos.held import HELD, WHAT_TO_DO, held_summary
from ...pc.pairing import relay_of
from .health import Health
from .layout import notice, page

if TYPE_CHECKING:
    from ...config import Config
    from ...state import ServerState



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


def home_page(request, state: ServerState, health: Health) -> Tag:
    config = state.config
    content: list = []
    if health.config_problem:
        content.append(notice([
            tags.strong("config.json cannot be used: "), health.config_problem, ". ",
            "The server keeps running with the settings it had before the edit, and Settings will "
            "not save over the file (that would lose the edit): correct it by hand; it applies "
            "within seconds."], "error"))
    if health.warnings:
        content.append(notice([tags.strong("Check config.json: "),
                               tags.ul(*[tags.li(line) for line in health.warnings])]))
    password = config.raw.get("basicAuthent", SHIPPED_PASSWORD)
    if not (isinstance(password, str) and usable_password(password)):
        content.append(notice([
            tags.strong("This server still has the default password. " if password == SHIPPED_PASSWORD
                        else f"This server's password is shorter than {MIN_PASSWORD_LENGTH} characters. "),
            "Signing in from another computer stays off until you set your own ",
            tags.code("basicAuthent"), " (8 characters or more) in ", tags.code(str(config.path)),
            "; it applies at once. On this PC itself no password is needed."], "error"))
    if config.role == "relay":
        content += relay_cards(state, health)
    else:
        content += pc_cards(state, health)
    content.append(tags.p(f"Version: medimage_tx {__version__} \u00b7 server name {config.serverName}"))
    return page(request, state, "MedImage server", "/", *content)


def status_lines(health: Health, trouble: list[str]) -> list:
    """
    The answer to "is it working?": "Not working" whenever a phone's
    upload would be refused now, with why.
    """
    if health.upload_problem:
        return [tags.p("Not working", class_="big bad"),
                tags.p("Phones cannot send photos now: ", health.upload_problem, ". They keep their "
                       "photos and send them again later; once it is fixed, this page says so by "
                       "itself.")]
    if trouble or health.config_problem:
        reasons = trouble + (["config.json cannot be used"] if health.config_problem else [])
        return [tags.p("Needs attention", class_="big bad"),
                tags.p("Photos are received, but: ", "; ".join(reasons), ".")]
    return [tags.p("Working", class_="big ok")]


def pc_cards(state: ServerState, health: Health) -> list:
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
    paused = getattr(puller, "paused", None) if relay else None
    if relay and puller is None:
        outage = not_collecting(state.config)
    trouble = ([("the output folder" if index == 0 else "a copy folder") + " does not work"
                for index, target in enumerate(targets) if problems[str(target)]]
               + (["photos from the relay do not arrive"] if outage else [])
               + (["fetching from the relay is paused"] if paused and not outage else []))

    activity = state.activity
    recent = list(activity.recent) if activity else []
    photos = tags.div(
        tags.h2("Is it working?"), *status_lines(health, trouble),
        tags.p(f"Photos received today: {activity.photos_today() if activity else 0}. ",
               f"Since the server started ({when(state.stats.started, now)}): "
               f"{activity.total if activity else state.stats.photos_received}."),
        tags.table(
            tags.caption("Last photos (time and folder only)"),
            tags.thead(tags.tr(tags.th("Time", scope="col"), tags.th("Folder", scope="col"),
                               tags.th("Came", scope="col"))),
            tags.tbody(*[tags.tr(tags.td(when(p.time, now)),
                                 tags.td(tags.code(p.folder) if p.folder else "(main folder)"),
                                 tags.td("through the relay" if p.source == "relay" else "over WiFi"))
                         for p in recent] or [tags.tr(tags.td("No photos since the server started.",
                                                              colspan="3"))]),
        ),
        class_="card")

    where_rows = []
    if not targets:
        where_rows.append(tags.tr(
            tags.td(tags.code(str(store.photos))),
            tags.td(tags.span("not working: ", class_="bad"), health.upload_problem) if health.upload_problem
            else tags.td(tags.span("works", class_="ok"))))
    for index, target in enumerate(targets):
        why = problems[str(target)]
        label = "output folder" if index == 0 else "copy"
        where_rows.append(tags.tr(
            tags.td(tags.code(str(target)), tags.br(), tags.small(label)),
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

    cards = [photos, where, held_card(state), lan_card(state), relay_card(state, relay, outage, paused)]
    return [tags.div(*cards, class_="cards")]


#: Held files listed on the home page (the oldest); the count covers all.
HELD_SHOWN = 100


def held_card(state: ServerState):
    """
    Files from the relay this PC will not file (medimage_tx.photos.held),
    what to do, and the room on the disk.  The folders are looked at in a
    thread (finding 19.2: 40,000 held files listed on the reactor thread
    froze the server 4.4 s); the page waits for it, the server does not.
    """
    config = state.config
    data_dir = state.store.data_dir

    def look():
        return held_summary(data_dir, HELD_SHOWN), below_floor(data_dir, config, config.maxUploadSize)

    return state.in_thread(look).addCallback(lambda found: _held_card(data_dir, config, *found))


def _held_card(data_dir: Path, config: Config, held, low_disk) -> Tag:
    folder = data_dir / HELD
    body: list = []
    if low_disk:
        body.append(tags.p(tags.span("Disk nearly full: ", class_="bad"), low_disk,
                           ". Nothing is fetched from the relay, and below minFreeBytes phones are "
                           "told to try later, until there is room."))
    if not held.count:
        body.append(tags.p("None: every file from the relay was filed."))
        return tags.div(tags.h2("Held files"), *body, id="held", class_="card")
    full = held.count >= config.heldMaxFiles or held.bytes >= config.heldMaxBytes
    body += [tags.p(tags.span(f"{held.count} file(s) held", class_="bad"), f" ({size_text(held.bytes)}) in ",
                    tags.code(str(folder)), "."),
             tags.p(tags.span("The held folder is full", class_="bad"),
                    f" (at most {config.heldMaxFiles} files and {size_text(config.heldMaxBytes)}: "
                    "heldMaxFiles, heldMaxBytes): nothing is fetched from the relay until it is emptied.")
             if full else "",
             tags.p(WHAT_TO_DO),
             tags.table(tags.thead(tags.tr(tags.th("File", scope="col"), tags.th("Why", scope="col"))),
                        tags.tbody(*[tags.tr(tags.td(tags.code(f.name), tags.br(), tags.small(size_text(f.size))),
                                             tags.td(f.reason or "this PC does not file it"))
                                     for f in held.oldest])),
             tags.p(f"The oldest {len(held.oldest)} are listed.", class_="hint")
             if len(held.oldest) < held.count else ""]
    return tags.div(tags.h2("Held files"), *body, id="held", class_="card")


def lan_card(state: ServerState) -> Tag:
    status, config = state.discovery, state.config
    text: list[Flattenable]
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


def not_collecting(config: Config) -> str:
    """
    Why a paired PC without a puller never gets a photo from the relay.
    """
    if config.allowGettingRemotePhotos:
        return ("allowGettingRemotePhotos was false in config.json when the server started: "
                "restart it to collect photos from the relay")
    return ("allowGettingRemotePhotos is false in config.json, so this PC never collects the "
            "photos phones send to the relay: set it to true and restart the server")


def relay_card(state: ServerState, relay: str, outage, paused=None) -> Tag:
    config, activity = state.config, state.activity
    rows: list[tuple[str, Flattenable]]
    if not relay:
        rows = [("Paired", "no: pair to receive photos away from the clinic's WiFi")]
    else:
        last = activity.last_from_relay if activity else 0
        rows = [("Paired", ["yes, with ", tags.code(relay)]),
                ("Connected", f"no: {outage}" if outage else "yes"),
                *([("Fetching", f"paused: {paused}")] if paused else []),
                ("Last delivery", when(last, time.time()) if last else "none since the server started")]
    rows.append(("Transferred", size_text(config.transfer + state.unsaved_transfer)))
    return tags.div(tags.h2("Relay"),
                    tags.table(tags.tbody(*[tags.tr(tags.th(k, scope="row"), tags.td(v)) for k, v in rows])),
                    tags.p(tags.a("Pair phones", href="/admin/pair")), class_="card")


def relay_cards(state: ServerState, health: Health) -> list:
    stats = state.stats
    rows = [("Role", "Relay: queues photos for clinic PCs"),
            ("Photos received since start", str(stats.photos_received)),
            ("Received since start", size_text(stats.bytes_received))]
    return [tags.div(tags.div(tags.h2("Is it working?"), *status_lines(health, []),
                              tags.table(tags.tbody(*[tags.tr(tags.th(k, scope="row"), tags.td(v))
                                                      for k, v in rows])), class_="card"),
                     class_="cards")]
