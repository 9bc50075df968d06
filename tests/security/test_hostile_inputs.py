"""
A corpus of hostile inputs against a real PC server and a real relay:
file names, ids, paths, multipart bodies, headers, JSONP callbacks and
pairing codes.  Each is refused with a 4xx and a reason (or, for a file name,
stored under a safe name inside the photos folder); nothing is written
outside the servers' folders; both servers stay up.
"""

from __future__ import annotations

import socket
from collections import Counter
from urllib.parse import quote
from pathlib import Path

import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread

from conftest import jpeg_bytes, multipart

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


BOUNDARY = "----medimage-hostile"
# The reason each check gives (tests/security: "which check refused it").
NOT_MULTIPART = "Expected a multipart/form-data upload"
MALFORMED = "Malformed multipart body"
NO_FILE = "No file in the upload"
EMPTY = "The uploaded file is empty"
TYPE = "File type not allowed on this server"
TOO_LARGE = "Upload too large"
FIELDS = "Text fields of the upload are too large"
HEADERS = "A part's headers in the upload are too long"
PARTS = "Too many parts in the upload"


def form(name, content, **options) -> bytes:
    """
    A body with the corpus's one boundary, so that each case reaches the
    check it is meant for instead of failing on a boundary mismatch.
    """
    return multipart(name, content, boundary=BOUNDARY, **options)[0]


