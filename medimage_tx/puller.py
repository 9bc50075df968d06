"""
The clinic PC's side of the relay (PROTOCOL.md A4, B4): L{RelayPuller} pulls
from C{readProxy}: an acknowledged long poll against a relay that says it
supports B4 (header L{RELAY_FEATURES}), the original HEAD-then-GET every 5 s
otherwise.  A photo is acknowledged only once it is durably stored like a
direct upload.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Optional

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool
from treq.client import HTTPClient

from .naming import DEFAULT_STEM, clean_text, safe_component, strip_extension
from .proxy_tunnel import make_agent
from .relay import ACK_HEADER, RECEIPT_HEADER, RELAY_FEATURES
from .relay_tls import RelayTLSPolicy, explain, one_line, policy_for, relay_ca_path
from .sniff import HEAD_SIZE, choose_type


def photo_parts(file_name: str, allowed_chars: str) -> tuple[tuple[str, ...], str]:
    """
    From a relay's C{file-name} header, C{/<id>/<folders>/<name>}: the safe
    folders and the name (which a hostile relay cannot use to escape).
    """
    words = [w for w in file_name.replace("\\", "/").split("/") if w]
    if len(words) > 1:
        words = words[1:]  # the paired id the relay files it under
    cleaned = [safe_component(clean_text(w, allowed_chars)) for w in words]
    folders = tuple(c for c in cleaned[:-1] if c)
    return folders, cleaned[-1] if cleaned else ""


class RelayUnavailable(Exception):
    pass


def backoff_delay(failures: int, start: float, maximum: float) -> float:
    """
    Capped exponential backoff; the exponent is capped too, so an outage of
    days cannot overflow it.
    """
    return min(maximum, start * 2 ** min(failures - 1, 30))


class RelayPuller(Service):
    """
    Pulls photos from C{readProxy} into the PC's store, for as long as it
    runs.  Reads config afresh every round, so a new C{readProxy} (after
    pairing) takes effect at once.

    @ivar delivered: a list of callables, each called with the relative
        path of every photo stored from the relay.
    """

    log = Logger()

    def __init__(self, state, reactor: Any, clock: Any = None, *, legacy_interval: float = 5.0,
                 long_poll: int = 30, backoff_start: float = 1.0, backoff_max: float = 60.0):
        self.state = state
        self.reactor = reactor
        self.clock = clock or reactor
        self.legacy_interval = legacy_interval
        self.long_poll = long_poll
        self.backoff_start = backoff_start
        self.backoff_max = backoff_max
        self.delivered: list = []
        self._loop: Optional[Deferred] = None
        self._pool: Optional[HTTPConnectionPool] = None
        self._supports_ack: Optional[bool] = None
        self._outage: Optional[str] = None
        self._tls: Optional[RelayTLSPolicy] = None
        self._read_url = ""
        self._web_proxy = ""
        self._generation = 0

    @property
    def outage(self) -> Optional[str]:
        """
        Why the relay cannot be reached now (one line), or L{None}.
        """
        return self._outage

    def startService(self) -> None:
        super().startService()
        self._pool = HTTPConnectionPool(self.reactor, persistent=True)
        self._pool.maxPersistentPerHost = 2
        self._restart()

    def stopService(self):
        super().stopService()
        self._generation += 1
        if self._loop is not None:
            self._loop.cancel()
        pool, self._pool = self._pool, None
        return pool.closeCachedConnections() if pool else None

    def _restart(self) -> None:
        self._generation += 1
        if self._loop is not None:
            self._loop.cancel()
        self._loop = ensureDeferred(self._run(self._generation))
        self._loop.addErrback(lambda f: None if f.check(CancelledError) else
                              self.log.failure("The relay puller stopped", f))

    def config_changed(self) -> None:
        """
        Config was replaced: drop the current wait so that a new readProxy
        or webProxy is used now, not after the current long poll.
        """
        config = self.state.config
        if self.running and (config.readProxy, config.webProxy) != (self._read_url, self._web_proxy):
            self._supports_ack = None
            self._restart()

    async def _run(self, generation: int) -> None:
        failures = 0
        while self.running and generation == self._generation:
            config = self.state.config
            self._read_url, self._web_proxy = config.readProxy, config.webProxy
            if not (config.readProxy and config.allowGettingRemotePhotos) or config.allowPhotosLeaving:
                await deferLater(self.clock, 1.0)
                continue
            try:
                got = await self._pull_once(config)
            except (CancelledError, GeneratorExit):
                raise
            except Exception as e:
                if generation != self._generation:
                    return  # cancelled for a new config; the new loop runs
                failures += 1
                await self._note_outage(e, config)
                delay = backoff_delay(failures, self.backoff_start, self.backoff_max)
                await deferLater(self.clock, delay * random.uniform(0.5, 1.0))
                continue
            failures = 0
            if self._outage is not None:
                self.log.info("The relay can be reached again")
                self._outage = None
            if not got and not self._supports_ack:
                await deferLater(self.clock, self.legacy_interval)

    async def _note_outage(self, error: Exception, config) -> None:
        # One warning per outage, in words IT can act on (a refused
        # certificate says why); each retry only at debug level (--verbose).
        first, self._outage = self._outage is None, one_line(error)
        self._supports_ack = None  # ask again once it is back
        if first:
            reason = await explain(error, config.readProxy, relay_ca_path(config), direct=not config.webProxy)
            self.log.warn("Cannot get photos from the relay: {reason}. Retrying with backoff.",
                          reason=reason)
        else:
            self.log.debug("The relay still cannot be reached: {reason}", reason=self._outage)

    def _client(self, config) -> HTTPClient:
        if self._tls is None or self._tls.ca_file != relay_ca_path(config):
            self._tls = policy_for(config)
        return HTTPClient(make_agent(self.reactor, self._pool, config.webProxy, self._tls))

    async def _pull_once(self, config) -> bool:
        client = self._client(config)
        url = config.readProxy
        if not self._supports_ack:
            head = await client.head(url)
            await head.content()
            _expect_ok(head)
            self._supports_ack = head.headers.getRawHeaders(RELAY_FEATURES) is not None
            if not self._supports_ack and not head.headers.hasHeader(b"file-name"):
                return False
        if self._supports_ack:
            separator = "&" if "?" in url else "?"
            response = await client.get(
                f"{url}{separator}wait={self.long_poll}",
                headers={ACK_HEADER: [b"1"]},
            )
        else:
            response = await client.get(url)
        _expect_ok(response)
        if response.headers.getRawHeaders(RELAY_FEATURES) is None:
            self._supports_ack = False
        file_name = _header(response, b"file-name")
        if file_name is None:
            await response.content()
            return False
        received = await self._download(response)
        stored = await self._store(received, file_name, config)
        receipt = _header(response, RECEIPT_HEADER)
        if receipt is not None:
            confirm = await client.delete(f"{url.split('?')[0].rstrip('/')}/{receipt}")
            await confirm.content()
            if confirm.code not in (200, 404):
                raise RelayUnavailable(f"the relay answered {confirm.code} to a confirmation")
        if stored is not None:
            self.log.info("Received {path} from the relay ({size} bytes){again}", path=stored.relative,
                          size=received.size, again=" (already stored)" if stored.duplicate else "")
        try:
            await self.state.add_transfer(received.size)
        except Exception:
            self.log.failure("Could not save the transfer count in config.json")
        if stored is not None:
            for notify in list(self.delivered):
                notify(stored.relative)
        return True

    async def _download(self, response) -> "_Download":
        download = _Download(self.state.store.temp, _header(response, b"digest"))
        try:
            await response.collect(download.write)
            download.check()
        except BaseException:
            download.discard()
            raise
        return download

    async def _store(self, download: "_Download", file_name: str, config):
        folders, name = photo_parts(file_name, config.allowedChars)
        allowed = choose_type(download.head, has_nul=download.has_nul,
                              named_extension=os.path.splitext(name)[1].lower(),
                              allowed_types=config.allowedTypes)
        if allowed is None:
            download.discard()
            self.log.warn("Dropped a file from the relay: its type is not in allowedTypes here")
            return None
        extensions = {".jpg", ".jpeg"} | {t.extension for t in config.allowedTypes}
        stem = safe_component(strip_extension(name, extensions)) or DEFAULT_STEM
        parts = folders + (stem + allowed.extension,)
        fd, temp = download.hand_over()
        stored = await self.state.store_photo(temp, fd, parts)
        if not stored.duplicate:
            self.state.stats.photos_received += 1
        self.state.stats.bytes_received += download.size
        return stored


class _Download:
    """
    A relay photo streaming into a temporary file, checked against the
    relay's digest when it sends one.
    """

    def __init__(self, temp_dir: Path, digest_header: Optional[str]):
        fd, name = tempfile.mkstemp(dir=temp_dir, prefix="relay-", suffix=".part")
        self.fd: Optional[int] = fd
        self.path = Path(name)
        self.size = 0
        self.head = b""
        self.has_nul = False
        self._hash = hashlib.sha256()
        self._expected = digest_header

    def write(self, data: bytes) -> None:
        if len(self.head) < HEAD_SIZE:
            self.head += data[: HEAD_SIZE - len(self.head)]
        self.has_nul = self.has_nul or b"\x00" in data
        self.size += len(data)
        self._hash.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def check(self) -> None:
        if self._expected is None:
            return
        expected = self._expected.strip()
        actual = "sha-256=" + base64.b64encode(self._hash.digest()).decode()
        if expected != actual:
            raise RelayUnavailable("the photo arrived damaged (digest mismatch); it will be sent again")

    def hand_over(self) -> tuple[int, Path]:
        fd, self.fd = self.fd, None
        return fd, self.path

    def discard(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        try:
            os.unlink(self.path)
        except OSError:
            pass


def _header(response, name: bytes) -> Optional[str]:
    values = response.headers.getRawHeaders(name)
    return values[0].decode("utf-8", "replace") if values else None


def _expect_ok(response) -> None:
    if response.code != 200:
        raise RelayUnavailable(f"the relay answered {response.code}")
