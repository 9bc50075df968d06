"""
Small twisted.web helpers shared by the resources: answers, the one place
where domain errors become HTTP answers, and async rendering.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Coroutine, Optional

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource

from .app_families import AppFamily
from ..errors import Rejected, TryLater

if TYPE_CHECKING:
    from ..state import ServerState

log = Logger()

#: A3/A4: what a server that does not let photos leave answers.
NOT_READABLE = b"Sorry, you cannot read from this server. Please check the server's config.json."


@dataclass
class Answer:
    code: int
    body: bytes
    content_type: bytes = b"text/plain; charset=utf-8"
    headers: dict[bytes, bytes] = field(default_factory=dict)
    phrase: Optional[bytes] = None  # the HTTP reason phrase; Twisted's when None

    def send(self, request: server.Request) -> None:
        request.setResponseCode(self.code, self.phrase)
        request.setHeader(b"content-type", self.content_type)
        request.setHeader(b"content-length", b"%d" % len(self.body))
        for name, value in self.headers.items():
            request.setHeader(name, value)
        request.write(self.body)
        request.finish()


def add_config_headers(request: server.Request, headers: dict[str, str]) -> None:
    """
    The config C{headers} (CORS by default): only on the routes the apps
    call (PROTOCOL.md A1), never on the PC's own pages.
    """
    for name, value in headers.items():
        request.setHeader(name.encode("latin-1"), value.encode("latin-1"))


def one_line(text: str) -> bytes:
    return " ".join(text.split()).encode("utf-8")


#: The longest reason phrase we send: apps show it whole.
PHRASE_LIMIT = 120


def reason_phrase(text: str) -> bytes:
    """
    C{text} as an HTTP reason phrase: one line, printable ASCII (latin-1
    safe on every client), at most L{PHRASE_LIMIT} characters.
    """
    line = re.sub(r"[^\x20-\x7e]", "?", " ".join(text.split()))
    if len(line) > PHRASE_LIMIT:
        line = line[: PHRASE_LIMIT - 3].rsplit(" ", 1)[0] + "..."
    return line.encode("ascii")


def _keep_and_retry(reason: str, retry_after: int) -> Answer:
    """
    For legacy Android: a 2xx other than 200 whose body does not contain
    "200" makes it keep the photo and send it again (the original answers
    206 the same way); any status of 400 or more would delete the photo.
    """
    body = json.dumps({"stored": False, "error": reason})
    if "200" in body:
        body = json.dumps({"stored": False, "error": "The photo was not stored; sending it again."})
    return Answer(206, body.encode("utf-8"), b"application/json",
                  headers={b"retry-after": b"%d" % retry_after})


def answer_for_failure(failure: Failure, family: AppFamily = AppFamily.STANDARD) -> Answer:
    """
    The one place where errors become HTTP answers, in the form the app
    C{family} that sent the request reads as "not stored, keep the photo"
    (app_families.py).
    """
    if failure.check(Rejected):
        reason, retry_after = str(failure.value), 30
        standard = Answer(400, one_line(reason), phrase=reason_phrase(reason))
    elif failure.check(TryLater):
        error = failure.value
        reason, retry_after = str(error), error.retry_after
        # Trouble on our side is worth a line (reasons never name a photo).
        log.warn("Not stored, the phone will send it again: {reason}", reason=reason)
        standard = Answer(error.status, one_line(reason), phrase=reason_phrase(error.phrase),
                          headers={b"retry-after": b"%d" % retry_after})
    else:
        # One line, never a traceback per request (finding 11): a request
        # that trips a bug must not be able to flood the log.
        frame = failure.frames[-1] if failure.frames else None
        log.error("Unexpected error while answering a request: {kind}: {message}{where}",
                  kind=failure.type.__name__, message=" ".join(str(failure.value).split())[:200],
                  where=f" (at {frame[1]}:{frame[2]})" if frame else "")
        reason, retry_after = "Internal server error", 30
        standard = Answer(500, b"Internal server error", headers={b"retry-after": b"30"},
                          phrase=b"Server error; the photo stays on the phone")
    if family is AppFamily.LEGACY_ANDROID:
        return _keep_and_retry(reason, retry_after)
    return standard


def render_async(request: server.Request, handler: Callable[..., Coroutine[Any, Any, Optional[Answer]]],
                 *args: Any, family: AppFamily = AppFamily.STANDARD):
    """
    Run an async handler the klein way: cancel it when the client goes
    away, never write after a disconnect, answer every error (in the form
    the app C{family} understands).
    """
    d: Deferred[Optional[Answer]] = ensureDeferred(handler(request, *args))
    gone: list[bool] = []

    def client_gone(reason: Failure) -> None:
        gone.append(True)
        d.cancel()

    request.notifyFinish().addErrback(client_gone)

    def answer(result: Answer | Failure | None) -> None:
        if gone or result is None:
            return  # the client left, or the handler answered itself
        if isinstance(result, Failure):
            if result.check(CancelledError):
                return
            result = answer_for_failure(result, family)
        result.send(request)

    d.addBoth(answer)
    d.addErrback(lambda f: log.failure("Failed to send an answer", f))
    return server.NOT_DONE_YET


def answer_now(request, answer: Answer) -> bytes:
    request.setResponseCode(answer.code, answer.phrase)
    request.setHeader(b"content-type", answer.content_type)
    for name, value in answer.headers.items():
        request.setHeader(name, value)
    return answer.body


class StateResource(Resource):
    """
    A leaf resource that reads the server's shared state.
    """

    isLeaf = True

    def __init__(self, state: ServerState):
        super().__init__()
        self.state = state


def table_html(rows: list[tuple[str, str]]) -> str:
    cells = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table>\n{cells}\n</table>"


def html_page(code: int, title: str, body_html: str) -> Answer:
    """
    A small HTML page; C{body_html} must already be escaped.
    """
    document = (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head><body><h1>{html.escape(title)}</h1>"
        f"{body_html}</body></html>\n"
    )
    return Answer(code, document.encode("utf-8"), b"text/html; charset=utf-8")
