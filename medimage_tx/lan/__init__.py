"""
The LAN: discovery rules as plain Python (the service is L{medimage_tx.discovery}).
"""
