"""
The head counter of medimage_tx.outbound.response_limits, which every outgoing
connection uses: it must find the end of a real answer's head wherever
the reads split it (else a photo's body would be counted as headers and
cut), and count interim 1xx heads towards the limit.
"""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from medimage_tx.outbound.response_limits import HeadCounter, ResponseHeadTooLong


def feed_in_pieces(counter: HeadCounter, data: bytes, cuts: list[int]) -> int:
    """
    Feed C{data} split at C{cuts}; returns the bytes counted when the
    counter stopped waiting (up to the end of the final head), or -1.
    """
    edges = sorted({0, len(data), *[c % (len(data) + 1) for c in cuts]})
    for start, end in zip(edges, edges[1:]):
        counter.feed(data[start:end])
        if not counter.waiting:
            return counter.size
    return -1


header_lines = st.lists(
    st.tuples(st.sampled_from([b"Content-Length", b"X-MedImage-Relay", b"file-name", b"A"]),
              st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))),
    max_size=20)


@given(header_lines, st.sampled_from([b"\r\n", b"\n"]), st.binary(max_size=3000),
       st.lists(st.integers(min_value=0), max_size=12), st.booleans())
def test_the_end_of_a_head_is_found_wherever_the_reads_split_it(lines, newline, body, cuts, interim):
    head = b"HTTP/1.1 200 OK" + newline + b"".join(k + b": " + v + newline for k, v in lines) + newline
    before = b"HTTP/1.1 100 Continue" + newline + newline if interim else b""
    counter = HeadCounter(limit=64 * 1024)
    counter.start()
    assert feed_in_pieces(counter, before + head + body, cuts) == len(before + head)


def test_a_head_past_the_limit_is_refused_and_interim_heads_count():
    counter = HeadCounter(limit=1000)
    counter.start()
    with pytest.raises(ResponseHeadTooLong):
        for _ in range(100):
            counter.feed(b"X-Filler: abcdefgh\r\n")
    counter.start()
    with pytest.raises(ResponseHeadTooLong):
        for _ in range(100):
            counter.feed(b"HTTP/1.1 100 Continue\r\n\r\n")  # never the final head
    counter.start()
    counter.feed(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 100 + b"\r\n")  # 619 bytes: fine
    assert not counter.waiting and counter.size == 619
