"""
A corpus of hostile inputs against a real PC server and a real relay:
file names, ids, paths, multipart bodies, headers, JSONP callbacks and
pairing codes.  Each is refused with a 4xx and a reason (or, for a file name,
stored under a safe name inside the photos folder); nothing is written
outside the servers' folders; both servers stay up.
"""

from __future__ import annotations

import socket
from urllib.parse import quote
from pathlib import Path

import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread

from conftest import jpeg_bytes, multipart
from medimage_tx.config import parse_config
from medimage_tx.errors import Rejected, TryLater
from medimage_tx.intake import accepted_parts
from medimage_tx.store import PhotoStore
from medimage_tx.upload import MultipartReceiver

PAIRED_ID = "uPSE4UWHmJ8XqFUqvf"
PHOTO = jpeg_bytes(2000, seed=9)

HOSTILE_NAMES = [
    "../../../../etc/passwd.jpg", "..\\..\\windows\\system32\\x.jpg", "/etc/shadow.jpg", "C:\\boot.jpg",
    "C:/Windows/x.jpg", "\\\\server\\share\\x.jpg", "//server/share/x.jpg", "#..-#..-x.jpg",
    "#....-x.jpg", "#.-#.-.jpg", "#%2e%2e-x.jpg", "#%2F-x.jpg", "#..%2f..-x.jpg", "#\u2024\u2024-x.jpg",
    "#\uff0e\uff0e-x.jpg", "#\uff0f-x.jpg", "#\u2215etc-x.jpg", "#a\x00b-x.jpg", "x\x00.jpg",
    "#CON-x.jpg", "#NUL-x.jpg", "#com1-x.jpg", "#LPT9-aux.jpg", "PRN.jpg", "#folder.-x.jpg",
    "#folder -x.jpg", "#.hidden-x.jpg", ".htaccess.jpg", "x" * 300 + ".jpg", "#" + "y" * 300 + "-x.jpg",
    "#a-" * 60 + "x.jpg", "\u00e9" * 200 + ".jpg", "\U0001f600" * 80 + ".jpg", "", ".jpg", "-.jpg",
    "#-#-#-.jpg", "###-x.jpg", "x.jpg.exe", "x.exe.jpg", "x.JPG", "x.jpeg", "x", "#a:b-x.jpg",
    "#a*b-x?.jpg", "#a|b-x<>.jpg", "#a\"b-x.jpg", "x\r\nSet-Cookie: a=b.jpg", "x\n.jpg", "x\t.jpg",
    "#a/b-x.jpg", "#a\\b-x.jpg", "#~root-x.jpg", "#$HOME-x.jpg", "#`id`-x.jpg", "#;rm -rf-x.jpg",
    "#a&&b-x.jpg", "#\u202eexe.jpg-x.jpg", "#\u200b-x.jpg", "#" + PAIRED_ID + "-#" + PAIRED_ID + "-x.jpg",
]

HOSTILE_IDS = [
    "..", "%2e%2e", "..%2f..%2fetc", "%2Fetc%2Fpasswd", "a%00b", "a%2F..", "-", "a-b", "a.b", "a_b",
    "x" * 100, "%C0%AE%C0%AE", "\u00e9t\u00e9", "%E2%80%AE", "a%20b", "a%0Ab", "a%0D%0Ab", "*", "%",
    "a%", "%zz", "..%5C..%5C", "%5Cetc", "a;b", "a'b", "a\"b", "<script>", "a..b", "CON", "aux",
]

HOSTILE_CALLBACKS = [
    "alert(1)", "a;b", "a b", "a%0Ab", "1abc", "a-b", "a[0]", "a.b.c.d.e.f", "x" * 300, "<script>",
    "a()", "a=1", "a%2Bb", "a%22b", "a'b", "a,b", "a/b", "a\\b", "a%00", "\u00e9", "a.", ".a", "a..b",
    "%3Cimg%3E", "javascript:alert(1)", "a%09b", "a{}", "a+b", "a*b", "a&b",
]


