"""
The wiring: command-line options and the service tree of C{twistd medimage}.
Nothing else in the package knows about command-line options.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from . import __version__
from .addons import make_addon_service
from .pc.backups import BackupService
from .config_watch import ConfigWatcher
from .web.connection_limits import raise_open_file_limit
from .config import (ConfigError, Config, check_relay_store, config_stamp, config_warnings, load_or_create_config,
                     resolve_path)
from .discovery import DiscoveryService
from .durable import InThread, reactor_threads
from .errors import StartupFailed
from .pc.filing import Filing, photo_store
from .http_resource import make_site, pc_root, relay_root
from .admin import Access
from . import logs
from .state import ServerState
from .pc.puller import RelayPuller
from .admin.log_ring import LogRingService
from .web.proxy_protocol import trusted_proxy_endpoint
from .admin.activity import count_filed_today, day_of
from .relay import Relay, RelayExpiry
from .relay_store import RelayStoreService, RelayStoreUnavailable, open_relay_store
from .relay_store.queue import DEFAULT_LEASE_SECONDS
from .photos.store import PhotoStore, process_umask
from .web.tls import TLSConfigError, server_tls_options

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

log = Logger()


def default_data_dir() -> Path:
    return Path.home() / "MedImage"


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run a MedImage server: a clinic PC server that receives photos from "
        "phones (and pulls them from a relay), or a relay, as config.json says. "
        "With no config file, a default one is written in the data folder."
    )
    optFlags = [
        ["no-lan", None, "LAN mode off: no mDNS, no UDP scan replies, HTTP on 127.0.0.1 "
                         "unless --interface is given; phones reach this PC through the relay"],
        ["verbose", "v", "log debug lines too (every retry, Twisted's own chatter)"],
    ]
    optParameters = [
        ["config", "c", None, "config.json to use [default: DATA/config.json]"],
        ["data", "d", None, f"folder for photos, temporary files and the default config [default: {default_data_dir()}]"],
        ["interface", "i", None, "address to listen on [default: all IPv4 addresses]"],
        ["relay-store", None, None, "a relay's store, overriding relayStore in config.json: "
                                    "postgresql://... shares one database between relay nodes"],
    ]

    def __init__(self):
        super().__init__()
        self["port"] = None
        self["discovery-port"] = None

    def opt_port(self, value: str) -> None:
        """
        HTTP port, overriding listenPort in config.json (0: any free port)
        """
        self["port"] = _port_option("--port", value)

    opt_p = opt_port

    def opt_discovery_port(self, value: str) -> None:
        """
        UDP port for the phones' LAN scan, overriding discoveryPort (one per server on a PC)
        """
        self["discovery-port"] = _port_option("--discovery-port", value)

    def opt_version(self) -> None:
        """
        Show this program's version (and Twisted's) and exit
        """
        import twisted

        # usage.Options' own --version names only Twisted's.
        print(f"medimage-tx {__version__} (Twisted {twisted.__version__})")
        raise SystemExit(0)

    def data_dir(self) -> Path:
        return Path(self["data"]).expanduser().absolute() if self["data"] else default_data_dir()

    def postOptions(self) -> None:
        # twistd's own defaults, where they would make several servers on one
        # machine collide or hide the files: the pid file and the daemon's
        # log go in the data folder, and a daemon keeps the umask it was
        # started with (twistd's daemon default of 077 would make photos
        # unreadable to the practice software).
        runner = getattr(self, "parent", None)
        if runner is None:
            return
        if runner.get("pidfile") == "twistd.pid":
            runner["pidfile"] = str(self.data_dir() / "twistd.pid")
        if runner.get("pidfile"):
            # Before twistd's own check, which says it in six lines about twistd.
            other = running_server(Path(runner["pidfile"]))
            if other is not None:
                where = (f"the data folder {self.data_dir()}"
                         if Path(runner["pidfile"]) == self.data_dir() / "twistd.pid"
                         else f"the pid file {runner['pidfile']}")
                raise StartupFailed(f"medimage: another server (pid {other}) is running with {where}: stop it "
                                    f"first, or give this one its own --data")
            remove_stale_pidfile(Path(runner["pidfile"]))
        daemon = "nodaemon" in runner and not runner["nodaemon"]
        if daemon and runner.get("logfile") is None and not runner.get("syslog"):
            runner["logfile"] = str(self.data_dir() / "medimage.log")
        if daemon and "umask" in runner and runner["umask"] is None:
            runner["umask"] = process_umask()
        if runner.get("logger") is None and not runner.get("syslog"):
            # twistd's --logger takes a name to import; the settings go beside it.
            logs.for_twistd.update(log_path=runner.get("logfile"), verbose=bool(self["verbose"]))
            runner["logger"] = "medimage_tx.logs.twistd_observer"


def running_server(pidfile: Path) -> Optional[int]:
    """
    The pid in C{pidfile} if that process is alive and a server, else None
    (no file, or a stale one).  A file left by a power cut may be empty, or
    name a pid the next boot gave to another program or to this very
    process (boots start things in the same order): stale too, or the
    service would refuse to start until someone deleted it.  Unix only: on
    Windows C{os.kill} would end the process, and twistd keeps no pid file
    there.
    """
    if os.name != "posix":
        return None
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    if pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return pid if _may_be_a_server(pid) else None


def _may_be_a_server(pid: int) -> bool:
    """
    The process's command line names this server or twistd, where
    C{/proc} tells; where it cannot (macOS, or C{/proc} mounted with
    C{hidepid} hiding another user's processes), assume it does.
    """
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return b"medimage" in command or b"twistd" in command


def remove_stale_pidfile(pidfile: Path) -> None:
    """
    Remove a pid file that names no running server (L{running_server}), so
    that twistd's own check (which counts any live process) starts.
    """
    if os.name != "posix":
        return
    try:
        pidfile.unlink()
    except FileNotFoundError:
        pass
    except OSError as e:
        raise StartupFailed(f"medimage: cannot remove the stale pid file {pidfile}: {e.strerror}") from None


def _port_option(option: str, value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise usage.UsageError(f"{option}: expected a number, got {value!r}")
    if not 0 <= port <= 65535:
        raise usage.UsageError(f"{option}: expected 0 to 65535, got {port}")
    return port


def listen_problem(port: int, interface: str) -> Optional[str]:
    """
    Why a TCP listen on C{port} would fail now (a port in use, a port this
    user may not open), or None.  Checked before twistd daemonizes, so the
    launching process itself reports it.
    """
    if port == 0:
        return None
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        if os.name != "nt":  # as Twisted's listeners do; on Windows it would allow double binds
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((interface, port))
    except OSError as e:
        return e.strerror or str(e)
    finally:
        probe.close()
    return None


class HTTPListener(Service):
    """
    Listens on an endpoint; fails the start, loudly, if it cannot.

    @ivar listening: fires with the listening port.
    @ivar address: the port and interface asked for, for messages.
    """

    def __init__(self, endpoint, factory, on_listening=None, address: tuple[int, str] = (0, "")):
        self.endpoint = endpoint
        self.factory = factory
        self.on_listening = on_listening
        self.address = address
        self.port = None
        self.listening: Deferred = Deferred()

    def describe(self) -> str:
        port, interface = self.address
        return f"port {port} ({interface or 'all addresses'})"

    def check(self) -> None:
        """
        @raise StartupFailed: the port cannot be listened on.
        """
        problem = listen_problem(*self.address)
        if problem:
            raise StartupFailed(_listen_failure(self.describe(), problem))

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.port is None:
            self._listen()

    def startService(self) -> None:
        super().startService()
        if self.port is None:
            self._listen()

    def _listen(self) -> None:
        failed: list[Failure] = []
        d = self.endpoint.listen(self.factory)
        d.addCallbacks(self._listened, failed.append)
        if failed:
            reason = failed[0].value
            reason = getattr(reason, "socketError", None) or reason
            raise StartupFailed(_listen_failure(self.describe(), getattr(reason, "strerror", None) or str(reason)))

    def _listened(self, port) -> None:
        self.port = port
        if self.on_listening is not None:
            self.on_listening(port)
        self.listening.callback(port)

    def stopService(self):
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()


def _listen_failure(where: str, problem: str) -> str:
    return (f"medimage: cannot listen on {where}: {problem} (another MedImage server running? "
            f"stop it, or give this one another --port / listenPort)")


class MedImageService(MultiService):
    """
    The whole server.  Tests build it with L{build_service} and start it.
    """

    def __init__(self, state: ServerState, http: HTTPListener):
        super().__init__()
        self.state = state
        self.http = http
        self.puller: Optional[RelayPuller] = None
        self.discovery: Optional[DiscoveryService] = None
        self.https: Optional[HTTPListener] = None

    def check_listeners(self) -> None:
        """
        @raise StartupFailed: a port it needs cannot be listened on.
        """
        for listener in (self.http, self.https):
            if listener is not None:
                listener.check()


def build_service(
    reactor: Any,
    data_dir: Path,
    config_path: Optional[Path] = None,
    port: Optional[int] = None,
    interface: Optional[str] = None,
    clock: Optional[IReactorTime] = None,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    no_lan: bool = False,
    discovery_port: Optional[int] = None,
    relay_store: Optional[str] = None,
    in_thread: Optional[InThread] = None,
) -> MedImageService:
    """
    Read config and wire the services.  Raises L{ConfigError}.

    @param clock: for leases and waits (tests pass a L{task.Clock});
        default the reactor.
    @param in_thread: runs blocking calls off the reactor thread; default
        the reactor's thread pool (tests on a fake reactor give their own).
    """
    clock = clock or reactor
    in_thread = in_thread or reactor_threads(reactor)
    data_dir = data_dir.expanduser().absolute()
    config_path = (config_path or data_dir / "config.json").expanduser().absolute()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{data_dir}: cannot create the data folder: {e.strerror}")
    config, created = load_or_create_config(config_path)
    if created:
        log.info("No config found: wrote the defaults to {path}", path=config_path)
    for line in config_warnings(config):
        log.warn("{line}", line=line)
    store = photo_store(config, data_dir)
    # As loaded: an edit made before the watcher starts is still an edit.
    state = ServerState(config=config, store=store, reactor=reactor,
                        backups=BackupService(store, reactor, in_thread=in_thread),
                        config_stamp=config_stamp(config.path), in_thread=in_thread)
    relay = None
    if config.allowPhotosLeaving:
        url = config.relayStore if relay_store is None else relay_store
        try:
            check_relay_store(url)
            shared, pairing = open_relay_store(url, store, data_dir, reactor, clock, lease_seconds, in_thread)
        except ValueError as e:
            raise ConfigError(f"--relay-store: {e}") from None
        except RelayStoreUnavailable as e:
            raise ConfigError(str(e)) from None
        relay = Relay(shared, clock)
        state.relay, state.pairing = relay, pairing
        root = relay_root(state, relay, pairing)
    else:
        addons = make_addon_service(state, reactor, clock)
        state.backups.on_unfinished_addons = addons.resume
        state.addons, state.filing = addons, Filing(state, addons)
        root = pc_root(state, state.filing)
    lan = config.lanMode and not no_lan and relay is None
    if not lan and relay is None:
        interface = interface or "127.0.0.1"
        log.info("LAN mode is off: no mDNS adverts or UDP scan replies, and HTTP only on "
                 "{interface}, so phones on the WiFi cannot find this PC; they send through the relay",
                 interface=interface)
    # Sessions on the reactor's clock (the wall clock; a fake one in tests).
    state.access = Access(state, listen_address=interface, now=reactor.seconds)
    site = make_site(state, root, relay=relay is not None)
    listen_port = config.listenPort if port is None else port
    tls = _tls_options(config)
    https_only = tls is not None and config.httpsPort is None
    http = HTTPListener(_endpoint(reactor, listen_port, interface, tls if https_only else None,
                                  (lambda: state.config.proxyProtocolFrom) if config.proxyProtocol else None),
                        site,
                        lambda p: _announce(config, store, p, "https" if https_only else "http"),
                        address=(listen_port, interface or ""))
    service = MedImageService(state, http)
    if tls is not None and config.httpsPort is not None:  # (not https_only)
        service.https = HTTPListener(_endpoint(reactor, config.httpsPort, interface, tls), site,
                                     lambda p: _announce(config, store, p, "https"),
                                     address=(config.httpsPort, interface or ""))
    state.backups.setServiceParent(service)
    LogRingService(state.log_ring).setServiceParent(service)
    if relay is None:
        TodaysPhotos(state).setServiceParent(service)
    if relay is not None:
        RelayStoreService(relay.store).setServiceParent(service)
    ConfigWatcher(state).setServiceParent(service)
    if relay is not None:
        RelayExpiry(state, relay, clock).setServiceParent(service)
    http.setServiceParent(service)
    if service.https is not None:
        service.https.setServiceParent(service)
    if lan:
        # Phones are pointed at HTTPS when there is HTTPS.
        advertised = service.https or http
        service.discovery = DiscoveryService(
            state, reactor, lambda: advertised.port.getHost().port if advertised.port else None,
            scheme=lambda: "https" if tls is not None else "http", udp_port=discovery_port)
        service.discovery.setServiceParent(service)
        state.discovery = service.discovery.status
    if state.addons is not None:
        state.addons.setServiceParent(service)
        detected = store.backup_to[len(config.backupTo):]
        state.config_listeners.append(lambda: _follow_backup_to(state, detected))
    if relay is None and config.allowGettingRemotePhotos:
        # Runs always, idle until readProxy is set (pairing sets it).
        service.puller = RelayPuller(state, reactor, clock)
        state.config_listeners.append(service.puller.config_changed)
        service.puller.setServiceParent(service)
        state.puller = service.puller
    return service


class TodaysPhotos(Service):
    """
    At start, count the photos filed today so far (the home page's
    "Photos received today" survives a restart): in the staging folder,
    which keeps every photo with keepMaster, and without it also in the
    first target, where each staged photo moves.
    """

    def __init__(self, state: ServerState):
        self.state = state

    def startService(self) -> None:
        super().startService()
        store, started = self.state.store, time.time()
        folders = [store.photos] + ([store.backup_to[0]] if store.backup_to and not store.keep_master else [])
        d = self.state.in_thread(count_filed_today, folders, started)
        d.addCallback(lambda count: self.state.activity.add_earlier(count, day_of(started)))
        d.addErrback(lambda f: log.failure("Could not count today's photos", f))


def _follow_backup_to(state: ServerState, detected: tuple) -> None:
    """
    config.json changed (by hand, or an add-on such as change-folder):
    copies go to its backupTo from now on (plus the drives found at start).
    """
    config = state.config
    targets = tuple(resolve_path(folder, config.path.parent) for folder in config.backupTo) + detected
    if targets != state.store.backup_to:
        state.store.backup_to = targets
        log.info("Photos are now copied to {targets}",
                 targets=", ".join(map(str, targets)) or "no target folder")


def _tls_options(config: Config):
    if not config.httpsKey:
        return None
    base = config.path.parent
    try:
        return server_tls_options(resolve_path(config.httpsKey, base), resolve_path(config.httpsCert, base))
    except TLSConfigError as e:
        raise ConfigError(f"{config.path}: HTTPS (httpsKey/httpsCert): {e}") from None


def _endpoint(reactor, port: int, interface: Optional[str], tls, balancers=None):
    """
    @param balancers: with the PROXY protocol, returns the balancers whose
        header is believed (C{proxyProtocolFrom}).
    """
    interface = interface or ""
    if balancers is not None:
        # Behind HAProxy's send-proxy: each connection starts with the
        # client's real address (docs/relay-cluster.md).
        return trusted_proxy_endpoint(_endpoint(reactor, port, interface, tls), balancers)
    if tls is not None:
        return SSL4ServerEndpoint(reactor, port, tls, interface=interface)
    if ":" in interface:
        return TCP6ServerEndpoint(reactor, port, interface=interface)
    return TCP4ServerEndpoint(reactor, port, interface=interface)


def _announce(config: Config, store: PhotoStore, port, scheme: str) -> None:
    address = port.getHost()
    role = "relay" if config.role == "relay" else "clinic PC"
    log.info(
        "MedImage {role} server {version} listening on port {port} ({scheme}, {host}); "
        "photos arrive in {photos}{copies}",
        role=role, version=__version__, port=address.port, scheme=scheme,
        host=address.host or "all addresses",
        photos=store.photos,
        copies=(" and are copied to " + ", ".join(map(str, store.backup_to))) if store.backup_to else "",
    )


def makeService(options: Options) -> MedImageService:
    from twisted.internet import reactor

    data_dir = Path(options["data"]) if options["data"] else default_data_dir()
    config_path = Path(options["config"]) if options["config"] else None
    # Room for many connections and the files they store, where the OS allows.
    open_files = raise_open_file_limit()
    try:
        service = build_service(reactor, data_dir, config_path, options["port"], options["interface"],
                                no_lan=bool(options["no-lan"]), discovery_port=options["discovery-port"],
                                relay_store=options["relay-store"])
    except ConfigError as e:
        # One clear line, no traceback: the server does not start.
        raise StartupFailed(f"medimage: {e}")
    # Before twistd daemonizes: the launching process reports it.
    service.check_listeners()
    limits = service.http.factory.limits
    log.info("At most {total} connections at once, {per} per client address (open-file limit: {files})",
             total=limits.connections_in_total, per=limits.connections_per_address,
             files=open_files if open_files is not None else "none")
    return service
