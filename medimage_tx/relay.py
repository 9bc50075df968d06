"""
Internet relay, both sides (PROTOCOL.md A4, B4).

Relay role: L{Relay} keeps the queue of photos per paired id and wakes long
polls; L{ReadResource} serves C{HEAD|GET|DELETE /read/<id>[/<receipt>]}.

PC role: L{RelayPuller} pulls from C{readProxy}: long poll with
acknowledgement against a relay that says it supports B4 (header
L{RELAY_FEATURES}), the original HEAD-then-GET every 5 s otherwise.  A photo
is acknowledged only once it is durably stored like a direct upload.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any, Optional
from urllib.parse import unquote, urlsplit

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool, ProxyAgent
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource
from twisted.web.static import NoRangeStaticProducer
from treq.client import HTTPClient
from zope.interface import implementer

from .errors import Rejected
from .identity import PAIRED_ID, fingerprint
from .paths import inside
from .proxy_tunnel import TunnellingEndpointFactory
from .naming import DEFAULT_STEM, clean_text, safe_component, strip_extension
from .relay_queue import RelayQueue
from .sniff import HEAD_SIZE, choose_type
from .store import PhotoStore
from .web import NOT_READABLE, Answer, answer_now, render_async

#: Response header by which a relay says it supports PROTOCOL.md B4.
RELAY_FEATURES = b"X-MedImage-Relay"
RELAY_FEATURES_VALUE = b"ack, wait"
ACK_HEADER = b"X-MedImage-Ack"
RECEIPT_HEADER = b"X-MedImage-Receipt"

MAX_WAIT = 60
NOTHING = b"none"
_CALLBACK = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]{0,63}(\.[A-Za-z_$][A-Za-z0-9_$]{0,63}){0,3}")

_MIME_BY_EXTENSION = {
    ".jpg": "image/jpeg", ".pdf": "application/pdf", ".png": "image/png", ".mp4": "video/mp4",
    ".mp3": "audio/mpeg", ".m4a": "audio/mp4", ".heic": "image/heic", ".heif": "image/heif",
    ".csv": "text/csv", ".json": "application/json",
}


def sha256_digests(path: Path) -> tuple[bytes, bytes]:
    """
    The C{Digest} and C{Content-Digest} header values for a file.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    encoded = base64.b64encode(digest.digest())
    return b"sha-256=" + encoded, b"sha-256=:" + encoded + b":"


# Relay role


class Relay:
    """
    The relay's queue over its photo store, with long-poll waiters.
    """

    log = Logger()

    def __init__(self, store: PhotoStore, clock: Any, lease_seconds: float):
        self.store = store
        self.clock = clock
        self.queue = RelayQueue(now=clock.seconds, lease_seconds=lease_seconds,
                                on_available=self._wake)
        self._waiters: dict[str, list[Deferred]] = {}
        self._expiry_call = None

    def load_existing(self) -> int:
        """
        Queue the photos already on disk (after a restart), oldest first.
        Leases are not kept across restarts: leased photos are given out again.
        """
        found = []
        for path in self.store.photos.rglob("*"):
            relative = path.relative_to(self.store.photos).as_posix()
            paired_id = relative.split("/", 1)[0]
            if path.is_file() and "/" in relative and PAIRED_ID.fullmatch(paired_id):
                stat = path.stat()
                found.append((stat.st_mtime_ns, relative, paired_id, stat.st_size))
        for _, relative, paired_id, size in sorted(found):
            self.queue.put(paired_id, relative, size)
        return len(found)

    def wait(self, paired_id: str, timeout: float) -> Deferred:
        """
        Fires (with None) when a photo becomes available for C{paired_id},
        or after C{timeout} seconds.  No timers run per idle waiter beyond
        its one timeout.
        """
        d: Deferred = Deferred(lambda d: self._forget(paired_id, d))
        self._waiters.setdefault(paired_id, []).append(d)
        call = self.clock.callLater(timeout, self._time_out, paired_id, d)
        d.addBoth(lambda result: (call.cancel() if call.active() else None, result)[1])
        return d

    def _time_out(self, paired_id: str, d: Deferred) -> None:
        self._forget(paired_id, d)
        d.callback(None)

    def _forget(self, paired_id: str, d: Deferred) -> None:
        waiters = self._waiters.get(paired_id, [])
        if d in waiters:
            waiters.remove(d)
        if not waiters:
            self._waiters.pop(paired_id, None)

    def _wake(self, paired_id: str) -> None:
        for d in self._waiters.pop(paired_id, []):
            d.callback(None)

    def leased(self) -> None:
        """
        A lease was made: make sure expiry wakes the waiters in time.
        """
        expiry = self.queue.next_expiry()
        if expiry is None or (self._expiry_call is not None and self._expiry_call.active()):
            return
        self._expiry_call = self.clock.callLater(max(0, expiry - self.clock.seconds()), self._expire)

    def _expire(self) -> None:
        self._expiry_call = None
        self.queue.requeue_expired()
        self.leased()



