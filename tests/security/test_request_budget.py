"""
What one client address, and all addresses together, can cost the server in
CPU (issue 9; bench/README.md, "Pairing under a flood of code issues"):
requests past an address's budget wait, their connection unread, instead of
being answered.  The budget runs on a L{Clock} the test moves, so counts are
exact whatever the machine's load; the servers and clients are real, over
loopback, from several 127.0.x.y addresses.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, protocol
from twisted.internet.task import Clock

from urllib.parse import quote

from conftest import eventually, jpeg_bytes, multipart, upload_photo, within
from test_connections import connect, port_of
from test_pairing_limits import http, in_thread

from medimage_tx.web.request_budget import (
    PER_ADDRESS_BURST,
    PER_ADDRESS_RATE,
    RequestBudget,
    TokenBucket,
    address_key,
)

PAIRED_ID = "uPSE4UWHmJ8XqFUqvf"
RELAY = {"allowPhotosLeaving": True, "allowGettingRemotePhotos": False}


# -- the budget itself ---------------------------------------------------------

def test_a_bucket_gives_its_burst_then_its_rate():
    bucket = TokenBucket(rate=20, burst=100, now=0.0)
    for _ in range(100):
        assert bucket.has_token(0.0)
        bucket.take(0.0)
    assert not bucket.has_token(0.0)
    assert bucket.seconds_to_token(0.0) == pytest.approx(0.05)
    assert bucket.has_token(0.05) and not bucket.full(0.05)
    assert bucket.full(1000.0) and bucket.tokens == 100  # never more than the burst


def test_requests_over_an_address_budget_wait_for_their_turn():
    clock = Clock()
    budget = RequestBudget(clock, rate=20, burst=100, total_rate=500, total_burst=1000)
    served = []
    assert all(budget.request("192.0.2.1", lambda: served.append("x")) is None for _ in range(100))
    tickets = [budget.request("192.0.2.1", lambda n=n: served.append(n)) for n in range(5)]
    assert all(t is not None for t in tickets) and served == []
    assert budget.waiting("192.0.2.1") == 5 and budget.delayed == 5
    # Another address is not held up by the first one's backlog.
    assert budget.request("192.0.2.2", lambda: None) is None
    budget.cancel(tickets[1])  # its connection went
    clock.advance(0.049)
    assert served == []
    clock.advance(0.002)  # 1/20 s after the 100th: one token back
    assert served == [0]
    clock.advance(0.05)
    assert served == [0, 2]  # the cancelled one is skipped
    clock.advance(1.0)
    assert served == [0, 2, 3, 4] and budget.waiting() == 0
    assert budget.served == 4


def test_the_total_is_shared_round_robin_between_addresses():
    """
    Many addresses, each within its own budget, over the total: one
    request per waiting address per round, so a quiet address's one
    request waits at most one round however much the others send.
    """
    clock = Clock()
    budget = RequestBudget(clock, rate=20, burst=100, total_rate=10, total_burst=10)
    order = []
    for n in range(10):
        assert budget.request(f"198.51.100.{n}", lambda: None) is None  # the total's burst
    for n in range(3):
        for _ in range(5):
            budget.request(f"203.0.113.{n}", lambda n=n: order.append(f"flood{n}"))
    budget.request("192.0.2.9", lambda: order.append("phone"))
    clock.advance(0.39)
    assert order == ["flood0", "flood1", "flood2"]
    clock.advance(0.02)
    assert order == ["flood0", "flood1", "flood2", "phone"]
    clock.pump([0.1] * 12)
    assert order[4:] == ["flood0", "flood1", "flood2"] * 4


def test_idle_addresses_are_forgotten():
    clock = Clock()
    budget = RequestBudget(clock)
    for n in range(1000):
        budget.request(f"10.0.{n // 250}.{n % 250}", lambda: None)
    assert budget.addresses() == 1000
    clock.advance(1.0)  # one request's token comes back in 1/20 s
    budget.request("10.9.9.9", lambda: None)
    assert budget.addresses() == 1


def test_clients_are_counted_by_ipv4_address_or_ipv6_prefix():
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("fe80::1%eth0") == "fe80::/64"


# -- real servers --------------------------------------------------------------

class Pipeliner(protocol.Protocol):
    """
    Sends C{count} copies of C{request} at once and counts the answers.
    """

    def __init__(self, request: bytes, count: int):
        self.request, self.count = request, count
        self.received = b""

    def connectionMade(self):
        self.transport.write(self.request * self.count)

    def dataReceived(self, data):
        self.received += data

    @property
    def answers(self) -> int:
        return self.received.count(b"HTTP/1.1 ")


def clocked_budget(clock: Clock, **overrides):
    """
    A C{tune} for start_server: the site's request budget, as the role has
    it, on C{clock}.
    """
    def tune(service):
        site = service.http.factory
        settings = {"rate": PER_ADDRESS_RATE, "burst": PER_ADDRESS_BURST,
                    "total_rate": site.budget.total.rate, "total_burst": site.budget.total.burst}
        settings.update(overrides)
        site.budget = RequestBudget(clock, **settings)
    return tune


def cheap_request(role: str, port: int) -> bytes:
    path = b"/check=x.jpg" if role == "relay" else b"/"
    return b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (path, port)


def upload_request(role: str, port: int, n: int = 1) -> bytes:
    name = f"#{PAIRED_ID}-#P{n}-arm.jpg" if role == "relay" else f"#P{n}-arm.jpg"
    body, content_type = multipart(name, jpeg_bytes(seed=n))
    return (b"POST /api/photo HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: " % port + content_type
            + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


@pytest.mark.parametrize("role", ["pc", "relay"])
@pytest_twisted.ensureDeferred
async def test_a_flooding_address_is_paused_while_another_uploads(start_server, role):
    """
    The bench's flood (bench/README.md: 4 connections pipelining cheap,
    allowed requests made a phone's upload take 1.5 s, the relay answering
    1,000 a second): the flooder gets its burst answered, then nothing
    while its budget is spent, its connections unread; an upload from
    another address is stored meanwhile; time given back buys the flooder
    exactly its rate.
    """
    clock = Clock()
    server = await start_server(role, tune=clocked_budget(clock), **(RELAY if role == "relay" else {}))
    site = server.service.http.factory
    port = port_of(server)
    flooder = "127.0.8.1"
    # More each than the burst and a second's rate: no connection can finish.
    floods = [Pipeliner(cheap_request(role, port), int(PER_ADDRESS_BURST + PER_ADDRESS_RATE) + 1)
              for _ in range(4)]
    for client in floods:
        await connect(port, client, flooder)

    def answered() -> int:
        return sum(client.answers for client in floods)

    await eventually(lambda: answered() == PER_ADDRESS_BURST and site.budget.waiting(flooder) == 4,
                     "the flooder's burst answered, then one request per connection waiting")
    [(status, _, body)] = await within(in_thread(http, port, upload_request(role, port), "127.0.8.2"))
    assert (status, body) == (200, b"Received upload successfully!")
    assert answered() == PER_ADDRESS_BURST and site.budget.waiting(flooder) == 4
    # A second of budget: its rate, and no more.
    clock.advance(1.0)
    await eventually(lambda: answered() == PER_ADDRESS_BURST + PER_ADDRESS_RATE
                     and site.budget.waiting(flooder) == 4, "a second's worth of answers")
    assert all(client.received.count(b"HTTP/1.1 200 ") == client.answers for client in floods)
    for client in floods:
        client.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_many_flooding_addresses_cannot_starve_an_upload(start_server):
    """
    Ten addresses, each within its own budget, together over the total:
    the upload from an eleventh waits one round at most (one request from
    each address ahead of it), not behind all they sent.
    """
    clock = Clock()
    server = await start_server("relay", tune=clocked_budget(clock, burst=5, total_rate=50, total_burst=30),
                                **RELAY)
    budget = server.service.http.factory.budget
    port = port_of(server)
    floods = [Pipeliner(cheap_request("relay", port), 20) for _ in range(10)]
    for n, client in enumerate(floods):
        await connect(port, client, f"127.0.9.{n + 1}")
    await eventually(lambda: sum(c.answers for c in floods) == 30 and budget.waiting() == 10,
                     "the total's burst answered, one request waiting per address")
    phone = "127.0.9.100"
    upload = in_thread(http, port, upload_request("relay", port), phone)
    await eventually(lambda: budget.waiting(phone) == 1, "the upload received and waiting")
    served_before = budget.served
    steps = 0
    while budget.waiting(phone):
        clock.advance(1 / 50)  # one request's worth of the total
        steps += 1
        assert steps <= 100
    assert budget.served - served_before <= 11
    [(status, _, body)] = await within(upload)
    assert (status, body) == (200, b"Received upload successfully!")
    for client in floods:
        client.transport.loseConnection()


async def get(client, url: str) -> tuple[int, bytes]:
    response = await within(client.get(url))
    return response.code, await within(response.content())


def at_once(calls) -> defer.Deferred:
    """
    Run the coroutine functions C{calls} at once, 8 at a time (under the
    connections cap per address, which this test is not about).
    """
    semaphore = defer.DeferredSemaphore(8)
    return defer.gatherResults([semaphore.run(lambda c=c: defer.ensureDeferred(c())) for c in calls])


@pytest_twisted.ensureDeferred
async def test_a_clinic_behind_one_address_is_never_held(start_server, http_client, tmp_path):
    """
    A phone and the clinic's PC share one address (127.0.0.1), as behind a
    clinic's NAT: the phone sends 20 photos at once, each after the app's
    ping of the relay, then polls /check= for each every 2 s as the app
    does (11 times); the PC long-polls and confirms each photo.  Not one
    request waits.
    """
    from test_relay import fast_retries

    clock = Clock()
    relay = await start_server("relay", tune=clocked_budget(clock), **RELAY)
    budget = relay.service.http.factory.budget
    target = tmp_path / "clinic"
    target.mkdir()
    pc = await start_server("pc", tune=fast_retries, readProxy=f"{relay.url}/read/{PAIRED_ID}",
                            globalId=PAIRED_ID, backupTo=[target.as_posix()], keepMaster=False)
    names = [f"#{PAIRED_ID}-#P{n}-arm-27-Nov-2026-10-11-{n:02}.jpg" for n in range(20)]
    pings = await at_once([lambda: get(http_client, relay.url + "/") for _ in names])
    assert {code for code, _ in pings} == {200}
    uploads = await at_once([lambda n=n, name=name: upload_photo(http_client, relay.url, name, jpeg_bytes(seed=n))
                             for n, name in enumerate(names)])
    assert {(code, body) for code, body, _ in uploads} == {(200, b"Received upload successfully!")}
    checks = [lambda name=name: get(http_client, f"{relay.url}/check={quote(name)}") for name in names]
    for _ in range(11):
        clock.advance(2.0)
        await at_once(checks)
    await eventually(lambda: len(list(target.rglob("*.jpg"))) == 20, "all 20 photos on the PC")
    answers = await at_once(checks)
    assert set(answers) == {(200, b"false")}  # collected and confirmed
    assert budget.delayed == 0 and budget.waiting() == 0
    assert pc.service.puller is not None


@pytest_twisted.ensureDeferred
async def test_twenty_uploads_at_once_to_a_pc_are_never_held(start_server, http_client):
    clock = Clock()
    pc = await start_server("pc", tune=clocked_budget(clock))
    budget = pc.service.http.factory.budget
    pings = await at_once([lambda: get(http_client, pc.url + "/") for _ in range(20)])
    assert {code for code, _ in pings} == {200}
    uploads = await at_once([lambda n=n: upload_photo(http_client, pc.url, f"#P{n}-arm.jpg", jpeg_bytes(seed=n))
                             for n in range(20)])
    assert {(code, body) for code, body, _ in uploads} == {(200, b"Received upload successfully!")}
    assert budget.delayed == 0


@pytest_twisted.ensureDeferred
async def test_the_per_address_budget_comes_from_config_json(start_server):
    # A burst of 3 and (in effect) no refill: of 4 pipelined requests, 3
    # are answered and the 4th waits its turn, its connection no longer read.
    server = await start_server(requestRatePerAddress=0.001, requestBurstPerAddress=3)
    site = server.service.http.factory
    port = port_of(server)
    client = Pipeliner(cheap_request("pc", port), 4)
    await connect(port, client, "127.0.8.3")
    await eventually(lambda: client.answers == 3 and site.budget.waiting("127.0.8.3") == 1,
                     "the burst of 3 answered, the 4th waiting")
    assert client.received.count(b"HTTP/1.1 200 ") == 3
    client.transport.loseConnection()
