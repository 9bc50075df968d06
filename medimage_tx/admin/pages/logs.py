"""
C{/admin/logs}: the latest log lines (L{log_ring.LogRing}), newest first,
filterable by level (a C{GET} query: it only chooses what to show).  The
guide's first troubleshooting step.  Hidden in lockDown, as the original
does.  A relay's log never names a patient folder or file, so neither
does its page; a clinic PC's names the photos it received (its own
record), and the page says which.
"""

from __future__ import annotations

import time

from twisted.web.template import tags

from .layout import AdminPage, page, send
from ..log_ring import level_names

#: What the lines say about patients, on each role (README, "Where photos and logs go").
PC_PRIVACY = ("These lines name the photos received, patient ids included (folder and file name): "
              "the clinic's own record, like the photo folder itself. A relay's lines never do.")
RELAY_PRIVACY = ("A relay's lines never name a patient folder or file; a pairing is named by a "
                 "fingerprint only.")

LEVEL_WORDS = {"info": "Everything", "warn": "Warnings and errors", "error": "Errors only"}


class LogsPage(AdminPage):
    hidden_in_lockdown = True

    def render_GET(self, request):
        wanted = request.args.get(b"level", [b"info"])[0].decode("ascii", "replace")
        if wanted not in LEVEL_WORDS:
            wanted = "info"
        ring = self.state.log_ring
        lines = ring.lines(wanted) if ring is not None else []
        options = [tags.option(LEVEL_WORDS[name], value=name,
                               **({"selected": "selected"} if name == wanted else {}))
                   for name in level_names()]
        chooser = tags.form(
            tags.label("Show", for_="level"),
            tags.select(*options, name="level", id="level"),
            tags.button("Show lines", type="submit"),
            method="get", action="/admin/logs", class_="inline")
        rows = [tags.tr(tags.td(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(line.time))),
                        tags.td(line.level), tags.td(line.text), class_=f"level-{line.level}")
                for line in lines]
        table = tags.table(
            tags.caption(f"The latest {len(lines)} line(s), newest first"),
            tags.thead(tags.tr(tags.th("Time", scope="col"), tags.th("Level", scope="col"),
                               tags.th("Message", scope="col"))),
            tags.tbody(*rows or [tags.tr(tags.td("No lines yet.", colspan="3"))]),
            class_="log")
        return send(request, page(
            request, self.state, "Logs", "/admin/logs",
            tags.p("What the server did lately (kept in memory; the full log is on the console, "
                   "in the log file or the system journal)."),
            tags.p(RELAY_PRIVACY if self.state.config.role == "relay" else PC_PRIVACY, class_="hint"),
            chooser, table))
