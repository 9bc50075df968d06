"""
The clinic PC's role: filing photos, backups, pulling from the relay, pairing with it, backup drives, taking over an original installation.
"""
