"""
Blocking clients for the connection-cap attacks (tests/security/test_round3.py):
raw HTTP exchanges from a chosen source address, a device holding many
kept-alive connections from many addresses, and a phone's uploads.  IPv4
or IPv6.  Run as a script (in a test's network namespace) it does the
attack and prints what it got as JSON:

    python connection_flood.py SERVER PORT EACH PHONE SOURCE...
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).parent))

from conftest import jpeg_bytes, multipart  # noqa: E402

TIMEOUT = 30


def _socket(source: str) -> socket.socket:
    s = socket.socket(socket.AF_INET6 if ":" in source else socket.AF_INET)
    s.settimeout(TIMEOUT)
    s.bind((source, 0))
    return s


def host_header(server: str, port: int) -> str:
    return f"[{server}]:{port}" if ":" in server else f"{server}:{port}"


def request(port: int, path: str, *headers: str, method: str = "GET", body: bytes = b"",
            host: Optional[str] = None, server: str = "127.0.0.1") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host or host_header(server, port)}", *headers]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def exchange(port: int, raw: bytes, source: str = "127.0.0.1", answers: int = 1, server: str = "127.0.0.1"):
    """
    Send C{raw} from C{source} and read C{answers} answers: a list of
    (status, headers, body), or L{None} if the server closed the
    connection without answering.
    """
    with _socket(source) as s:
        try:
            s.connect((server, port))
            s.sendall(raw)
            stream = s.makefile("rb")
            results = []
            while len(results) < answers:
                status_line = stream.readline()
                if not status_line:
                    return None
                headers = {}
                while (line := stream.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                results.append((int(status_line.split()[1]), headers,
                                stream.read(int(headers.get("content-length", 0)))))
            return results
        except (ConnectionResetError, BrokenPipeError):
            return None


def room_for_sockets() -> None:
    """
    This process may open as many files as the system lets it (a soft
    limit of 1,024 would not hold the attack's connections).
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass  # keep what there is: the test says if it was not enough


def hold_connections(server: str, port: int, sources: list[str], each: int) -> tuple[list[socket.socket], int]:
    """
    From each source, C{each} connections, each asking C{GET /load} and
    kept open (keep-alive) once answered.  Returns the held sockets and how
    many the server closed instead.
    """
    room_for_sockets()
    held, closed = [], 0
    for source in sources:
        for _ in range(each):
            s = _socket(source)
            try:
                s.connect((server, port))
                s.sendall(request(port, "/load", server=server))
                answer = s.recv(4096)
            except (ConnectionResetError, BrokenPipeError):
                answer = b""
            if answer.startswith(b"HTTP/1.1 200"):
                held.append(s)
            else:
                closed += 1
                s.close()
    return held, closed


def phone_uploads(server: str, port: int, source: str, count: int) -> int:
    """
    C{count} photo uploads from C{source}, one connection each; how many
    were answered 200.
    """
    stored = 0
    for n in range(count):
        body, content_type = multipart(f"#PHONE-{n}.jpg", jpeg_bytes(5_000, seed=n + 1))
        raw = request(port, "/api/photo", f"Content-Type: {content_type.decode()}", method="POST",
                      body=body, server=server)
        try:
            answered = exchange(port, raw, source, server=server)
        except OSError:
            answered = None
        if answered and answered[0][0] == 200:
            stored += 1
    return stored


def main(server: str, port: int, each: int, phone: str, sources: list[str]) -> dict:
    held, closed = hold_connections(server, port, sources, each)
    try:
        return {"held": len(held), "closed": closed, "stored": phone_uploads(server, port, phone, 6)}
    finally:
        for s in held:
            s.close()


if __name__ == "__main__":
    server, port, each, phone, *sources = sys.argv[1:]
    print(json.dumps(main(server, int(port), int(each), phone, sources)))
