"""
Outgoing requests through the clinic's HTTP proxy (C{webProxy}): L{make_agent}
picks direct or proxied.  HTTPS goes through an HTTP CONNECT tunnel (with Basic
proxy authentication), then TLS to the relay inside it.  Twisted's
ProxyAgent only speaks plain-HTTP proxying, which would send an https://
relay's traffic to the proxy unencrypted; this endpoint does it properly.

Every connection, direct or proxied, limits the answer's headers
(L{response_limits.HeadLimitedEndpoint}).
"""

from __future__ import annotations

import base64
from typing import Any, Optional
from urllib.parse import unquote, urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint, ITCPTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, ProxyAgent
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory
from zope.interface import implementer

from .response_limits import HeadLimitedEndpoint, HeadLimitedEndpoints

MAX_PROXY_ANSWER = 16 * 1024


class TunnelRefused(Exception):
    pass


class _Tunnel(Protocol):
    """
    Speaks CONNECT to the proxy; once it says 200, hands the connection to
    the protocol the caller wanted and relays to it from then on.
    """

    transport: ITCPTransport  # the connection to the proxy, once made

    def __init__(self, target: bytes, auth: Optional[bytes], factory, done: Deferred):
        self.target = target
        self.auth = auth
        self.wanted = factory  # not "factory": Factory.buildProtocol sets that on us
        self.done = done
        self.buffer = b""
        self.inner: Optional[Protocol] = None

    def connectionMade(self) -> None:
        request = b"CONNECT " + self.target + b" HTTP/1.1\r\nHost: " + self.target + b"\r\n"
        if self.auth:
            request += b"Proxy-Authorization: " + self.auth + b"\r\n"
        self.transport.write(request + b"\r\n")

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > MAX_PROXY_ANSWER:
                self._fail("the proxy's answer is too long")
            return
        head, rest = self.buffer.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0].split(b" ", 2)
        if len(status) < 2 or status[1] != b"200":
            self._fail(f"the web proxy refused the tunnel: {b' '.join(status[1:]).decode(errors='replace')}")
            return
        self.inner = self.wanted.buildProtocol(self.transport.getPeer())
        self.inner.makeConnection(self.transport)
        self.done.callback(self.inner)
        if rest:
            self.inner.dataReceived(rest)

    def _fail(self, reason: str) -> None:
        if not self.done.called:
            self.done.errback(TunnelRefused(reason))
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.inner is not None:
            self.inner.connectionLost(reason)
        elif not self.done.called:
            self.done.errback(TunnelRefused("the web proxy closed the connection"))


@implementer(IStreamClientEndpoint)
class TunnelEndpoint:
    def __init__(self, proxy: IStreamClientEndpoint, host: bytes, port: int, auth: Optional[bytes]):
        self.proxy = proxy
        self.target = host + b":%d" % port
        self.auth = auth

    def connect(self, factory) -> Deferred:
        tunnels: list[_Tunnel] = []

        def cancel(_) -> None:
            # The request's time ran out (treq's timeout cancels): close the
            # proxy connection too, not only the wait for it; and fail with
            # an error of our own, not CancelledError (which, unlike a
            # cancelled direct connection's, looked like the caller's own
            # cancellation and stopped the puller for good).
            done.errback(TunnelRefused("the web proxy did not open the tunnel in time"))
            connecting.cancel()
            for tunnel in tunnels:
                tunnel.transport.abortConnection()

        def tunnel() -> _Tunnel:
            tunnels.append(_Tunnel(self.target, self.auth, factory, done))
            return tunnels[-1]

        done: Deferred = Deferred(cancel)
        def failed(failure: Failure) -> None:
            if not done.called:
                done.errback(failure)

        connecting = self.proxy.connect(Factory.forProtocol(tunnel))
        connecting.addErrback(failed)
        return done


@implementer(IAgentEndpointFactory)
class TunnellingEndpointFactory:
    """
    For an Agent (C{Agent.usingEndpointFactory}): every https:// request
    goes through a CONNECT tunnel of the proxy at C{proxy_host:proxy_port}.
    """

    def __init__(self, reactor, proxy_host: str, proxy_port: int, auth: Optional[bytes], tls=None):
        self.reactor = reactor
        self.proxy = HostnameEndpoint(reactor, proxy_host, proxy_port)
        self.auth = auth
        self.tls = tls or BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri):
        tunnel = TunnelEndpoint(self.proxy, uri.host, uri.port, self.auth)
        return HeadLimitedEndpoint(wrapClientTLS(self.tls.creatorForNetloc(uri.host, uri.port), tunnel))


def make_agent(reactor: Any, pool: Optional[HTTPConnectionPool], web_proxy: str, tls=None):
    """
    An agent that goes direct, or through the clinic's HTTP proxy.

    @param tls: an C{IPolicyForHTTPS} (L{relay_tls.RelayTLSPolicy} for
        C{relayCA}); default Twisted's, which trusts what the OS trusts.
    """
    if web_proxy:
        return WebProxyAgent(reactor, pool, web_proxy, tls)
    return Agent.usingEndpointFactory(
        reactor, HeadLimitedEndpoints(reactor, tls or BrowserLikePolicyForHTTPS()), pool=pool)


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

    def __init__(self, reactor: Any, pool: Optional[HTTPConnectionPool], web_proxy: str, tls=None):
        proxy = urlsplit(web_proxy)
        host, port = proxy.hostname, proxy.port or 80
        if host is None:  # config.py lets "http://:80" through
            raise ValueError("webProxy names no host")
        self.auth = proxy_authorization(web_proxy)
        self.plain = ProxyAgent(HeadLimitedEndpoint(HostnameEndpoint(reactor, host, port)), reactor, pool=pool)
        self.tunnelled = Agent.usingEndpointFactory(
            reactor, TunnellingEndpointFactory(reactor, host, port, self.auth, tls), pool=pool)

    def request(self, method, uri, headers=None, bodyProducer=None):
        if uri.startswith(b"https://"):
            return self.tunnelled.request(method, uri, headers, bodyProducer)
        headers = headers.copy() if headers is not None else Headers()
        if self.auth:
            headers.setRawHeaders(b"proxy-authorization", [self.auth])
        return self.plain.request(method, uri, headers, bodyProducer)
