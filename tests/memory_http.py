"""
A real PC or relay, in memory: C{build_service} wires it as C{twistd
medimage} does (its config.json, photo store in a temporary folder, relay
store, resource tree, site and limits) on a L{MemoryReactorClock}, with
blocking calls run by L{Threads} instead of a thread pool.  Nothing
listens: clients reach the site through in-memory transports (treq over
C{iosim}'s pumps, or a raw L{StringTransport} for the channel-level
defences), and time moves only when the test advances the clock.

The real-server tests (loopback sockets, real processes) stay; these are
their fast counterparts for the rules that live in the HTTP layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Cooperator
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.web.client import Agent
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from treq.client import HTTPClient
from zope.interface import implementer

from conftest import multipart, write_config

SERVER_PORT = 8080


class Steps:
    """
    Where the steps of pull producers (a relay sending a photo from its
    file) wait, instead of the global reactor's cooperator: L{run_one}
    runs the first, L{MemoryServer.flush} all (see
    L{pull_producers_in_memory}).
    """

    def __init__(self):
        self.waiting: list[Callable[[], None]] = []

    def schedule(self, step: Callable[[], None]):
        self.waiting.append(step)
        steps = self

        class Scheduled:
            def cancel(self):
                if step in steps.waiting:
                    steps.waiting.remove(step)

        return Scheduled()

    def run_one(self) -> None:
        self.waiting.pop(0)()


PULLS = Steps()


def pull_producers_in_memory(monkeypatch) -> None:
    """
    Twisted's HTTP channel turns a pull producer into a push producer with
    the global cooperator (the real reactor); in memory, its steps run
    when the test carries the connection's bytes, one piece at a time.
    """
    from twisted.internet import _producer_helpers

    PULLS.waiting.clear()
    cooperator = Cooperator(scheduler=PULLS.schedule, terminationPredicateFactory=lambda: lambda: True)
    monkeypatch.setattr(_producer_helpers, "cooperate", cooperator.cooperate)


class Threads:
    """
    The server's blocking calls (storing, config writes), run on the
    test's thread: at once, or, with C{hold}, only when the test says
    (L{run_next}), so a test can look at the answer between the call being
    asked for and it being done.
    """

    def __init__(self, hold: bool = False):
        self.hold = hold
        self.held: list[tuple[Callable, tuple, Deferred]] = []
        self.calls = 0

    def __call__(self, f: Callable, *args: Any) -> Deferred:
        self.calls += 1
        if not self.hold:
            return maybeDeferred(f, *args)
        d: Deferred = Deferred()
        self.held.append((f, args, d))
        return d

    def run_next(self) -> None:
        f, args, d = self.held.pop(0)
        maybeDeferred(f, *args).chainDeferred(d)


@implementer(IBodyProducer)
class Body:
    """
    A request body written at once; with C{chunked}, of unknown length
    (so the client sends it chunked).
    """

    def __init__(self, data: bytes, chunked: bool = False):
        self.data = data
        self.length = UNKNOWN_LENGTH if chunked else len(data)

    def startProducing(self, consumer):
        consumer.write(self.data)
        return succeed(None)

    def stopProducing(self):
        pass

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass


@dataclass
class MemoryServer:
    service: Any
    data: Path
    reactor: MemoryReactorClock
    threads: Threads
    pumps: list = field(default_factory=list)

    @property
    def state(self):
        return self.service.state

    @property
    def site(self):
        return self.service.http.factory

    @property
    def photos(self) -> Path:
        return self.data / "photos"

    # -- raw connections, for the channel's own defences ----------------

    def connect(self, peer: str = "127.0.0.1") -> tuple[Any, StringTransport]:
        """
        A connection from C{peer} (IPv4 or IPv6): the server's channel and
        its transport (what the server writes is in C{transport.value()}).
        """
        address = IPv6Address if ":" in peer else IPv4Address
        transport = StringTransport(hostAddress=address("TCP", "::1" if ":" in peer else "127.0.0.1", SERVER_PORT),
                                    peerAddress=address("TCP", peer, 40000))
        channel = self.site.buildProtocol(transport.getPeer())
        channel.makeConnection(transport)
        return channel, transport

    @staticmethod
    def hang_up(channel, transport: StringTransport) -> None:
        """
        The transport closes (the server aborted, or the client left).
        """
        # As a real transport does: its producer (the channel, and through
        # it a response being sent) is stopped, then the protocol told.
        if transport.producer is not None:
            transport.producer.stopProducing()
        channel.connectionLost(Failure(ConnectionDone()))

    # -- HTTP clients ----------------------------------------------------

    def client(self, peer: str = "127.0.0.1") -> HTTPClient:
        """
        A treq client whose connections reach this server from C{peer}.
        """
        server = self

        @implementer(IStreamClientEndpoint)
        class ToServer:
            def connect(self, factory):
                client_address = IPv4Address("TCP", peer, 40000 + len(server.pumps))
                server_address = IPv4Address("TCP", "127.0.0.1", SERVER_PORT)
                channel = server.site.buildProtocol(client_address)
                client = factory.buildProtocol(server_address)
                server.pumps.append(iosim.connect(
                    channel, iosim.FakeTransport(channel, True, server_address, client_address),
                    client, iosim.FakeTransport(client, False, client_address, server_address),
                    greet=False))
                return succeed(client)

        class Endpoints:
            def endpointForURI(self, uri):
                return ToServer()

        return HTTPClient(Agent.usingEndpointFactory(MemoryReactorClock(), Endpoints()),
                          data_to_body_producer=lambda data: data if IBodyProducer.providedBy(data) else Body(data))

    def flush(self) -> None:
        """
        Carry every byte both ways, and run producers' steps, until
        nothing moves.
        """
        moved = True
        while moved:
            moved = False
            # The server's producers first: a response is all written
            # (and finished) before the client reads it and hangs up.
            while PULLS.waiting:
                PULLS.run_one()
                moved = True
            for pump in list(self.pumps):
                moved = pump.flush() or moved
                if pump.clientIO.disconnected and pump.serverIO.disconnected:
                    self.pumps.remove(pump)

    def advance(self, seconds: float) -> None:
        """
        Time passes, after what was sent so far has arrived.
        """
        self.flush()
        self.reactor.advance(seconds)
        self.flush()

    def ready(self, d: Deferred) -> bool:
        """
        Whether C{d} has its result once everything written so far has
        been carried.
        """
        self.flush()
        results: list = []
        d.addBoth(lambda result: results.append(result) or result)
        return bool(results)

    def done(self, d: Deferred) -> Any:
        """
        C{d}'s result once everything written so far has been carried:
        the server answered without waiting for time or threads.
        """
        self.flush()
        results: list = []
        d.addBoth(results.append)
        assert results, "no answer yet"
        if isinstance(results[0], Failure):
            results[0].raiseException()
        return results[0]

    def get(self, path: str, peer: str = "127.0.0.1", method: str = "GET", **headers: Any):
        """
        (response, body) of a request answered at once.
        """
        response = self.done(self.client(peer).request(
            method, self.url(path), headers={k.replace("_", "-").encode(): [v] for k, v in headers.items()}))
        return response, self.done(response.content())

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{SERVER_PORT}{path}"

    def upload(self, name: Optional[str], content: bytes, peer: str = "127.0.0.1", chunked: bool = False,
               **multipart_options: Any) -> Deferred:
        """
        POST a photo as the app does: a Deferred of the response.
        """
        body, content_type = multipart(name, content, **multipart_options)
        return self.post(body, content_type, peer, chunked)

    def post(self, body: bytes, content_type: bytes, peer: str = "127.0.0.1", chunked: bool = False,
             path: str = "/api/photo", headers: Optional[dict] = None) -> Deferred:
        all_headers = {b"Content-Type": [content_type], **(headers or {})}
        return self.client(peer).post(self.url(path), data=Body(body, chunked), headers=all_headers)

    def answer(self, d: Deferred) -> tuple[int, bytes, Any]:
        """
        (status, body, response) of a request answered at once.
        """
        response = self.done(d)
        return response.code, self.done(response.content()), response


RELAY = {"allowPhotosLeaving": True, "allowGettingRemotePhotos": False}


def memory_server(folder: Path, role: str = "pc", hold_threads: bool = False, **settings: Any) -> MemoryServer:
    """
    A PC (or, with C{role="relay"}, a relay) as C{twistd medimage} builds
    it from a config.json with C{settings}, on a fake reactor; not started
    (nothing listens), its photo store ready.
    """
    from medimage_tx.tap import build_service

    settings.setdefault("lanMode", False)
    if role == "relay":
        settings = {**RELAY, **settings}
    data = folder / role
    config = write_config(data / "config.json", **settings)
    reactor = MemoryReactorClock()
    threads = Threads(hold_threads)
    service = build_service(reactor, data, config, port=SERVER_PORT, interface="127.0.0.1", clock=reactor,
                            in_thread=threads)
    # As a listening port would (the access log, were it on, opens here).
    service.http.factory.doStart()
    return MemoryServer(service, data, reactor, threads)
