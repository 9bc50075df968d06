"""
Requests this server makes (to a relay, a pairing service, an add-on download): the agent and proxy tunnel, response limits, TLS trust.
"""
