"""
Limits on what this server reads from the servers it calls (a relay, a
pairing service, an add-on's download address): none of them is trusted.

Twisted's HTTP client limits each header line (16 KiB) but not how many
there are, so a relay that sent endless short header lines grew the PC's
memory until the request timed out (about 200 MB in 30 s).  Every
outgoing connection is wrapped (L{twisted.protocols.policies}) by
L{HeadLimitedEndpoint}, which counts the bytes that arrive from a request
being sent until its final response head (status line and headers) ends,
and cuts the connection past L{MAX_RESPONSE_HEAD}.  Bodies are limited by
whoever reads them (L{CappedBody} here, the puller's own reader).

Only the end of a head is looked for (a blank line, as Twisted's parser
reads one: C{\\n\\n} or C{\\n\\r\\n}); Twisted parses everything.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional, TypeVar, cast

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.error import SchemeNotSupported
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

#: The most a server may send from our request to the end of its answer's
#: status line and headers (1xx interim answers included).  Real answers
#: from a relay or a pairing service are well under 1 KiB.
MAX_RESPONSE_HEAD = 64 * 1024

_HEAD_END = re.compile(rb"\n\r?\n")

T = TypeVar("T")


class ResponseHeadTooLong(Exception):
    def __init__(self, limit: int):
        super().__init__(f"the answer's headers went past {limit // 1024} KiB, so the connection "
                         "was cut")


class ResponseTooLarge(Exception):
    pass


class ResponseTooSlow(Exception):
    pass


class HeadCounter:
    """
    Counts the bytes of one response head, from the first byte after a
    request was sent to the blank line that ends the final head.

    @ivar waiting: a head is expected or arriving.
    """

    def __init__(self, limit: int = MAX_RESPONSE_HEAD):
        self.limit = limit
        self.waiting = False
        self.size = 0
        self._status = b""  # the first bytes of the current head
        self._carried = b""  # the last bytes seen, for an end split across reads

    def start(self) -> None:
        self.waiting, self.size, self._status, self._carried = True, 0, b"", b""

    def feed(self, data: bytes) -> None:
        """
        @raise ResponseHeadTooLong: the head went past the limit.
        """
        pos = 0
        while self.waiting and pos < len(data):
            if len(self._status) < 12:
                self._status += data[pos:pos + 12 - len(self._status)]
            window = self._carried + data[pos:pos + self.limit + 3]
            match = _HEAD_END.search(window)
            end = None if match is None else pos + match.end() - len(self._carried)
            self.size += (len(data) if end is None else end) - pos
            if self.size > self.limit:
                raise ResponseHeadTooLong(self.limit)
            if end is None:
                self._carried = window[-2:]
                return
            pos = end
            self._carried = b""
            if self._status[9:10] == b"1":  # "HTTP/1.1 1xx": an interim head, the real one follows
                self._status = b""
            else:
                self.waiting = False


class _HeadLimited(ProtocolWrapper):
    """
    Between the connection and Twisted's HTTP client protocol: a write
    while no head is expected starts a new count.  (A server that answers
    before a request's body is sent has that body's later writes start a
    count again: it can only cut itself off.)
    """

    def __init__(self, factory, wrappedProtocol):
        super().__init__(factory, wrappedProtocol)
        self.head = HeadCounter(factory.limit)
        self._refused: Optional[Exception] = None

    def _request_sent(self) -> None:
        if not self.head.waiting:
            self.head.start()

    def write(self, data):
        self._request_sent()
        super().write(data)

    def writeSequence(self, data):
        self._request_sent()
        super().writeSequence(data)

    def dataReceived(self, data):
        if self._refused is not None:
            return
        if self.head.waiting:
            try:
                self.head.feed(data)
            except ResponseHeadTooLong as e:
                self._refused = e
                self.transport.abortConnection()
                return
        super().dataReceived(data)

    def connectionLost(self, reason):
        if self._refused is not None:
            reason = Failure(self._refused)
        super().connectionLost(reason)


class _HeadLimitedFactory(WrappingFactory):
    protocol = _HeadLimited

    def __init__(self, wrappedFactory, limit: int):
        super().__init__(wrappedFactory)
        self.limit = limit


@implementer(IStreamClientEndpoint)
class HeadLimitedEndpoint:
    """
    C{endpoint}, with every connection's response heads limited to
    C{limit} bytes.
    """

    def __init__(self, endpoint: IStreamClientEndpoint, limit: int = MAX_RESPONSE_HEAD):
        self.endpoint, self.limit = endpoint, limit

    def connect(self, factory) -> Deferred:
        connecting = self.endpoint.connect(_HeadLimitedFactory(factory, self.limit))
        # It fires with what the factory built: a wrapper around the caller's protocol.
        return connecting.addCallback(lambda wrapper: cast(ProtocolWrapper, wrapper).wrappedProtocol)


@implementer(IAgentEndpointFactory)
class HeadLimitedEndpoints:
    """
    For C{Agent.usingEndpointFactory}: what a plain Agent connects with
    (a host name endpoint, TLS for https), head-limited.
    """

    def __init__(self, reactor: Any, tls: IPolicyForHTTPS):
        self.reactor, self.tls = reactor, tls

    def endpointForURI(self, uri):
        endpoint = HostnameEndpoint(self.reactor, uri.host, uri.port)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self.tls.creatorForNetloc(uri.host, uri.port), endpoint)
        elif uri.scheme != b"http":
            raise SchemeNotSupported(f"Unsupported scheme: {uri.scheme!r}")
        return HeadLimitedEndpoint(endpoint)


def in_time(request: Deferred[T], seconds: float, clock: IReactorTime) -> Deferred[T]:
    """
    C{request} (a treq or Agent request), cancelled if its answer's head
    has not come after C{seconds} on C{clock}: treq's C{timeout}, on any
    clock (treq's own takes the reactor it was given).
    """
    call = clock.callLater(seconds, request.cancel)

    def done(result):
        if call.active():
            call.cancel()
        return result

    return request.addBoth(done)


def timed_out(error: BaseException) -> bool:
    """
    Did a request fail because its time ran out (treq's C{timeout} cancels
    it; Twisted may wrap that in a list of reasons)?
    """
    reasons = [getattr(f, "value", f) for f in getattr(error, "reasons", None) or []]
    return any(isinstance(e, (CancelledError, TimeoutError)) for e in [error] + reasons)


class _Discard(Protocol):
    def connectionMade(self):
        self.transport.stopProducing()


def discard(response) -> None:
    """
    Drop C{response}'s body unread (its connection is closed).
    """
    response.deliverBody(_Discard())


class CappedBody(Protocol):
    """
    Reads a response body into C{sink} (a callable given each piece), at
    most C{limit} bytes, and all of it by C{deadline} (the clock's time);
    past either the connection is dropped.  C{done} fires with the size
    read, or fails with L{ResponseTooLarge} / L{ResponseTooSlow} (with
    C{too_large} / C{too_slow} as their messages) or the sink's error.
    """

    def __init__(self, sink: Callable[[bytes], object], limit: int, deadline: float, clock: IReactorTime,
                 too_large: str = "the answer is too large", too_slow: str = "the answer is too slow"):
        self.sink, self.limit, self.clock = sink, limit, clock
        self.too_large, self.too_slow = too_large, too_slow
        self.size = 0
        self.done: Deferred = Deferred()
        self._timer = clock.callLater(max(0.0, deadline - clock.seconds()), self._late)

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self._stop(ResponseTooLarge(self.too_large))
            return
        try:
            self.sink(data)
        except Exception as e:
            self._stop(e)

    def _late(self) -> None:
        self._stop(ResponseTooSlow(self.too_slow))

    def _stop(self, error: Exception) -> None:
        self._finish(Failure(error))
        if self.transport is not None:
            # deliverBody connects us to the response's producer, not a transport.
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def _finish(self, result) -> None:
        if self._timer.active():
            self._timer.cancel()
        if not self.done.called:
            self.done.callback(result) if not isinstance(result, Failure) else self.done.errback(result)

    def connectionLost(self, reason=None) -> None:
        if reason is not None and reason.check(ResponseDone, PotentialDataLoss):
            self._finish(self.size)
        else:
            self._finish(reason if reason is not None else Failure(ResponseTooSlow(self.too_slow)))
