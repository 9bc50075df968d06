"""
Real relay processes for tests: C{twistd medimage} relays on loopback,
on this disk or on a shared PostgreSQL (docs/relay-cluster.md), that can be
killed and started again on the same port.
"""

from __future__ import annotations

import signal

import psutil
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer

from conftest import eventually, within, write_config
from haproxy_front import haproxy_argv, haproxy_config
from postgres_server import free_port
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


async def start_haproxy(tmp_path, nodes: list[Node], balance: str = "roundrobin",
                        send_proxy: bool = True) -> str:
    """
    HAProxy cannot be told port 0 and say which it got: it gets a port
    found free, and another if some other program took that one first.
    """
    config = tmp_path / "haproxy.cfg"
    for _ in range(5):
        port = free_port()
        config.write_text(haproxy_config(port, [node.port for node in nodes], balance, send_proxy=send_proxy))
        haproxy = spawn(haproxy_argv(config), str(tmp_path))

        def listening(pid: int = haproxy.transport.pid, port: int = port) -> bool:
            # HAProxy itself, not whatever may have taken the port.
            try:
                process = psutil.Process(pid)
                # net_connections since psutil 6; connections before.
                sockets = getattr(process, "net_connections", process.connections)(kind="tcp")
            except psutil.NoSuchProcess:
                return False
            return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in sockets)

        await eventually(lambda: haproxy.ended.called or listening(), "HAProxy listens or ends")
        if not haproxy.ended.called:
            return f"http://127.0.0.1:{port}"
    raise AssertionError(f"HAProxy did not start:\n{haproxy.output.decode(errors='replace')[-2000:]}")
