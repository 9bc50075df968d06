"""
The headers of our relay extension (PROTOCOL.md B4), which the relay sends
and the PC's puller reads: both roles' shared vocabulary.
"""

#: Response header by which a relay says it supports PROTOCOL.md B4.
RELAY_FEATURES = b"X-MedImage-Relay"
RELAY_FEATURES_VALUE = b"ack, wait"
#: A read that asks for a lease and a receipt instead of a delete on send.
ACK_HEADER = b"X-MedImage-Ack"
#: The receipt the PC confirms with (C{DELETE /read/<id>/<receipt>}).
RECEIPT_HEADER = b"X-MedImage-Receipt"
