"""
Real relay processes for tests: C{twistd medimage} relays on loopback,
on this disk or on a shared PostgreSQL (docs/relay-cluster.md), that can be
killed and started again on the same port.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer

from conftest import within, write_config
from processes import WatchedProcess, spawn

TWISTD = Path(sys.executable).parent / "twistd"


class Node:
    """
    One relay node: a C{twistd medimage} process; it keeps the port it got
    at its first start, so it can be killed and started again behind the
    same HAProxy line.  C{store_url} empty: the relay's store is its disk.
    """

    def __init__(self, data: Path, store_url: str = "", proxy_protocol: bool = False, **settings: Any):
        self.data = data
        # Port 0 at the first start: a port found free beforehand can be
        # taken by another program before twistd listens on it.
        self.port = 0
        write_config(data / "config.json", allowPhotosLeaving=True, allowGettingRemotePhotos=False,
                     lanMode=False, relayStore=store_url, proxyProtocol=proxy_protocol, **settings)
        self.process: WatchedProcess = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> "Node":
        self.process = spawn([str(TWISTD), "--nodaemon", "--pidfile=", "medimage", "--data", str(self.data),
                              "--port", str(self.port), "--interface", "127.0.0.1"], str(self.data))
        self.port = await within(self.process.port(), 60)
        return self

    async def kill9(self) -> None:
        if not self.process.ended.called:
            self.process.transport.signalProcess(signal.SIGKILL)
        assert await self.process.exited() == -signal.SIGKILL


async def start_nodes(tmp_path, url: str, count: int = 2, proxy_protocol: bool = False,
                      **settings: Any) -> list[Node]:
    """
    With C{proxy_protocol} the nodes take connections only from a balancer
    that sends the PROXY protocol, which tells them each client's address.
    """
    nodes = [Node(tmp_path / f"node{i}", url, proxy_protocol, **settings) for i in range(count)]
    await defer.gatherResults([defer.ensureDeferred(node.start()) for node in nodes])
    return nodes
