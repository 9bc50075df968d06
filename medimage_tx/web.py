"""
Small twisted.web helpers shared by the resources: answers, the one place
where domain errors become HTTP answers, and async rendering.
"""

from __future__ import annotations

import html

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from twisted.internet.defer import CancelledError, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource

from .errors import Rejected, TryLater

log = Logger()

#: A3/A4: what a server that does not let photos leave answers.
NOT_READABLE = b"Sorry, you cannot read from this server. Please check the server's config.json."


@dataclass
class Answer:
    code: int
    body: bytes
    content_type: bytes = b"text/plain; charset=utf-8"
    headers: dict[bytes, bytes] = field(default_factory=dict)

    def send(self, request: server.Request) -> None:
        request.setResponseCode(self.code)
        request.setHeader(b"content-type", self.content_type)
        request.setHeader(b"content-length", b"%d" % len(self.body))
        for name, value in self.headers.items():
            request.setHeader(name, value)
        request.write(self.body)
        request.finish()


def one_line(text: str) -> bytes:
    return " ".join(text.split()).encode("utf-8")


def answer_for_failure(failure: Failure) -> Answer:
    """
    The one place where errors become HTTP answers.
    """
    if failure.check(Rejected):
        return Answer(400, one_line(str(failure.value)))
    if failure.check(TryLater):
        retry_after = b"%d" % failure.value.retry_after
        return Answer(503, one_line(str(failure.value)), headers={b"retry-after": retry_after})
    log.failure("Unexpected error while answering a request", failure)
    return Answer(500, b"Internal server error")


def render_async(request: server.Request, handler: Callable[..., Awaitable[Answer]], *args: Any):
    """
    Run an async handler the klein way: cancel it when the client goes
    away, never write after a disconnect, answer every error.
    """
    d = ensureDeferred(handler(request, *args))
    gone = []

    def client_gone(reason: Failure) -> None:
        gone.append(True)
        d.cancel()

    request.notifyFinish().addErrback(client_gone)

    def answer(result: Any) -> None:
        if gone or result is None:
            return  # the client left, or the handler answered itself
        if isinstance(result, Failure):
            if result.check(CancelledError):
                return
            result = answer_for_failure(result)
        result.send(request)

    d.addBoth(answer)
    d.addErrback(lambda f: log.failure("Failed to send an answer", f))
    return server.NOT_DONE_YET


def answer_now(request, answer: Answer) -> bytes:
    request.setResponseCode(answer.code)
    request.setHeader(b"content-type", answer.content_type)
    for name, value in answer.headers.items():
        request.setHeader(name, value)
    return answer.body


class StateResource(Resource):
    """
    A leaf resource that reads the server's shared state.
    """

    isLeaf = True

    def __init__(self, state: Any):
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
