"""
The plain pages: C{/} (status), C{/discovery}, C{/load/}.
"""

from __future__ import annotations

import html
import json
import os

from ..admin import AdminResource
from ..admin.pages.home import home_page
from ..admin.pages.health import check_health
from ..admin.pages.layout import html_in_layout, send
from .answers import Answer, StateResource, add_config_headers, answer_now, html_page, render_async, table_html


class LoadAverage(StateResource):
    """
    C{GET /load/}: the 1, 5 and 15 minute load averages as a JSON array.
    """

    def render_GET(self, request):
        body = json.dumps([round(x, 2) for x in _load_average()]).encode()
        return answer_now(request, Answer(200, body, b"application/json"))


def _load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        import psutil

        return psutil.getloadavg()


#: What the apps' LAN scan (and any other site's page) gets of C{GET /}: a
#: 200 with a non-empty body is all the scan needs; nothing about the PC.
SHORT_STATUS = html_page(200, "MedImage", (
    "<p>MedImage server.</p><p>Clinic staff: open this page on the PC itself, or "
    "<a href='/admin/login'>sign in</a>, to see its status.</p>"))


class StatusPage(StateResource):
    """
    C{GET /}: the web admin's home page (admin.pages.home) for the PC's admin
    (the PC itself, or a password session, through one of its own names,
    from its own pages);
    for everyone else, above all the apps' cross-origin LAN scan, a short
    answer with the config headers that reveals nothing.  Old apps find a
    WiFi server by this page answering 200.
    """

    def render_GET(self, request):
        access = self.state.access
        if access.cross_origin(request) or not access.is_admin(request):
            add_config_headers(request, self.state.config.headers)
            return answer_now(request, SHORT_STATUS)
        return render_async(request, self._home)

    async def _home(self, request) -> None:
        state = self.state
        store = state.store
        health = await state.in_thread(check_health, state.config, store.temp, store.photos)
        send(request, home_page(request, state, health))
        return None  # answered


class DiscoveryPage(AdminResource):
    """
    C{GET /discovery}: what this PC advertises on the LAN, to answer "why
    can't my phone find the PC".  For the admin only: it names the PC's
    interfaces and addresses.
    """

    def render_GET(self, request):
        status = self.state.discovery
        if status is None:
            rows = [("LAN mode", "off: no mDNS adverts, no UDP scan replies, HTTP on loopback only. "
                                 "Phones reach this PC through the relay.")]
        else:
            rows = [
                ("LAN mode", "on"),
                ("Advertised on", ", ".join(f"{i.name} {i.address}" for i in status.interfaces)
                 or "no usable interface (is the PC on the network?)"),
                ("mDNS (_medimage._tcp)", "advertised" if status.mdns_registered else "not advertised"),
                ("UDP scan port", str(status.udp_port) if status.udp_port else "not listening"),
                ("Probes answered / ignored", f"{status.probes_answered} / {status.probes_ignored}"),
                ("Last error", status.last_error or "none"),
            ]
        tips = (
            "<p>If a phone cannot find this PC: check that the phone is on the same WiFi (not a "
            "guest network with client isolation), that the firewall lets in TCP "
            f"{html.escape(str(self.state.config.listenPort))}, UDP "
            f"{html.escape(str((status and status.udp_port) or self.state.config.discoveryPort))} "
            "and UDP 5353 (mDNS), that no VPN is "
            "active on the phone or PC, and that the interface listed above is the WiFi/LAN one "
            "(set <code>discoveryInterfaces</code> in config.json if not).</p>"
        )
        return answer_now(request, html_in_layout(request, self.state, 200, "LAN discovery", "",
                                                  table_html(rows) + tips))