def multipart_variants() -> list[tuple[str, bytes, bytes, str]]:
    """
    (label, body, content type, the reason the check it targets gives).
    """
    content_type = f"multipart/form-data; boundary={BOUNDARY}".encode()
    good = form("#P-x.jpg", PHOTO)
    b = b"--" + BOUNDARY.encode()
    closing = b + b"--\r\n"
    file_headers = b'\r\nContent-Disposition: form-data; name="file1"; filename="x.jpg"\r\n\r\n'
    return [
        ("no boundary", good, b"multipart/form-data", NOT_MULTIPART),
        ("empty boundary", good, b"multipart/form-data; boundary=", NOT_MULTIPART),
        ("wrong boundary", good, b"multipart/form-data; boundary=nope", MALFORMED),
        ("boundary too long", good, b"multipart/form-data; boundary=" + b"a" * 300, NOT_MULTIPART),
        ("truncated", good[: len(good) // 2], content_type, MALFORMED),
        ("no closing", good.replace(closing, b""), content_type, MALFORMED),
        ("only closing", closing, content_type, NO_FILE),
        ("empty body", b"", content_type, MALFORMED),
        ("garbage", b"\x00\xff" * 500, content_type, MALFORMED),
        ("no headers", b + b"\r\n\r\n" + PHOTO + b"\r\n" + closing, content_type, NO_FILE),
        ("no filename", b + b'\r\nContent-Disposition: form-data; name="file1"\r\n\r\n' + PHOTO + b"\r\n" + closing,
         content_type, NO_FILE),
        ("other field", form("#P-x.jpg", PHOTO, field="file2"), content_type, NO_FILE),
        ("empty file", form("#P-x.jpg", b""), content_type, EMPTY),
        ("text file", form("#P-x.jpg", b"hello world"), content_type, TYPE),
        ("gif not allowed", form("#P-x.jpg", b"GIF89a" + b"\x00" * 100), content_type, TYPE),
        ("png", form("#P-x.jpg", b"\x89PNG\r\n\x1a\n" + b"\x00" * 100), content_type, TYPE),
        ("exe", form("#P-x.jpg", b"MZ\x90\x00" + b"\x00" * 100), content_type, TYPE),
        ("elf", form("#P-x.jpg", b"\x7fELF" + b"\x00" * 100), content_type, TYPE),
        ("html", form("#P-x.jpg", b"<html><script>alert(1)</script></html>"), content_type, TYPE),
        ("svg", form("#P-x.jpg", b"<svg xmlns='http://www.w3.org/2000/svg'/>"), content_type, TYPE),
        ("zip", form("#P-x.jpg", b"PK\x03\x04" + b"\x00" * 100), content_type, TYPE),
        ("huge part header", b + b'\r\nContent-Disposition: form-data; name="file1"; filename="' + b"a" * 20000
         + b'.jpg"\r\n\r\n' + PHOTO + b"\r\n" + closing, content_type, HEADERS),  # refused at once
        ("many part headers", b + b"\r\n" + b"X-A: b\r\n" * 2000 + file_headers[2:] + PHOTO + b"\r\n" + closing,
         content_type, HEADERS),  # refused at once
        ("huge title", form("#P-x.jpg", PHOTO, title="t" * 100_000), content_type, FIELDS),
        ("many fields", b"".join(b + b'\r\nContent-Disposition: form-data; name="f%d"\r\n\r\n' % i + b"v" * 100 + b"\r\n"
                                 for i in range(1000)) + closing, content_type, PARTS),
        ("bad header line", b + b"\r\nno colon here\r\n\r\n" + PHOTO + b"\r\n" + closing, content_type, MALFORMED),
        ("urlencoded", b"file1=abc", b"application/x-www-form-urlencoded", NOT_MULTIPART),
        ("json", b'{"file1": "x"}', b"application/json", NOT_MULTIPART),
        ("no content type", good, b"", NOT_MULTIPART),
        ("text/plain", good, b"text/plain", NOT_MULTIPART),
        ("multipart/mixed", good, b"multipart/mixed; boundary=" + BOUNDARY.encode(), NOT_MULTIPART),
        ("nested multipart", form("#P-x.jpg", multipart("#P-x.jpg", PHOTO)[0]), content_type, TYPE),
        ("file in title field", form(None, PHOTO, field="title"), content_type, NO_FILE),
        ("crlf only", b"\r\n" * 1000, content_type, MALFORMED),
        ("boundary in data", b + file_headers + b"\xff\xd8\xff" + closing, content_type, MALFORMED),
        ("jpeg magic only", form("#P-x.jpg", b"\xff\xd8"), content_type, TYPE),
        ("quoted boundary mismatch", good, b'multipart/form-data; boundary="x' + BOUNDARY.encode() + b'"', MALFORMED),
        ("null in disposition", b + b'\r\nContent-Disposition: form-data; name="file1\x00"; filename="x.jpg"\r\n\r\n'
         + PHOTO + b"\r\n" + closing, content_type, NO_FILE),
        ("star filename", b + b"\r\nContent-Disposition: form-data; name=\"file1\"; filename*=UTF-8''x.jpg\r\n\r\n"
         + PHOTO + b"\r\n" + closing, content_type, NO_FILE),
        ("over size", form("#P-x.jpg", b"\xff\xd8\xff" + b"\x00" * 300_000), content_type, TOO_LARGE),
    ]


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
        ("crlf in path", b"GET /%0d%0aSet-Cookie:%20a=b HTTP/1.1\r\n" + host + b"\r\n"),
        ("absolute uri elsewhere", b"GET http://example.invalid/ HTTP/1.1\r\n" + host + b"\r\n"),
        ("connect", b"CONNECT example.invalid:443 HTTP/1.1\r\n" + host + b"\r\n"),
        ("trace", b"TRACE / HTTP/1.1\r\n" + host + b"\r\n"),
        ("dotdot path", b"GET /../../etc/passwd HTTP/1.1\r\n" + host + b"\r\n"),
        ("encoded dotdot", b"GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\n" + host + b"\r\n"),
        ("check traversal", b"GET /check=..%2F..%2Fconfig.json HTTP/1.1\r\n" + host + b"\r\n"),
        ("expect weird", b"POST /api/photo HTTP/1.1\r\n" + host + ct + b"Expect: 999-nope\r\nContent-Length: 0\r\n\r\n"),
    ]


def exchange(port: int, data: bytes, timeout: float = 10.0, then_close: bool = False) -> tuple[int, bytes, bytes]:
    """
    Send raw bytes, read one answer: (status, reason phrase, body).  Status
    0 only when the server closed or reset the connection without an
    answer; no answer within C{timeout} is a failure, never a status.
    """
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        try:
            try:
                conn.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused before all was sent: read what it answered
            if then_close:
                conn.shutdown(socket.SHUT_WR)
            while b"\r\n\r\n" not in answer and (chunk := conn.recv(65536)):
                answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), None)
            while length is not None and len(body) < length and (chunk := conn.recv(65536)):
                body += chunk
        except ConnectionResetError:
            head, _, body = answer.partition(b"\r\n\r\n")
        except TimeoutError:
            raise AssertionError(f"no answer within {timeout} s; got {answer[:200]!r}") from None
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
        try:
            status, phrase, body = await deferToThread(exchange, port, data)
        except AssertionError as e:  # no answer in time: a failure, listed with the rest
            failures.append(f"{label}: {e}")
            return None, b""
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
    for label, body, content_type, reason in multipart_variants():
        status, answer = await run(f"multipart {label}", pc_port,
                                   request("/api/photo", pc_port, "POST", body, content_type), {400})
        if not answer.startswith(reason.encode()):
            failures.append(f"multipart {label}: refused by the wrong check: {answer[:100]!r}")
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
    # Declared far larger than any upload, then the client stops sending:
    # the server waits for no body it would refuse anyway, and stores nothing.
    body, content_type = multipart("#P-x.jpg", PHOTO)
    liar = (f"POST /api/photo HTTP/1.1\r\nHost: 127.0.0.1:{pc_port}\r\nContent-Type: ".encode() + content_type
            + b"\r\nContent-Length: 999999999999\r\n\r\n" + body)
    status, phrase, answer = await deferToThread(exchange, pc_port, liar, then_close=True)
    expect("declared too large, then silence", status, phrase, answer, {0, 400}, True)
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
    # relay-known.json: the ids read from here (at most 4 for this address).
    allowed_roots = [pc.photos, relay.photos, relay.data / "pairing.json", relay.data / "relay-known.json"]
    for path in snapshot(tmp_path) - before:
        assert any(path == root or root in path.parents for root in allowed_roots), path
    for server in (pc, relay):
        assert list((server.data / "tmp").iterdir()) == []
    for path in snapshot(pc.photos):
        assert all(part and not part.startswith(".") and len(part.encode()) <= 255
                   for part in path.relative_to(pc.photos).parts), path
    print(f"hostile inputs tried: {tried}")