def remove_photo(photos: Path, relative: str) -> None:
    path = inside(photos, relative)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    # Remove the emptied patient folders, never the photos folder itself.
    folder = path.parent
    while folder != photos:
        try:
            folder.rmdir()
        except OSError:
            break
        folder = folder.parent


class ReadResource(Resource):
    """
    C{HEAD|GET /read/<id>} and C{DELETE /read/<id>/<receipt>}.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, state):
        super().__init__()
        self.state = state

    def render(self, request):
        request.setHeader(RELAY_FEATURES, RELAY_FEATURES_VALUE)
        relay = self.state.relay
        if not self.state.config.allowPhotosLeaving or relay is None:
            return answer_now(request, Answer(400, NOT_READABLE))
        if request.method not in (b"GET", b"HEAD", b"DELETE"):
            return answer_now(request, Answer(405, b"Use GET, HEAD or DELETE"))
        return render_async(request, self._read, relay)

    async def _read(self, request, relay: Relay):
        path = [p for p in request.postpath if p]
        if not path or not PAIRED_ID.fullmatch(path[0].decode("latin-1")) or len(path) > 2:
            raise Rejected("Expected /read/<id>: a paired id is 16 to 20 letters and digits")
        paired_id = path[0].decode()
        if request.method == b"DELETE":
            if len(path) != 2:
                raise Rejected("Expected DELETE /read/<id>/<receipt>")
            return await self._confirm(relay, paired_id, path[1].decode("ascii", "replace"))
        callback = _query(request, b"callback")
        if callback is not None and not _CALLBACK.fullmatch(callback):
            raise Rejected("callback must be a plain JavaScript identifier")
        wait = _wait_seconds(_query(request, b"wait"))
        photo = relay.queue.peek(paired_id)
        if photo is None and wait and request.method == b"GET" and callback is None:
            await relay.wait(paired_id, wait)
            photo = relay.queue.peek(paired_id)
        if callback is not None:
            # A script tag cannot use a photo: JSONP only says what waits.
            text = photo.file_name if photo is not None else NOTHING.decode()
            body = f"{callback}({json.dumps(text)})".encode()
            return Answer(200, body, b"application/javascript")
        if photo is None:
            return Answer(200, NOTHING)
        headers = {b"file-name": photo.file_name.encode(), b"content-type": _mime(photo.relative)}
        if request.method == b"HEAD":
            return Answer(200, b"", headers[b"content-type"], {b"file-name": headers[b"file-name"]})
        if request.getHeader(ACK_HEADER) == b"1":
            photo = relay.queue.lease(paired_id)
            relay.leased()
            digest, content_digest = await self.state.in_thread(
                sha256_digests, inside(relay.store.photos, photo.relative))
            headers.update({RECEIPT_HEADER: photo.receipt.encode(), b"digest": digest,
                            b"content-digest": content_digest})
            await self._send_file(request, relay, photo, headers)
        else:
            photo = relay.queue.take(paired_id)
            try:
                await self._send_file(request, relay, photo, headers)
            except BaseException:
                relay.queue.give_back(photo)
                raise
            # In the same turn as the answer's end, so nobody can see the
            # photo after it was sent (an unlink and rmdir take microseconds).
            remove_photo(relay.store.photos, photo.relative)
        self.log.info("Relay: sent a photo for {fp} ({size} bytes{how})", fp=fingerprint(paired_id),
                      size=photo.size, how=", awaiting confirmation" if photo.receipt else "")
        return None

    async def _send_file(self, request, relay: Relay, photo, headers: dict) -> None:
        """
        Stream the photo; returns once it is all handed to the connection,
        raises if the reader went away first.
        """
        f = open(inside(relay.store.photos, photo.relative), "rb")
        request.setResponseCode(200)
        for name, value in headers.items():
            request.setHeader(name, value)
        request.setHeader(b"content-length", b"%d" % os.fstat(f.fileno()).st_size)
        finished = request.notifyFinish()
        NoRangeStaticProducer(request, f).start()  # closes f when done or stopped
        await finished

    async def _confirm(self, relay: Relay, paired_id: str, receipt: str):
        photo = relay.queue.confirm(paired_id, receipt)
        if photo is None:
            return Answer(404, b"Unknown receipt: the photo was already confirmed, or given out again")
        await self.state.in_thread(remove_photo, relay.store.photos, photo.relative)
        self.log.info("Relay: delivery confirmed for {fp} ({size} bytes)",
                      fp=fingerprint(paired_id), size=photo.size)
        return Answer(200, b"deleted")


def _query(request, name: bytes) -> Optional[str]:
    values = request.args.get(name)
    return values[0].decode("utf-8", "replace") if values else None


def _wait_seconds(value: Optional[str]) -> float:
    if value is None:
        return 0
    try:
        seconds = float(value)
    except ValueError:
        raise Rejected("wait must be a number of seconds") from None
    if not 0 <= seconds <= MAX_WAIT:
        raise Rejected(f"wait must be from 0 to {MAX_WAIT} seconds")
    return seconds


def _mime(relative: str) -> bytes:
    extension = "." + relative.rsplit(".", 1)[-1].lower() if "." in relative else ""
    return _MIME_BY_EXTENSION.get(extension, "application/octet-stream").encode()


# PC role


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


def make_agent(reactor: Any, pool: HTTPConnectionPool, web_proxy: str):
    """
    An agent that goes direct, or through the clinic's HTTP proxy.
    """
    return WebProxyAgent(reactor, pool, web_proxy) if web_proxy else Agent(reactor, pool=pool)


def proxy_authorization(web_proxy: str) -> Optional[bytes]:
    """
    The Basic C{Proxy-Authorization} value for C{http://user:pass@host:port}.
    """
    proxy = urlsplit(web_proxy)
    if proxy.username is None:
        return None
    credentials = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}".encode()
    return b"Basic " + base64.b64encode(credentials)


@implementer(IAgent)
class WebProxyAgent:
    """
    Through the clinic's HTTP proxy: http:// requests are proxied as usual
    (credentials in each request), https:// ones go through a CONNECT tunnel
    (credentials to the proxy only, never inside the tunnel to the relay).
    """

    def __init__(self, reactor: Any, pool: HTTPConnectionPool, web_proxy: str):
        proxy = urlsplit(web_proxy)
        host, port = proxy.hostname, proxy.port or 80
        self.auth = proxy_authorization(web_proxy)
        self.plain = ProxyAgent(HostnameEndpoint(reactor, host, port), reactor, pool=pool)
        self.tunnelled = Agent.usingEndpointFactory(
            reactor, TunnellingEndpointFactory(reactor, host, port, self.auth), pool=pool)

    def request(self, method, uri, headers=None, bodyProducer=None):
        if uri.startswith(b"https://"):
            return self.tunnelled.request(method, uri, headers, bodyProducer)
        headers = headers.copy() if headers is not None else Headers()
        if self.auth:
            headers.setRawHeaders(b"proxy-authorization", [self.auth])
        return self.plain.request(method, uri, headers, bodyProducer)


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
        self._read_url = ""
        self._web_proxy = ""
        self._generation = 0

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
                self._note_outage(e)
                delay = backoff_delay(failures, self.backoff_start, self.backoff_max)
                await deferLater(self.clock, delay * random.uniform(0.5, 1.0))
                continue
            failures = 0
            if self._outage is not None:
                self.log.info("The relay can be reached again")
                self._outage = None
            if not got and not self._supports_ack:
                await deferLater(self.clock, self.legacy_interval)

    def _note_outage(self, error: Exception) -> None:
        reason = str(error) or error.__class__.__name__
        if self._outage is None:
            self.log.warn("Cannot get photos from the relay: {reason}. Retrying with backoff.",
                          reason=reason)
        self._outage = reason
        self._supports_ack = None  # ask again once it is back

    def _client(self, config) -> HTTPClient:
        return HTTPClient(make_agent(self.reactor, self._pool, config.webProxy))

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
        stored = await self.state.in_thread(self.state.store.store, temp, fd, parts)
        if self.state.backups is not None:
            self.state.backups.note(stored.backup_failures, succeeded=self.state.store.backup_to)
        if not stored.duplicate:
            self.state.stats.photos_received += 1
            self.state.photo_stored(stored.relative)
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