def multipart_variants() -> list[tuple[str, bytes, bytes]]:
    good, content_type = multipart("#P-x.jpg", PHOTO)
    boundary = content_type.split(b"boundary=")[1]
    b = b"--" + boundary
    variants = [
        ("no boundary", good, b"multipart/form-data"),
        ("empty boundary", good, b"multipart/form-data; boundary="),
        ("wrong boundary", good, b"multipart/form-data; boundary=nope"),
        ("boundary too long", good, b"multipart/form-data; boundary=" + b"a" * 300),
        ("truncated", good[: len(good) // 2], content_type),
        ("no closing", good.replace(b + b"--", b""), content_type),
        ("only closing", b + b"--\r\n", content_type),
        ("empty body", b"", content_type),
        ("garbage", b"\x00\xff" * 500, content_type),
        ("no headers", b + b"\r\n\r\n" + PHOTO + b"\r\n" + b + b"--\r\n", content_type),
        ("no filename", b + b'\r\nContent-Disposition: form-data; name="file1"\r\n\r\n' + PHOTO + b"\r\n" + b + b"--\r\n", content_type),
        ("other field", multipart("#P-x.jpg", PHOTO, field="file2")[0], content_type),
        ("empty file", multipart("#P-x.jpg", b"")[0], content_type),
        ("text file", multipart("#P-x.jpg", b"hello world")[0], content_type),
        ("pdf not allowed", multipart("#P-x.jpg", b"%PDF-1.4 x")[0], content_type),
        ("png", multipart("#P-x.jpg", b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)[0], content_type),
        ("exe", multipart("#P-x.jpg", b"MZ\x90\x00" + b"\x00" * 100)[0], content_type),
        ("elf", multipart("#P-x.jpg", b"\x7fELF" + b"\x00" * 100)[0], content_type),
        ("html", multipart("#P-x.jpg", b"<html><script>alert(1)</script></html>")[0], content_type),
        ("svg", multipart("#P-x.jpg", b"<svg xmlns='http://www.w3.org/2000/svg'/>")[0], content_type),
        ("zip", multipart("#P-x.jpg", b"PK\x03\x04" + b"\x00" * 100)[0], content_type),
        ("huge part header", b + b"\r\nContent-Disposition: form-data; name=\"file1\"; filename=\"" + b"a" * 20000 + b".jpg\"\r\n\r\n" + PHOTO + b"\r\n" + b + b"--\r\n", content_type),
        ("many part headers", b + b"\r\n" + b"X-A: b\r\n" * 200 + b'Content-Disposition: form-data; name="file1"; filename="x.jpg"\r\n\r\n' + PHOTO + b"\r\n" + b + b"--\r\n", content_type),
        ("huge title", multipart("#P-x.jpg", PHOTO, title="t" * 100_000)[0], content_type),
        ("many fields", b"".join(b + b'\r\nContent-Disposition: form-data; name="f%d"\r\n\r\n' % i + b"v" * 100 + b"\r\n" for i in range(1000)) + b + b"--\r\n", content_type),
        ("bad header line", b + b"\r\nno colon here\r\n\r\n" + PHOTO + b"\r\n" + b + b"--\r\n", content_type),
        ("urlencoded", b"file1=abc", b"application/x-www-form-urlencoded"),
        ("json", b'{"file1": "x"}', b"application/json"),
        ("no content type", good, b""),
        ("text/plain", good, b"text/plain"),
        ("multipart/mixed", good, b"multipart/mixed; boundary=" + boundary),
        ("nested multipart", multipart("#P-x.jpg", good)[0], content_type),
        ("file in title field", multipart(None, PHOTO, field="title")[0], content_type),
        ("crlf only", b"\r\n" * 1000, content_type),
        ("boundary in data", b + b'\r\nContent-Disposition: form-data; name="file1"; filename="x.jpg"\r\n\r\n' + b"\xff\xd8\xff" + b + b"--\r\n", content_type),
        ("jpeg magic only", multipart("#P-x.jpg", b"\xff\xd8")[0], content_type),
        ("quoted boundary mismatch", good, b'multipart/form-data; boundary="x' + boundary + b'"'),
        ("null in disposition", b + b'\r\nContent-Disposition: form-data; name="file1\x00"; filename="x.jpg"\r\n\r\n' + PHOTO + b"\r\n" + b + b"--\r\n", content_type),
        ("star filename", b + b"\r\nContent-Disposition: form-data; name=\"file1\"; filename*=UTF-8''x.jpg\r\n\r\n" + PHOTO + b"\r\n" + b + b"--\r\n", content_type),
        ("over size", multipart("#P-x.jpg", b"\xff\xd8\xff" + b"\x00" * 300_000)[0], content_type),
    ]
    return variants


def raw_requests(port: int) -> list[tuple[str, bytes]]:
    host = f"Host: 127.0.0.1:{port}\r\n".encode()
    body, content_type = multipart("#P-x.jpg", PHOTO)
    ct = b"Content-Type: " + content_type + b"\r\n"
    return [
        ("many headers", b"GET / HTTP/1.1\r\n" + host + b"".join(b"X-%d: a\r\n" % i for i in range(200)) + b"\r\n"),
        ("huge header", b"GET / HTTP/1.1\r\n" + host + b"X-Big: " + b"a" * 20000 + b"\r\n\r\n"),
        ("huge url", b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\n" + host + b"\r\n"),
        ("negative length", b"POST /api/photo HTTP/1.1\r\n" + host + ct + b"Content-Length: -5\r\n\r\n"),
        ("text length", b"POST /api/photo HTTP/1.1\r\n" + host + ct + b"Content-Length: abc\r\n\r\n"),
        ("two lengths", b"POST /api/photo HTTP/1.1\r\n" + host + ct + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef"),
        ("bad chunked", b"POST /api/photo HTTP/1.1\r\n" + host + ct + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
        ("bad te", b"POST /api/photo HTTP/1.1\r\n" + host + ct + b"Transfer-Encoding: gzip\r\n\r\n"),
        ("te and length", b"POST /api/photo HTTP/1.1\r\n" + host + ct + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n"),
        ("header without colon", b"GET / HTTP/1.1\r\n" + host + b"NoColon\r\n\r\n"),
        ("nul in header", b"GET / HTTP/1.1\r\n" + host + b"X-A: a\x00b\r\n\r\n"),
        ("space before colon", b"GET / HTTP/1.1\r\n" + host + b"X-A : b\r\n\r\n"),
        ("bad version", b"GET / HTTP/9.9\r\n" + host + b"\r\n"),
        ("no version", b"GET /\r\n\r\n"),
        ("bad method", b"G\x00T / HTTP/1.1\r\n" + host + b"\r\n"),
        ("lowercase junk", b"hello world\r\n\r\n"),
        ("binary", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 100 + b"\r\n\r\n"),
        ("upload via GET", b"GET /api/photo HTTP/1.1\r\n" + host + b"\r\n"),
        ("put upload", b"PUT /api/photo HTTP/1.1\r\n" + host + ct + b"Content-Length: %d\r\n\r\n" % len(body) + body),
        ("big non-upload body", b"POST /load/ HTTP/1.1\r\n" + host + b"Content-Type: text/plain\r\nContent-Length: 200000\r\n\r\n" + b"a" * 200000),
        ("declared too large", b"POST /api/photo HTTP/1.1\r\n" + host + ct + b"Content-Length: 999999999999\r\n\r\n" + body),
        ("crlf in path", b"GET /%0d%0aSet-Cookie:%20a=b HTTP/1.1\r\n" + host + b"\r\n"),
        ("absolute uri elsewhere", b"GET http://example.invalid/ HTTP/1.1\r\n" + host + b"\r\n"),
        ("connect", b"CONNECT example.invalid:443 HTTP/1.1\r\n" + host + b"\r\n"),
        ("trace", b"TRACE / HTTP/1.1\r\n" + host + b"\r\n"),
        ("dotdot path", b"GET /../../etc/passwd HTTP/1.1\r\n" + host + b"\r\n"),
        ("encoded dotdot", b"GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\n" + host + b"\r\n"),
        ("check traversal", b"GET /check=..%2F..%2Fconfig.json HTTP/1.1\r\n" + host + b"\r\n"),
        ("expect weird", b"POST /api/photo HTTP/1.1\r\n" + host + ct + b"Expect: 999-nope\r\nContent-Length: 0\r\n\r\n"),
    ]


def exchange(port: int, data: bytes) -> tuple[int, bytes, bytes]:
    """
    Send raw bytes, read one answer: (status, reason phrase, body); status 0
    when the server closed the connection without an answer.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        try:
            conn.sendall(data)
        except OSError:
            pass
        answer = b""
        try:
            while b"\r\n\r\n" not in answer and (chunk := conn.recv(65536)):
                answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), None)
            while length is not None and len(body) < length and (chunk := conn.recv(65536)):
                body += chunk
        except OSError:
            head, body = answer, b""
    if not head.startswith(b"HTTP/1."):
        return 0, b"", b""
    status_line = head.split(b"\r\n", 1)[0].split(b" ", 2)
    return int(status_line[1]), status_line[2] if len(status_line) > 2 else b"", body


def request(path: str, port: int, method: str = "GET", body: bytes = b"", content_type: bytes = b"") -> bytes:
    headers = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n".encode()
    if content_type:
        headers += b"Content-Type: " + content_type + b"\r\n"
    if body or method == "POST":
        headers += b"Content-Length: %d\r\n" % len(body)
    return headers + b"\r\n" + body


def snapshot(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


@pytest_twisted.ensureDeferred
async def test_hostile_corpus_against_real_servers(start_server, tmp_path):
    pc = await start_server("pc", maxUploadSize=200_000)
    relay = await start_server("relay", clock=Clock(), allowPhotosLeaving=True,
                               allowGettingRemotePhotos=False, maxUploadSize=200_000)
    pc_port, relay_port = (int(s.url.rsplit(":", 1)[1]) for s in (pc, relay))
    before = snapshot(tmp_path)
    failures: list[str] = []
    tried = 0

    def expect(label: str, status: int, phrase: bytes, body: bytes, allowed: set, protocol: bool) -> None:
        nonlocal tried
        tried += 1
        if status not in allowed:
            failures.append(f"{label}: got {status} {body[:80]!r}")
        elif 400 <= status < 500 and not body.strip() and not (protocol and phrase.strip()):
            # HTTP-level garbage is refused by the HTTP layer with its reason
            # phrase; everything that reaches the application gets a body.
            failures.append(f"{label}: {status} without a reason")

    async def run(label, port, data, allowed, protocol=False):
        status, phrase, body = await deferToThread(exchange, port, data)
        expect(label, status, phrase, body, allowed, protocol)
        return status, body

    for name in HOSTILE_NAMES:  # sanitised and stored inside, or refused
        body, content_type = multipart(name, PHOTO)
        await run(f"name {name[:40]!r}", pc_port, request("/api/photo", pc_port, "POST", body, content_type), {200, 400})
        relay_body, content_type = multipart(f"#{PAIRED_ID}-{name}", PHOTO)
        await run(f"relay name {name[:40]!r}", relay_port,
                  request("/api/photo", relay_port, "POST", relay_body, content_type), {200, 400})
    for name in HOSTILE_NAMES[:20]:  # no valid paired id: always refused
        body, content_type = multipart(name, PHOTO)
        await run(f"relay unpaired {name[:40]!r}", relay_port,
                  request("/api/photo", relay_port, "POST", body, content_type), {400})
    for label, body, content_type in multipart_variants():
        await run(f"multipart {label}", pc_port, request("/api/photo", pc_port, "POST", body, content_type), {400})
    for hostile_id in HOSTILE_IDS:
        quoted = quote(hostile_id, safe="%")
        await run(f"read id {hostile_id[:30]!r}", relay_port, request(f"/read/{quoted}", relay_port), {400, 404})
        await run(f"delete id {hostile_id[:30]!r}", relay_port,
                  request(f"/read/{quoted}/receipt", relay_port, "DELETE"), {400, 404})
    for callback in HOSTILE_CALLBACKS:
        await run(f"callback {callback[:30]!r}", relay_port,
                  request(f"/read/{PAIRED_ID}?callback={quote(callback, safe='%')}", relay_port), {400})
    for label, data in raw_requests(pc_port):
        await run(f"raw {label}", pc_port, data, {0, 400, 404, 405, 413, 414, 431, 501, 505}, protocol=True)
    for code in ["", "A" * 1000, "%00", "'; DROP TABLE codes; --", "../../", "ABCD%0A", "\u00e9\u00e9"]:
        status, phrase, body = await deferToThread(
            exchange, relay_port, request(f"/med-genid.php?compare={quote(code, safe='%')}", relay_port))
        expect(f"compare {code[:20]!r}", status, phrase, body, {200, 400}, False)
        if status == 200 and body != b"nomatch":
            failures.append(f"compare {code!r} matched: {body!r}")
    for proxy_server in ["", "javascript:alert(1)", "http://a b", "ftp://x"]:
        await run(f"pair proxyServer {proxy_server!r}", relay_port,
                  request("/med-genid.php", relay_port, "POST", f"proxyServer={proxy_server}".encode(),
                          b"application/x-www-form-urlencoded"), {400})

    # Both servers are still up.
    for port in (pc_port, relay_port):
        status, _, _ = await deferToThread(exchange, port, request("/", port))
        assert status == 200
    assert not failures, "\n".join(failures)
    assert tried >= 200
    # Nothing outside the photos folders, nothing half-written anywhere.
    allowed_roots = [pc.photos, relay.photos, relay.data / "pairing.json"]
    for path in snapshot(tmp_path) - before:
        assert any(path == root or root in path.parents for root in allowed_roots), path
    for server in (pc, relay):
        assert list((server.data / "tmp").iterdir()) == []
    for path in snapshot(pc.photos):
        assert all(part and not part.startswith(".") and len(part.encode()) <= 255
                   for part in path.relative_to(pc.photos).parts), path
    print(f"hostile inputs tried: {tried}")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    filename=st.text(max_size=120),
    content=st.one_of(st.binary(max_size=600), st.builds(lambda b: b"\xff\xd8\xff" + b, st.binary(max_size=600))),
    field=st.sampled_from(["file1", "file2", "title", "fil\u00e91"]),
    chunk=st.integers(min_value=1, max_value=700),
    cut=st.integers(min_value=0, max_value=40),
)
def test_fuzz_multipart_and_name_pipeline(tmp_path_factory, filename, content, field, chunk, cut):
    folder = tmp_path_factory.mktemp("fuzz")
    store = PhotoStore(folder, [], keep_master=True)
    store.prepare()
    config = parse_config({"lanMode": False}, folder / "config.json")
    body, content_type = multipart(filename, content, field=field)
    body = body[: len(body) - cut] if cut else body
    boundary = content_type.split(b"boundary=")[1]
    receiver = MultipartReceiver(boundary, store.temp, 100_000, len(body))
    for i in range(0, len(body), chunk):
        receiver.write(body[i : i + chunk])
    try:
        received = receiver.finish()
        receiver.disown()
        try:
            parts = accepted_parts(received, config)
        except Rejected:
            import os

            os.close(received.fd)
            os.unlink(received.temp_path)
            raise
        stored = store.store(received.temp_path, received.fd, parts)
        path = store.photos / stored.relative
        assert store.photos in path.resolve().parents
        assert path.read_bytes() == content
    except (Rejected, TryLater):
        pass
    assert list(store.temp.iterdir()) == []
