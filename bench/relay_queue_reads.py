"""
How long one relay read costs in the queue's bookkeeping when many photos
wait (issue 9 finding 6: 80,000 queued photos made each read 27 ms).

Fills a RelayQueue with --photos photos spread over --ids pairings, leases
a tenth of them, then times reads: an empty read for an id with nothing
waiting, and a lease + confirm for an id with photos.  Plain Python, no
network: the cost measured is the queue's alone.

    .venv/bin/python bench/relay_queue_reads.py --photos 80000

It measures the code of the checkout it sits in (copy it into an older
checkout to compare).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medimage_tx.relay_store.queue import RelayQueue


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=80_000)
    parser.add_argument("--ids", type=int, default=200)
    parser.add_argument("--reads", type=int, default=300)
    args = parser.parse_args()

    now = [1000.0]
    queue = RelayQueue(now=lambda: now[0], lease_seconds=300)
    ids = [f"pairing{i:011d}" for i in range(args.ids)]
    started = time.perf_counter()
    for n in range(args.photos):
        paired_id = ids[n % len(ids)]
        queue.put(paired_id, f"{paired_id}/P{n}/photo.jpg", 1_000_000)
    filled = time.perf_counter() - started
    for paired_id in ids[: len(ids) // 10]:
        while queue.lease(paired_id) is not None:
            pass  # a tenth of the pairings have everything out on lease

    empty_id = "nothingwaits00000000"
    empty = []
    for _ in range(args.reads):
        t = time.perf_counter()
        queue.peek(empty_id)
        empty.append(time.perf_counter() - t)

    cycle = []
    busy_ids = ids[len(ids) // 10:]
    for i in range(args.reads):
        paired_id = busy_ids[i % len(busy_ids)]
        t = time.perf_counter()
        photo = queue.lease(paired_id)
        queue.confirm(paired_id, photo.receipt)
        cycle.append(time.perf_counter() - t)

    def ms(values: list[float], q: float) -> str:
        values = sorted(values)
        return f"{values[min(len(values) - 1, int(q * len(values)))] * 1000:.3f} ms"

    print(f"{args.photos} photos over {args.ids} pairings (filled in {filled:.2f} s)")
    print(f"empty read (peek):     p50 {ms(empty, 0.5)}  p99 {ms(empty, 0.99)}  "
          f"mean {statistics.mean(empty) * 1000:.3f} ms")
    print(f"lease + confirm:       p50 {ms(cycle, 0.5)}  p99 {ms(cycle, 0.99)}  "
          f"mean {statistics.mean(cycle) * 1000:.3f} ms")


if __name__ == "__main__":
    main()
