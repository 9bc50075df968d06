"""
The relay's stores (docs/relay-cluster.md): where a relay keeps its queue,
leases, receipts, photo bytes, pairing codes and guess limits.  The local
disk is the default; C{relayStore: "postgresql://..."} shares one
PostgreSQL database between several relay nodes.
"""
