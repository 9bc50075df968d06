"""
HAProxy (Debian's package) in front of relay nodes, for the cluster tests
and the bench: the configuration docs/relay-cluster.md describes, on
loopback.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def haproxy_config(port: int, nodes: list[int], balance: str = "roundrobin",
                   maxconn: int = 4000, send_proxy: bool = True) -> str:
    """
    One front on 127.0.0.1:C{port}, the nodes on C{nodes} behind it, checked
    every 200 ms so a dead node is out within a second (it refuses at once);
    a live one may take up to 5 s to answer a check (C{timeout check}), so
    a node slowed by a loaded machine is not taken out.  Long polls last up
    to a minute, so the client and server timeouts are longer than that.
    With C{send_proxy}, each connection to a node starts with the client's
    address (the PROXY protocol; nodes with C{proxyProtocol: true}).
    """
    proxy = " send-proxy check-send-proxy" if send_proxy else ""
    servers = "\n".join(
        f"    server node{i} 127.0.0.1:{node_port} check inter 200ms fall 1 rise 2{proxy}"
        for i, node_port in enumerate(nodes))
    return f"""\
global
    maxconn {maxconn}

defaults
    mode http
    option redispatch
    retries 3
    timeout connect 2s
    timeout check 5s
    timeout client 90s
    timeout server 90s
    timeout http-request 30s

frontend relay
    bind 127.0.0.1:{port}
    default_backend nodes

backend nodes
    balance {balance}
    option httpchk GET /load
{servers}
"""


def haproxy_argv(config_path: Path) -> list[str]:
    binary = shutil.which("haproxy", path=os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"]))
    if binary is None:
        raise RuntimeError("haproxy is not installed (apt-get install haproxy)")
    return [binary, "-db", "-f", str(config_path)]
