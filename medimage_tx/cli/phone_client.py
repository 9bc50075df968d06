"""
A client that acts like the phone app: finds servers on the LAN (UDP scan
and mDNS) and sends files with the app's naming, to the paired PC when it is
on the LAN, else through the relay.  Used by `medimage-tx
discover|send`; makes LAN discovery testable by hand and gives desktop
software a sender.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.web.client import FileBodyProducer

from ..identity import fingerprint, proof
from ..lan.rules import SERVICE_TYPE, current_interfaces, make_probe, parse_reply


@dataclass
class Found:
    name: str
    url: str
    fp: Optional[str]
    how: set[str] = field(default_factory=set)
    proof: Optional[str] = None


class _ScanCollector(DatagramProtocol):
    def __init__(self):
        self.replies: list[tuple[dict, str]] = []

    def datagramReceived(self, data: bytes, address) -> None:
        reply = parse_reply(data)
        if reply is not None:
            self.replies.append((reply, address[0]))


async def udp_scan(reactor, port: int, timeout: float, nonce: str) -> list[Found]:
    """
    Broadcast a probe on every usable interface (and to 255.255.255.255)
    and collect replies for C{timeout} seconds.
    """
    collector = _ScanCollector()
    listening = reactor.listenUDP(0, collector)
    listening.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    try:
        probe = make_probe(nonce)
        targets = {i.broadcast for i in current_interfaces()} | {"255.255.255.255"}
        for target in sorted(targets):
            try:
                listening.write(probe, (target, port))
            except OSError:
                pass
        await deferLater(reactor, timeout)
    finally:
        await listening.stopListening()
    found: dict[str, Found] = {}
    for reply, _ in collector.replies:
        entry = found.setdefault(reply["url"], Found(str(reply.get("name", "")), reply["url"], reply.get("fp")))
        entry.how.add("udp")
        entry.proof = reply.get("proof")
    return list(found.values())


def mdns_browse(timeout: float) -> list[Found]:
    """
    Browse C{_medimage._tcp} for C{timeout} seconds (blocking: run in a thread).
    """
    from zeroconf import IPVersion, ServiceBrowser, Zeroconf

    addresses = [i.address for i in current_interfaces()]
    if not addresses:
        return []
    zeroconf = Zeroconf(interfaces=addresses, ip_version=IPVersion.V4Only)
    names: set[str] = set()
    try:
        ServiceBrowser(zeroconf, SERVICE_TYPE,
                       handlers=[lambda zeroconf, service_type, name, state_change: names.add(name)])
        time.sleep(timeout)  # browsing is listening for this long; this runs in its own thread
        found = []
        for name in sorted(names):
            info = zeroconf.get_service_info(SERVICE_TYPE, name, timeout=1000)
            if info is None or not info.parsed_addresses():
                continue
            properties = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
            scheme = "https" if properties.get("tls") == "1" else "http"
            for address in info.parsed_addresses():
                found.append(Found(name[: -len(SERVICE_TYPE) - 1], f"{scheme}://{address}:{info.port}",
                                   properties.get("fp") or None, {"mdns"}))
        return found
    finally:
        zeroconf.close()


async def discover(reactor, timeout: float = 3.0, port: int = 5566, nonce: str = "") -> list[Found]:
    """
    Every server found by UDP scan and by mDNS, merged by URL.
    """
    nonce = nonce or secrets.token_hex(16)
    browsing = deferToThread(mdns_browse, timeout)
    scanned = await udp_scan(reactor, port, timeout, nonce)
    try:
        browsed = await browsing
    except Exception:
        browsed = []
    merged: dict[str, Found] = {f.url: f for f in scanned}
    for entry in browsed:
        if entry.url in merged:
            merged[entry.url].how |= entry.how
        else:
            merged[entry.url] = entry
    return sorted(merged.values(), key=lambda f: f.url)


def matching_server(found: list[Found], paired_id: str, nonce: str) -> Optional[Found]:
    """
    The server that proves it holds C{paired_id}: its C{fp} matches and its
    UDP C{proof} is the HMAC of our nonce (C{fp} alone can be copied).
    """
    for entry in found:
        if entry.fp == fingerprint(paired_id) and entry.proof == proof(paired_id, nonce):
            return entry
    return None


def app_file_name(patient_id: str, path: Path, when: Optional[time.struct_time] = None,
                  paired_id: str = "") -> str:
    """
    The name the MedImage app gives a photo: C{#moles John123} taken now is
    C{#moles-John123-27-Nov-2026-10-11-12.jpg}, prefixed C{#<id>-} when sent
    to the paired PC or relay.
    """
    stamp = time.strftime("%d-%b-%Y-%H-%M-%S", when or time.localtime())
    words = "-".join(patient_id.split())
    extension = path.suffix.lower() or ".jpg"
    name = f"{words}-{stamp}{extension}" if words else f"{stamp}{extension}"
    return f"#{paired_id}-{name}" if paired_id else name


class _MultipartFile(io.RawIOBase):
    """
    The multipart body for one file, read from disk as it is sent, with a
    progress callback; seekable so that FileBodyProducer knows its length.
    """

    def __init__(self, path: Path, filename: str, progress: Callable[[int, int], None]):
        boundary = "----medimage" + secrets.token_hex(12)
        self.content_type = f"multipart/form-data; boundary={boundary}".encode()
        self._head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="title"\r\n\r\nphoto\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file1"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        self._tail = f"\r\n--{boundary}--\r\n".encode()
        self._file = open(path, "rb")
        self._size = os.fstat(self._file.fileno()).st_size
        self._length = len(self._head) + self._size + len(self._tail)
        self._position = 0
        self._progress = progress

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = 0) -> int:
        self._position = {0: offset, 1: self._position + offset, 2: self._length + offset}[whence]
        return self._position

    def read(self, size: int = -1) -> bytes:
        size = self._length - self._position if size < 0 else size
        out = bytearray()
        while size > 0 and self._position < self._length:
            start = self._position
            if start < len(self._head):
                piece = self._head[start:start + size]
            elif start < len(self._head) + self._size:
                self._file.seek(start - len(self._head))
                piece = self._file.read(min(size, len(self._head) + self._size - start))
            else:
                offset = start - len(self._head) - self._size
                piece = self._tail[offset:offset + size]
            out += piece
            self._position += len(piece)
            size -= len(piece)
        self._progress(self._position, self._length)
        return bytes(out)

    def close(self) -> None:
        self._file.close()
        super().close()


def progress_bar(stream=sys.stderr) -> Callable[[int, int], None]:
    def show(done: int, total: int) -> None:
        if total < 1024 * 1024:
            return
        filled = int(30 * done / total)
        stream.write(f"\r[{'#' * filled}{' ' * (30 - filled)}] {done * 100 // total:3d}% "
                     f"{done / 1e6:.1f}/{total / 1e6:.1f} MB")
        if done >= total:
            stream.write("\n")
        stream.flush()
    return show


class SendFailed(Exception):
    pass


def should_retry(code: int) -> bool:
    """
    Whether an answer means "not stored, send it again later": any 2xx but
    C{200} (C{206} is how servers tell legacy Android apps to retry), C{429}
    and every 5xx (C{507} disk full, C{500}, and C{503} from older servers).
    """
    return (200 < code < 300) or code == 429 or code >= 500


async def send_file(reactor, client, server_url: str, path: Path, file_name: str,
                    attempts: int = 6, progress: Optional[Callable[[int, int], None]] = None) -> str:
    """
    Upload as the app does; retry with backoff (or after C{Retry-After})
    on every "not stored, try later" answer (L{should_retry}) and on network
    errors.  Returns the server's answer; raises L{SendFailed} on a refusal
    (C{400}) or when all attempts failed.
    """
    delay = 1.0
    for attempt in range(1, attempts + 1):
        body = _MultipartFile(path, file_name, progress or (lambda done, total: None))
        try:
            response = await client.post(
                server_url.rstrip("/") + "/api/photo",
                data=FileBodyProducer(body, readSize=256 * 1024),
                headers={b"Content-Type": [body.content_type]},
            )
            answer = (await response.content()).decode("utf-8", "replace").strip()
        except Exception as e:
            if attempt == attempts:
                raise SendFailed(f"{server_url}: {e}") from None
            answer, code, retry_after = str(e), None, None
        else:
            code = response.code
            if code == 200:
                return answer
            if not should_retry(code):
                raise SendFailed(f"{server_url} refused {file_name}: {code} "
                                 f"{response.phrase.decode('latin-1')}: {answer}")
            retry_after = response.headers.getRawHeaders(b"retry-after", [b""])[0]
        finally:
            body.close()
        wait = delay
        if retry_after and retry_after.isdigit():
            wait = min(30.0, float(retry_after))
        if attempt == attempts:
            raise SendFailed(f"{server_url}: still unavailable after {attempts} tries: {answer}")
        await deferLater(reactor, wait)
        delay = min(delay * 2, 30.0)
    raise SendFailed(server_url)


def read_pairing(path: Path) -> tuple[str, str]:
    """
    The paired id and the relay address from a pairing file: a PC's
    config.json (C{globalId}, C{readProxy}) or C{{"id": ..., "relay": ...}}.
    """
    data: Any = json.loads(path.read_text())
    paired_id = data.get("globalId") or data.get("id") or ""
    relay = data.get("relay") or (data.get("readProxy", "").split("/read/")[0])
    if not paired_id:
        raise ValueError(f"{path}: no paired id (globalId or id)")
    return paired_id, relay
