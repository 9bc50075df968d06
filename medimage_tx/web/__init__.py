"""
The HTTP side shared by both roles: answers per app family, request budgets, connection caps, server TLS, the plain pages, pairing pages.
"""
