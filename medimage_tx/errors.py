"""
The two ways a request can fail that a phone understands (PROTOCOL.md A1).
Domain code raises these; http_resource.py maps them to answers in one place.
"""


class Rejected(Exception):
    """
    Permanent: the app must stop retrying.  Answered C{400} with
    C{str(error)}, one line, as the body.
    """


class TryLater(Exception):
    """
    Transient trouble (disk full, target folder unreachable): answered
    C{503} with C{Retry-After}, so the phone keeps its photo and retries.
    """

    def __init__(self, reason: str, retry_after: int = 30):
        super().__init__(reason)
        self.retry_after = retry_after