UNSAFE_IN_A_QUOTED_NAME = set('"\\\r\n\x00')


def chunked(body: bytes, size: int) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n" % len(piece) + piece + b"\r\n" for piece in pieces) + b"0\r\n\r\n"


@pytest_twisted.ensureDeferred
async def test_fuzz_uploads_through_the_real_server(start_server):
    """
    Hypothesis against a real PC server over a socket: random names,
    contents, fields, truncations, with and without chunked encoding.
    Every answer is 200 (the exact bytes stored inside photos/) or a 400
    refusal; never a 503 or 500 (nothing on the server's side is failing);
    a well-formed JPEG upload is always stored; no temporary file stays.
    """
    server = await start_server(maxUploadSize=100_000)
    port = int(server.url.rsplit(":", 1)[1])
    outcomes: Counter = Counter()

    jpeg = st.builds(lambda b: b"\xff\xd8\xff" + b, st.binary(max_size=3000))

    # Derandomized: how many examples are well-formed JPEG uploads is up to
    # the generator, not the server (a floor of 75 stored failed 2 runs in 5
    # at 70 and 72 with nothing wrong on the server); with a fixed seed the
    # same 300 examples are tried each run (63 well-formed, 76 stored).
    @settings(max_examples=300, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    # Weighted towards well-formed uploads, so that most examples get past
    # the parser and the type check to the name mapping and the store.
    @given(
        filename=st.text(max_size=120),
        content=st.one_of(jpeg, jpeg, jpeg, st.binary(max_size=600)),
        field=st.sampled_from(["file1"] * 6 + ["file2", "title", "fil\u00e91"]),
        chunk=st.one_of(st.none(), st.integers(min_value=1, max_value=700)),
        cut=st.one_of(st.just(0), st.just(0), st.just(0), st.integers(min_value=1, max_value=40)),
    )
    def upload(filename, content, field, chunk, cut):
        before = {p: p.read_bytes() for p in server.photos.rglob("*") if p.is_file()}
        body = form(filename, content, field=field)
        body = body[: len(body) - cut]
        head = (f"POST /api/photo HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
                f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n").encode()
        if chunk is None:
            data = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
        else:
            data = head + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(body, chunk)
        status, _, answer = exchange(port, data)  # in a thread: the reactor serves meanwhile
        after = {p for p in server.photos.rglob("*") if p.is_file()}
        new = after - set(before)
        assert status in (200, 400), (status, answer)
        assert list((server.data / "tmp").iterdir()) == []
        for path in after:
            assert server.photos in path.parents and not path.is_symlink()
        well_formed = (field == "file1" and cut == 0 and content.startswith(b"\xff\xd8\xff")
                       and not set(filename) & UNSAFE_IN_A_QUOTED_NAME)
        outcomes["well-formed"] += well_formed
        if status == 200:
            outcomes["stored"] += 1
            # A new file with exactly these bytes, or (the same name and bytes
            # sent again) the one already there.
            assert ([p.read_bytes() for p in new] == [content]
                    or (not new and content in before.values())), (filename, answer)
        else:
            outcomes["refused"] += 1
            assert new == set(), new
            assert not well_formed, (filename, answer)

    await deferToThread(upload)
    print(f"fuzz outcomes: {dict(outcomes)}")
    # Many examples reach storage, not only the parser (each well-formed one
    # is stored: asserted above, per example).
    assert outcomes["well-formed"] >= 50, outcomes
    assert outcomes["stored"] >= outcomes["well-formed"], outcomes
