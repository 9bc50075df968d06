"""
config.json: read the original MedImage file as it is, validate it once into
a L{Config}, and write it back atomically with unknown keys kept.

Plain Python, no reactor: everything else reads attributes of L{Config}.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from .outbound.ca_file import load_ca_certificates

MIB = 1024 * 1024

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

DEFAULT_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, HEAD, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": (
        "Origin, X-Requested-With, Content-Type, Accept, X-MedImage-Ack"
    ),
    "Access-Control-Expose-Headers": (
        "file-name, X-MedImage-Receipt, X-MedImage-Relay, Digest, Content-Digest"
    ),
}

# Letters, digits and '#._-' (the body of a regular-expression character
# class, as in the original MedImage server's config).
DEFAULT_ALLOWED_CHARS = "a-zA-Z0-9#._-"

JPEG_TYPE = {"extension": ".jpg", "mime": "image/jpeg"}

#: With no allowedTypes key: the original server's built-in list (bin/server.js).
ORIGINAL_DEFAULT_TYPES = [
    dict(JPEG_TYPE),
    {"extension": ".pdf", "mime": "application/pdf"},
    {"extension": ".mp4", "mime": "video/mp4"},
    {"extension": ".mp3", "mime": "audio/mpeg"},
    {"extension": ".m4v", "mime": "video/mp4"},
    {"extension": ".m4a", "mime": "audio/m4a"},
    {"extension": ".csv", "mime": "text/csv"},
    {"extension": ".json", "mime": "application/json"},
]

#: What a fresh install allows: the original's shipped config files
#: (config-original/*ORIGINALconfig.json) add HEIC/HEIF, which iPhones send.
SHIPPED_DEFAULT_TYPES = ORIGINAL_DEFAULT_TYPES + [
    {"extension": ".heic", "mime": "image/heic"},
    {"extension": ".heif", "mime": "image/heif"},
]

#: The values a fresh install starts with.  The original's keys first, then ours.
DEFAULTS: dict[str, Any] = {
    "listenPort": 5566,
    "backupTo": [],
    "keepMaster": True,
    "readProxy": "",
    "globalId": "",
    "transfer": 0,
    "allowPhotosLeaving": False,
    "allowGettingRemotePhotos": True,
    "webProxy": "",
    "httpsKey": "",
    "httpsCert": "",
    "lockDown": False,
    "basicAuthent": "changeme",
    "allowedTypes": [dict(t) for t in SHIPPED_DEFAULT_TYPES],
    "allowedChars": DEFAULT_ALLOWED_CHARS,
    "maxUploadSize": 16 * MIB,
    "headers": dict(DEFAULT_HEADERS),
    "onStartBackupDriveDetect": False,
    "countryCode": "",
    "proxy": "",
    "style": "",
    # medimage_tx extensions (PROTOCOL.md part B)
    "serverName": "",
    "lanMode": True,
    "discoveryPort": 5566,
    "discoveryInterfaces": [],
    "relayQuotaBytes": 1024 * MIB,
    "relayTotalBytes": 20 * 1024 * MIB,
    "relayUnknownBytes": 1024 * MIB,
    "relayMinFreeBytes": 1024 * MIB,
    "relayExpiryDays": 7,
    # A PC keeps this much free on the disk of its data folder: below it,
    # phones are answered "try later" and the relay is not read (finding
    # 19.2: a hostile relay filled a PC's disk at 150 MB/s).
    "minFreeBytes": 1024 * MIB,
    # The held folder (files from the relay this PC will not file) holds at
    # most this much; then the relay is not read until the clinic empties it.
    "heldMaxFiles": 1000,
    "heldMaxBytes": 1024 * MIB,
    "httpsPort": None,
    "fileMode": None,
    "relayCA": "",
    "relayStore": "",
    "proxyProtocol": False,
    "proxyProtocolFrom": ["127.0.0.0/8", "::1"],
    # Requests answered per client address (web/request_budget.py): a rate
    # per second and a burst at once; more wait their turn.
    "requestRatePerAddress": 20,
    "requestBurstPerAddress": 100,
}


class ConfigError(Exception):
    """
    config.json cannot be used.  C{str(error)} is one line naming the file,
    the key and what is wrong.
    """


@dataclass(frozen=True)
class AllowedType:
    extension: str  # lower case, with the leading dot
    mime: str  # lower case


@dataclass(frozen=True)
class Config:
    """
    A validated config.json.  C{raw} is the whole file as read, unknown keys
    included, so that saving never drops what an older or newer server wrote.
    """

    path: Path
    raw: dict[str, Any]
    listenPort: int
    backupTo: tuple[str, ...]
    keepMaster: bool
    readProxy: str
    globalId: str
    transfer: int
    allowPhotosLeaving: bool
    allowGettingRemotePhotos: bool
    webProxy: str
    httpsKey: str
    httpsCert: str
    lockDown: bool
    allowedTypes: tuple[AllowedType, ...]
    allowedChars: str
    maxUploadSize: int
    headers: dict[str, str] = field(hash=False)
    onStartBackupDriveDetect: bool
    serverName: str
    lanMode: bool
    discoveryPort: int
    discoveryInterfaces: tuple[str, ...]
    relayQuotaBytes: int
    relayTotalBytes: int
    relayUnknownBytes: int  # the pool for ids no clinic PC is known to read
    relayMinFreeBytes: int
    relayExpiryDays: float
    minFreeBytes: int
    heldMaxFiles: int
    heldMaxBytes: int
    httpsPort: Optional[int]
    fileMode: Optional[int]
    relayCA: str
    relayStore: str  # "" (this disk) or postgresql://... shared by relay nodes
    proxyProtocol: bool  # behind a balancer that sends the PROXY protocol
    proxyProtocolFrom: tuple[Network, ...]  # the balancers whose PROXY header is believed
    requestRatePerAddress: float
    requestBurstPerAddress: int

    @property
    def role(self) -> str:
        return "relay" if self.allowPhotosLeaving else "pc"

    def updated(self, **changes: Any) -> "Config":
        """
        A new config with C{changes} (keys as in config.json) applied and
        validated; nothing is written.
        """
        raw = dict(self.raw)
        raw.update(changes)
        return parse_config(raw, self.path)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _port(value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)  # the original hands listenPort to Node as it is: "5566" works there
    if not _is_int(value) or not 0 <= value <= 65535:
        raise ValueError(f"expected a port number from 0 to 65535, got {value!r}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _count(value: Any) -> int:
    if not _is_int(value) or value < 0:
        raise ValueError(f"expected a whole number of 0 or more, got {value!r}")
    return value


def _positive(value: Any) -> int:
    if not _is_int(value) or value < 1:
        raise ValueError(f"expected a whole number of 1 or more, got {value!r}")
    return value


def _rate(value: Any) -> float:
    if not (_is_int(value) or isinstance(value, float)) or not 0 < value <= 1_000_000:
        raise ValueError(f"expected requests a second above 0 (fractions allowed), got {value!r}")
    return value


def _burst(value: Any) -> int:
    if not _is_int(value) or not 1 <= value <= 1_000_000:
        raise ValueError(f"expected a whole number of requests of 1 or more, got {value!r}")
    return value


def _days(value: Any) -> float:
    if not (_is_int(value) or isinstance(value, float)) or not 0 < value <= 3650:
        raise ValueError(f"expected a number of days above 0 (fractions allowed), got {value!r}")
    return float(value)


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of strings, got {value!r}")
    return tuple(value)


def _networks(value: Any) -> tuple[Network, ...]:
    networks = []
    for text in _strings(value):
        try:
            networks.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise ValueError(f"expected addresses or networks (10.0.0.5, 10.0.0.0/24), got {text!r}") from None
    return tuple(networks)


def _folders(value: Any) -> tuple[str, ...]:
    # An empty entry means "no folder" to the original (it skips copying
    # when the first is ""); never a folder here either.
    return tuple(f for f in _strings(value) if f.strip())


def _global_id(value: Any) -> str:
    text = _string(value)
    # Letters and digits from the pairing service; early original servers
    # made their own id with uuid.v4(), hyphens included, and still read it.
    if text and not re.fullmatch(r"[A-Za-z0-9-]{1,64}", text):
        raise ValueError("expected letters, digits and '-' only")
    return text


def _allowed_types(value: Any) -> tuple[AllowedType, ...]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of {{extension, mime}} objects, got {value!r}")
    types = []
    for entry in value:
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("extension"), str)
            and isinstance(entry.get("mime"), str)
            and re.fullmatch(r"\.?[A-Za-z0-9]{1,10}", entry["extension"])
        ):
            raise ValueError(
                'each entry needs "extension" (like ".pdf") and "mime" '
                f'(like "application/pdf"), got {entry!r}'
            )
        extension = entry["extension"].lower()
        if not extension.startswith("."):
            extension = "." + extension
        types.append(AllowedType(extension, entry["mime"].strip().lower()))
    return tuple(types)


def new_allowed_type(extension: str, mime: str) -> dict[str, str]:
    """
    One more C{allowedTypes} entry as a person types it (".PNG" or "png",
    "image/png"), in the file's form; L{ValueError} with one line if unusable.
    """
    extension, mime = extension.strip().lower(), mime.strip().lower()
    if not re.fullmatch(r"\.?[a-z0-9]{1,10}", extension):
        raise ValueError(f"the extension must be 1 to 10 letters or digits, like .png (got {extension!r})")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*/[a-z0-9][a-z0-9.+-]*", mime):
        raise ValueError(f"the MIME type must look like image/png (got {mime!r})")
    return {"extension": extension if extension.startswith(".") else "." + extension, "mime": mime}


def _allowed_chars(value: Any) -> str:
    text = _string(value)
    if not text:
        return DEFAULT_ALLOWED_CHARS  # the original: an empty value is not set
    try:
        re.compile(f"[{text}]")
    except re.error as e:
        raise ValueError(f"is not a valid character class: {e}") from None
    return text


def _headers(value: Any) -> dict[str, str]:
    if isinstance(value, list):
        value = _header_list(value)
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError(f"expected an object of header names to strings, got {value!r}")
    for k, v in value.items():
        if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", k) or "\n" in v or "\r" in v:
            raise ValueError(f"header {k!r} is not a valid HTTP header")
    return dict(value)


def _header_list(entries: list) -> dict[str, str]:
    """
    The original's list form, C{[{"header": name, "value": text}, ...]}, as
    a mapping (the file keeps its own form: only C{raw} is ever saved).
    """
    headers = {}
    for entry in entries:
        if not (isinstance(entry, dict) and isinstance(entry.get("header"), str)
                and isinstance(entry.get("value"), str)):
            raise ValueError(f'each entry needs "header" and "value" strings, got {entry!r}')
        headers[entry["header"]] = entry["value"]
    return headers


def check_readable(configured: str, base: Path) -> None:
    """
    Raise L{ValueError} unless the file named in config (relative paths are
    relative to config.json's folder) can be opened for reading.
    """
    try:
        with open(resolve_path(configured, base), "rb"):
            pass
    except OSError as e:
        raise ValueError(f"cannot read {configured!r}: {e.strerror}") from None


def resolve_path(configured: str, base: Path) -> Path:
    """
    A path from config.json in this OS's form, relative to C{base}.
    """
    return base / native_path(configured)


def _web_proxy(value: Any) -> str:
    text = _string(value)
    if text and not re.fullmatch(r"https?://[^\s/]+/?", text):
        raise ValueError(
            f"expected http://user:password@host:port, got {redact_url(text)!r}"
        )
    return text


def _url(value: Any) -> str:
    text = _string(value)
    if text and not re.fullmatch(r"https?://\S+", text):
        raise ValueError(f"expected an http:// or https:// address, got {text!r}")
    return text


def _file_mode(value: Any) -> Optional[int]:
    # Octal as people write it for chmod ("0644"); JSON has no octal numbers.
    text = _string(value).strip()
    if not re.fullmatch(r"0?[0-7]{3}", text):
        raise ValueError(f'expected an octal mode like "0644", or null for the umask\'s, got {value!r}')
    mode = int(text, 8)
    if not mode & 0o400:
        raise ValueError(f"{text} would leave this server unable to read its own photos")
    return mode
def check_relay_store(value: Any) -> str:
    text = _string(value)
    if text and not re.fullmatch(r"postgres(ql)?://\S+", text):
        raise ValueError("expected empty (this disk) or a postgresql:// address")
    return text


_VALIDATORS: dict[str, Callable[[Any], Any]] = {
    "listenPort": _port,
    "backupTo": _folders,
    "keepMaster": _bool,
    "readProxy": _url,
    "globalId": _global_id,
    "transfer": _count,
    "allowPhotosLeaving": _bool,
    "allowGettingRemotePhotos": _bool,
    "webProxy": _web_proxy,
    "httpsKey": _string,
    "httpsCert": _string,
    "lockDown": _bool,
    "allowedTypes": _allowed_types,
    "allowedChars": _allowed_chars,
    "maxUploadSize": _positive,
    "headers": _headers,
    "onStartBackupDriveDetect": _bool,
    "serverName": _string,
    "lanMode": _bool,
    "discoveryPort": _port,
    "discoveryInterfaces": _strings,
    "relayQuotaBytes": _positive,
    "relayTotalBytes": _positive,
    "relayUnknownBytes": _count,
    "relayMinFreeBytes": _count,
    "relayExpiryDays": _days,
    "minFreeBytes": _count,
    "heldMaxFiles": _positive,
    "heldMaxBytes": _positive,
    "httpsPort": lambda value: None if value is None else _port(value),
    "fileMode": lambda value: None if value is None else _file_mode(value),
    "relayCA": _string,
    "relayStore": check_relay_store,
    "proxyProtocol": _bool,
    "proxyProtocolFrom": _networks,
    "requestRatePerAddress": _rate,
    "requestBurstPerAddress": _burst,
}


def parse_config(raw: Any, path: Path) -> Config:
    """
    Validate a decoded config.json.  Missing keys, and keys set to C{null}
    (the original's "not set", as in its shipped files), take their
    defaults; the first bad key raises L{ConfigError}.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level")
    values = {}
    for key, validate in _VALIDATORS.items():
        value = raw.get(key)
        if value is None:
            value = DEFAULTS[key]
        try:
            values[key] = validate(value)
        except ValueError as e:
            raise ConfigError(f"{path}: key {key!r}: {e}") from None
    if bool(values["httpsKey"]) != bool(values["httpsCert"]):
        missing = "httpsCert" if values["httpsKey"] else "httpsKey"
        raise ConfigError(f"{path}: key {missing!r}: HTTPS needs both httpsKey and httpsCert")
    if values["relayCA"]:
        try:
            load_ca_certificates(resolve_path(values["relayCA"], path.parent))
        except ValueError as e:
            raise ConfigError(f"{path}: key 'relayCA': {e}") from None
    for key in ("httpsKey", "httpsCert"):
        if values[key]:
            try:
                check_readable(values[key], path.parent)
            except ValueError as e:
                raise ConfigError(f"{path}: key {key!r}: {e}") from None
    if values["proxyProtocol"] and values["httpsKey"]:
        raise ConfigError(f"{path}: key 'proxyProtocol': behind a PROXY-protocol balancer, TLS ends at "
                          "the balancer: remove httpsKey and httpsCert here")
    if not values["serverName"]:
        values["serverName"] = socket.gethostname() or "MedImage"
    return Config(path=path, raw=dict(raw), **values)


def load_config(path: Path) -> Config:
    """
    Read and validate config.json at C{path}.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    return parse_config(raw, path)


def load_or_create_config(path: Path) -> tuple[Config, bool]:
    """
    Read config.json, or write the defaults there first if there is no file.
    Returns the config and whether it was just created.
    """
    if path.exists():
        return load_config(path), False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(path, DEFAULTS)
    except OSError as e:
        raise ConfigError(f"{path}: cannot create the default config: {e.strerror}")
    return load_config(path), True


def save_config(config: Config, **changes: Any) -> Config:
    """
    Apply C{changes}, validate, and write config.json atomically.  The
    changes go on top of the file as it is on disk now, so an edit made
    meanwhile (by hand, or by C{medimage-tx pair}) is kept; keys
    this server does not know are written back unchanged.

    @raise ConfigError: the file on disk cannot be used (a typo made by
        hand): it is left as it is, never rewritten from memory, which
        would lose the hand edits.  A missing file is written again.
    """
    base = config
    if config.path.exists():
        base = load_config(config.path)
    new = base.updated(**changes)
    write_json_atomically(new.path, new.raw)
    return new


def config_file_problem(path: Path) -> str:
    """
    Why config.json at C{path} cannot be used now (a typo made by hand
    while the server runs on the last good one), or C{""}.  A missing
    file is no problem: the next save writes it again, losing nothing.
    """
    if not path.exists():
        return ""
    try:
        load_config(path)
    except ConfigError as e:
        return str(e)
    return ""


#: Keys a config.json may hold that are not settings of this server: the
#: original's shipped files explain themselves in "purpose"; pairing
#: writes "customPairing" only when it is not AtomJump's.
OTHER_KNOWN_KEYS = frozenset({"purpose", "customPairing"})


def likely_typos(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """
    Keys of C{raw} this server does not know that look like one it does
    (another case, a letter off): (the key, the known key).  Such a key
    is kept but does nothing.
    Other unknown keys (an add-on's, a newer server's) are not typos.
    """
    known = set(DEFAULTS) | OTHER_KNOWN_KEYS
    by_lower = {key.lower(): key for key in known}
    found = []
    for key in raw:
        if key in known or not isinstance(key, str):
            continue
        meant = by_lower.get(key.lower())
        if meant is None:
            close = difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.85)
            meant = by_lower[close[0]] if close else None
        if meant is not None:
            found.append((key, meant))
    return found


def config_warnings(config: Config) -> list[str]:
    """
    One line each for what in config.json is likely a mistake though the
    file can be used: a key that looks like a known one, a backupTo folder
    that does not exist.  Looks at the disk: call it in a thread while
    the server runs.
    """
    lines = [f'"{key}" in {config.path} is not a setting and does nothing: did you mean "{meant}"? '
             "(keys are case-sensitive)" for key, meant in likely_typos(config.raw)]
    for folder in () if config.role == "relay" else config.backupTo:  # a relay files nothing
        path = resolve_path(folder, config.path.parent)
        if not path.is_dir():
            lines.append(f"The backupTo folder {path} does not exist (a typo, or a drive or share not "
                         "connected?): photos wait in this server's photos folder until it does")
    return lines


def config_stamp(path: Path) -> Optional[tuple[int, int]]:
    """
    What changes when config.json is rewritten: its mtime and size.
    """
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def write_json_atomically(path: Path, data: Any) -> None:
    """
    Write C{data} as JSON (see L{write_bytes_atomically}).
    """
    write_bytes_atomically(path, (json.dumps(data, indent=4) + "\n").encode("utf-8"))


def write_bytes_atomically(path: Path, data: bytes) -> None:
    """
    Write C{data} so that a crash leaves either the old file or the new
    one, never half of one: temp file, fsync, rename, fsync folder.
    The file keeps its owner: root running C{medimage-tx pair --config
    /var/lib/medimage/config.json} must not lock the service user out.
    """
    try:
        owner: Optional[tuple[int, int]] = (path.stat().st_uid, path.stat().st_gid)
    except OSError:
        owner = None
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if owner is not None and os.geteuid() == 0:
            os.fchown(fd, *owner)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """
    Make a rename or new file in C{folder} durable (a no-op where the OS
    cannot open folders, like Windows).
    """
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def native_path(configured: str, os_name: str = os.name) -> str:
    """
    Turn a path as written in config.json (forward slashes on every OS,
    C{C:/x}, C{//server/share} or C{\\\\server\\share}) into this OS's form.
    """
    text = configured.strip()
    if os_name == "nt":
        text = text.replace("/", "\\")
        if re.fullmatch(r"[A-Za-z]:", text):
            text += "\\"
        return text
    text = text.replace("\\", "/")
    if text.startswith("//"):
        # A network path; on POSIX it only works where the share is mounted
        # at that path, but keep it recognisable in errors.
        return "//" + text.lstrip("/")
    return text


def redact_url(url: str) -> str:
    """
    C{url} with any password replaced, for logs and error messages.
    """
    return re.sub(r"(://[^:/@\s]*):[^@\s]*@", r"\1:***@", url)
