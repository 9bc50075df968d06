"""
LAN discovery (PROTOCOL.md B1): mDNS/DNS-SD adverts with python-zeroconf and
replies to UDP scan probes, re-announced when the interfaces change.

Zeroconf runs its own thread and event loop; its blocking calls (register,
update, close) go to Twisted's thread pool.  That keeps the default reactor
(which the rest of the server and its tests use) instead of switching the
whole program to the asyncio reactor for one library.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, maybeDeferred, succeed
from twisted.internet.interfaces import IUDPTransport
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from .identity import fingerprint
from .lan.rules import (
    PROTOCOL_VERSION,
    SERVICE_TYPE,
    Interface,
    ReplyLimiter,
    current_interfaces,
    local_address_for,
    parse_probe,
    reply_for,
)

if TYPE_CHECKING:
    # zeroconf itself is imported where mDNS starts (_register).
    from zeroconf import ServiceInfo, Zeroconf

CHECK_INTERVAL = 5.0
SHUTDOWN_LIMIT = 1.8


@dataclass
class DiscoveryStatus:
    """
    What the status page shows to answer "why can't my phone find the PC".
    """

    interfaces: list[Interface] = field(default_factory=list)
    probes_answered: int = 0
    probes_ignored: int = 0
    mdns_registered: bool = False
    udp_port: Optional[int] = None
    #: Why scans are not answered (the UDP port busy): shown on the home page.
    udp_problem: str = ""
    last_error: str = ""


class ScanResponder(DatagramProtocol):
    log = Logger()
    transport: IUDPTransport  # the UDP port, set before any datagram arrives

    def __init__(self, discovery: "DiscoveryService"):
        self.discovery = discovery

    def datagramReceived(self, data: bytes, address) -> None:
        discovery = self.discovery
        status = discovery.status
        nonce = parse_probe(data)
        sender = address[0]
        local = local_address_for(sender, status.interfaces) if nonce is not None else None
        port = discovery.http_port()
        if nonce is None or local is None or port is None:
            status.probes_ignored += 1  # not a probe, not from our LAN, or not serving yet
            return
        config = discovery.state.config
        url = f"{discovery.scheme()}://{local}:{port}"
        # Never more bytes back than the probe carried (spoofed senders).
        reply = reply_for(nonce, config.serverName, url, discovery.scheme() == "https", config.globalId,
                          limit=len(data))
        # Only probes that would get a reply spend the budgets.
        if reply is None or not discovery.limiter.allow(sender):
            status.probes_ignored += 1
            return
        try:
            self.transport.write(reply, address)
        except OSError as e:
            status.last_error = f"UDP reply failed: {e}"
            return
        status.probes_answered += 1


class DiscoveryService(Service):
    """
    @param http_port: returns the HTTP port being listened on, or None yet.
    @param interfaces: returns the interfaces to advertise on (psutil by default).
    @param udp_port: the UDP port for scans (C{--discovery-port}); default
        config's C{discoveryPort}.
    """

    log = Logger()

    def __init__(self, state, reactor, http_port: Callable[[], Optional[int]],
                 interfaces: Optional[Callable[[], list[Interface]]] = None,
                 interval: float = CHECK_INTERVAL, scheme: Callable[[], str] = lambda: "http",
                 udp_port: Optional[int] = None):
        self.state = state
        self._udp_port_option = udp_port
        self.reactor = reactor
        self.http_port = http_port
        self.scheme = scheme
        self.interval = interval
        self._interfaces = interfaces or (lambda: current_interfaces(state.config.discoveryInterfaces))
        self.status = DiscoveryStatus()
        self.limiter = ReplyLimiter(time.monotonic)
        self._udp = None
        self._zeroconf: Optional[Zeroconf] = None
        self._info: Optional[ServiceInfo] = None
        self._advertised: Optional[tuple] = None
        self._busy: Optional[Deferred] = None
        self._loop = LoopingCall(self.check)
        self._loop.clock = reactor
        state.config_listeners.append(self._config_changed)

    def _in_thread(self, f, *args):
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), f, *args)

    def startService(self) -> None:
        super().startService()
        self._listen_for_scans()
        self._loop.start(self.interval, now=True)

    def _listen_for_scans(self) -> None:
        """
        Listen on the UDP scan port; if it is busy (another server on this
        PC, or the original), say so once and try again on every check.
        """
        port = self.state.config.discoveryPort if self._udp_port_option is None else self._udp_port_option
        try:
            udp = self.reactor.listenUDP(port, ScanResponder(self), interface="")
        except Exception as e:
            reason = getattr(getattr(e, "socketError", None), "strerror", None) or str(e)
            problem = (f"cannot listen for scans on UDP port {port} ({reason}): phones scanning the WiFi "
                       f"do not find this PC; trying again every {self.interval:g} s")
            if problem != self.status.udp_problem:
                self.log.warn("LAN discovery: {problem}", problem=problem)
            self.status.udp_problem = self.status.last_error = problem
            return
        udp.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        self._udp = udp
        self.status.udp_port = udp.getHost().port
        if self.status.udp_problem:
            self.log.info("LAN discovery: now listening for scans on UDP port {port}", port=self.status.udp_port)
            if self.status.last_error == self.status.udp_problem:
                self.status.last_error = ""  # solved: the page must not keep showing it
            self.status.udp_problem = ""

    def check(self) -> Optional[Deferred]:
        """
        Look at the interfaces; re-announce when they or what we advertise changed.
        """
        if self._udp is None and self.running:
            self._listen_for_scans()
        if self._busy is not None:
            return None
        try:
            interfaces = self._interfaces()
        except Exception as e:
            self.status.last_error = f"cannot list interfaces: {e}"
            return None
        if interfaces != self.status.interfaces:
            if self.status.interfaces:
                self.log.info("LAN discovery: interfaces changed, now {addresses}",
                              addresses=", ".join(f"{i.name} {i.address}" for i in interfaces) or "none")
            self.status.interfaces = interfaces
        wanted = self._advert_key()
        if wanted == self._advertised or self.http_port() is None:
            return None
        self._busy = ensureDeferred(self._announce(wanted))
        self._busy.addBoth(self._announced)
        return self._busy

    def _announced(self, result) -> None:
        self._busy = None
        if isinstance(result, Failure):
            self.status.last_error = result.getErrorMessage()
            self.log.failure("LAN discovery: announcing failed", result)

    def _config_changed(self) -> None:
        if self.running and self._advert_key() != self._advertised:
            self.check()

    def _advert_key(self) -> tuple:
        config = self.state.config
        return (tuple(i.address for i in self.status.interfaces), self.http_port(),
                config.serverName, config.globalId, self.scheme())

    async def _announce(self, key: tuple) -> None:
        addresses, port, name, global_id, scheme = key
        await self._close_zeroconf()
        self._advertised = key
        if not addresses:
            return
        properties = {"v": str(PROTOCOL_VERSION), "path": "/", "tls": "1" if scheme == "https" else "0"}
        if global_id:
            properties["fp"] = fingerprint(global_id)
        try:
            await self._in_thread(self._register, list(addresses), port, name, properties)
        except Exception as e:
            self.status.last_error = f"mDNS: {e}"
            self.status.mdns_registered = False
            self.log.warn("LAN discovery: cannot advertise by mDNS: {error}", error=e)
            return
        self.status.mdns_registered = True
        self.log.info("LAN discovery: advertised as {name!r} on {addresses}, port {port}",
                      name=name, addresses=", ".join(addresses), port=port)

    def _register(self, addresses, port, name, properties) -> None:
        from zeroconf import IPVersion, ServiceInfo, Zeroconf

        zeroconf = Zeroconf(interfaces=addresses, ip_version=IPVersion.V4Only)
        host = socket.gethostname().split(".")[0] or "medimage"
        info = ServiceInfo(
            SERVICE_TYPE, f"{name}.{SERVICE_TYPE}",
            addresses=[ipaddress.IPv4Address(a).packed for a in addresses],
            port=port, properties=properties, server=f"{host}.local.",
        )
        self._zeroconf, self._info = zeroconf, info
        zeroconf.register_service(info, allow_name_change=True)

    async def _close_zeroconf(self) -> None:
        zeroconf, self._zeroconf = self._zeroconf, None
        self.status.mdns_registered = False
        if zeroconf is not None:
            # close() unregisters with goodbye packets.
            await self._in_thread(zeroconf.close)

    def stopService(self) -> Deferred:
        super().stopService()
        started = time.monotonic()
        if self._loop.running:
            self._loop.stop()
        waits = []
        if self._udp is not None:
            waits.append(maybeDeferred(self._udp.stopListening))
            self._udp = None
        busy = self._busy or succeed(None)
        closing = busy.addBoth(lambda _: ensureDeferred(self._close_zeroconf()))
        # The whole shutdown stays within ~2 s even if the network is slow.
        closing.addTimeout(SHUTDOWN_LIMIT, self.reactor)
        closing.addErrback(lambda f: self.log.warn("LAN discovery: shutdown was cut short"))
        waits.append(closing)
        done = DeferredList(waits)
        done.addCallback(lambda _: self.log.info(
            "LAN discovery stopped (mDNS goodbye sent) in {ms:.0f} ms",
            ms=(time.monotonic() - started) * 1000))
        return done
