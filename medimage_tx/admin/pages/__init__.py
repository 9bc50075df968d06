"""
The clinic's web admin (issue 14): server-rendered pages
(twisted.web.template), plain CSS and a little JavaScript, all served by
the server itself.  Every page goes through the access layer
(L{medimage_tx.admin}): own C{Host} names only, the PC itself or a
password session, every change a same-origin C{POST} with a CSRF token.

- L{home}: C{GET /} for the admin;
- L{pairing_page}: C{/admin/pair};
- L{settings_page}: C{/admin/settings};
- L{logs_page}: C{/admin/logs}, from L{log_ring};
- L{addons_page}: C{/admin/addons};
- L{layout}: the page shell and C{/admin/static/}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.web.resource import Resource
from .addons import AddonsPage
from .layout import StaticFile
from .logs import LogsPage
from .pairing import PairingPage
from .settings import SettingsPage

if TYPE_CHECKING:
    from ...state import ServerState


def add_admin_pages(admin: Resource, state: ServerState) -> None:
    """
    Put the web admin's pages under C{/admin/}.
    """
    admin.putChild(b"pair", PairingPage(state))
    admin.putChild(b"settings", SettingsPage(state))
    admin.putChild(b"logs", LogsPage(state))
    admin.putChild(b"addons", AddonsPage(state))
    admin.putChild(b"static", StaticFile())
