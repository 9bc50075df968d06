"""
Pairing (PROTOCOL.md A5, B4): codes, redemption, brute-force limits, and
the full phone -> relay -> PC path after pairing.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import pytest_twisted

from twisted.internet.task import Clock

from central_pairing import pair_on_page, shown_code
import documented
from conftest import jpeg_bytes, multipart
from medimage_tx.relay_store.pairing_codes import (
    CODE_ALPHABET,
    NOMATCH,
    BadPairingAnswer,
    PairingBook,
    guess_odds,
    parse_issue_answer,
    redeem_answer,
)
from processes import spawn
from test_relay import fast_retries, next_delivery

REPO = str(Path(__file__).parent.parent)


def book(tmp_path, clock) -> PairingBook:
    return PairingBook(clock.seconds)


def test_codes_have_no_look_alikes_and_ids_are_new_or_kept(tmp_path):
    pairings = book(tmp_path, Clock())
    first = pairings.issue("", "https://relay:5566", "NZ")
    assert len(first.code) == 4 and set(first.code) <= set(CODE_ALPHABET)
    assert not set("0O1IL") & set(CODE_ALPHABET)
    assert re.fullmatch(r"[A-Za-z0-9]{18}", first.paired_id)
    again = pairings.issue(first.paired_id, "https://relay:5566", "NZ")
    assert again.paired_id == first.paired_id and again.code != first.code


def test_redeem_is_case_insensitive_and_any_number_of_phones_may_use_a_code(tmp_path):
    pairings = book(tmp_path, Clock())
    issued = pairings.issue("", "https://relay:5566", "")
    for phone in range(5):
        assert pairings.redeem(issued.code.lower(), f"10.0.0.{phone}") == issued
    assert redeem_answer(issued) == f"https://relay:5566/write/{issued.paired_id}"


def test_codes_expire_after_an_hour_and_survive_restart(tmp_path):
    clock = Clock()
    pairings = book(tmp_path, clock)
    issued = pairings.issue("", "https://relay:5566", "")
    clock.advance(3599)
    restarted = book(tmp_path, clock)
    restarted.restore(json.loads(json.dumps(pairings.snapshot())))
    assert restarted.redeem(issued.code, "a") == issued
    clock.advance(2)
    assert restarted.redeem(issued.code, "a") is None
    assert restarted.snapshot()["codes"] == []
    older = book(tmp_path, clock)
    older.restore([vars(issued) | {"expires": clock.seconds() + 10}])  # the file before limits were saved
    assert older.redeem(issued.code, "a").paired_id == issued.paired_id


def test_wrong_guesses_hit_the_per_address_limit(tmp_path):
    clock = Clock()
    pairings = book(tmp_path, clock)
    live = pairings.issue("", "https://relay:5566", "")
    wrong = next(c for c in ("AAAA", "BBBB") if c != live.code)
    for _ in range(documented.GUESSES_PER_ADDRESS):
        assert pairings.redeem(wrong, "attacker") is None
    # Now even the right code is not revealed to that address...
    assert pairings.redeem(live.code, "attacker") is None
    # ...while a phone elsewhere still pairs.
    assert pairings.redeem(live.code, "phone") == live
    clock.advance(3601)
    assert pairings.redeem(live.code, "attacker") is None  # expired by now anyway


def test_wrong_guesses_from_many_addresses_lock_redemption(tmp_path):
    clock = Clock()
    pairings = book(tmp_path, clock)
    live = pairings.issue("", "https://relay:5566", "")
    guesses = (c1 + c2 + c3 + c4 for c1 in CODE_ALPHABET for c2 in CODE_ALPHABET
               for c3 in CODE_ALPHABET for c4 in CODE_ALPHABET)
    found = 0
    for attempt in range(5 * documented.GUESSES_IN_TOTAL):
        guess = next(guesses)
        address = f"bot{attempt % 50}"
        if pairings.redeem(guess, address) is not None:
            found += 1
    # Unless the code is among the first documented.GUESSES_IN_TOTAL guesses, nothing
    # after the lock reveals it, not even the right code.
    first_allowed = [c1 + c2 + c3 + c4 for c1 in CODE_ALPHABET for c2 in CODE_ALPHABET
                     for c3 in CODE_ALPHABET for c4 in CODE_ALPHABET][:documented.GUESSES_IN_TOTAL]
    assert found == (1 if live.code in first_allowed else 0)
    assert pairings.redeem(live.code, "phone") is None  # locked for everyone
    # Counted in minute buckets: a failure counts for an hour and at most a minute more.
    clock.advance(3600 + 59)
    fresh = pairings.issue("", "https://relay:5566", "")
    assert pairings.redeem(fresh.code, "phone") is None
    clock.advance(2)
    fresh = pairings.issue("", "https://relay:5566", "")
    assert pairings.redeem(fresh.code, "phone") == fresh  # the window moved on


def test_documented_odds():
    assert len(CODE_ALPHABET) ** 4 == 923_521
    assert guess_odds() == pytest.approx(100 / 923_521)
    assert guess_odds() < 1.1e-4
    protocol = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    assert "923,521" in protocol and "1 in 9,235" in protocol


@pytest.mark.parametrize("answer", ["", "nomatch", "ABCD", "ABCD short https://r", "ABCD uPSE4UWHmJ8XqFUqvf ftp://x"])
def test_bad_issue_answers_are_refused(answer):
    with pytest.raises(BadPairingAnswer):
        parse_issue_answer(answer)


async def text(response) -> str:
    return (await response.content()).decode()


async def send_photo_through(http_client, write_url: str, name: str, photo: bytes) -> int:
    """
    What the app does with a redeemed pairing: split at /write/, upload to
    <relay>/api/photo with the id as the first folder.
    """
    relay, paired_id = write_url.split("/write/")
    body, content_type = multipart(f"#{paired_id}-{name}", photo)
    upload = await http_client.post(f"{relay}/api/photo", data=body, headers={b"Content-Type": [content_type]})
    await upload.content()
    return upload.code


@pytest_twisted.ensureDeferred
async def test_pc_pairs_through_the_central_service_and_a_photo_arrives(
        start_server, http_client, tmp_path, central):
    """
    Issue 10 item 5: the PC registers its code with (a stand-in for)
    AtomJump's central service, exactly as the original PC; the code is
    mixed case and redeems only as given; a photo then goes phone -> our
    relay -> PC.
    """
    relay = await start_server("relay", clock=Clock(), allowPhotosLeaving=True,
                               allowGettingRemotePhotos=False)
    target = tmp_path / "clinic"
    target.mkdir()
    pc = await start_server("pc", tune=fast_retries, backupTo=[target.as_posix()],
                            keepMaster=False, lockDown=True)
    response, page = await pair_on_page(http_client, pc.url, proxyServer=relay.url, country="NZ",
                                        customPairing=central.url)
    assert response.code == 200, page
    code = shown_code(page)
    assert code.lower() != code and code.upper() != code  # shown exactly as issued
    config = json.loads((pc.data / "config.json").read_text())
    paired_id = config["globalId"]
    assert config["readProxy"] == f"{relay.url}/read/{paired_id}"
    assert paired_id not in page  # the id is a secret, never shown

    # What the PC sent, as the original: <URL>?<query>, form fields, no guid yet.
    [registered] = central.requests
    assert registered.method == "POST"
    assert registered.query == {"country": ["NZ"], "proxyServer": [relay.url], "customPairing": [central.url]}
    assert registered.form == {"proxyServer": [relay.url], "country": ["NZ"]}

    # The phone redeems at the central service: as given, not in other case.
    wrong_case = await http_client.get(f"{central.url}?compare={code.swapcase()}")
    assert await text(wrong_case) == NOMATCH
    redeemed = await http_client.get(f"{central.url}?compare={code}")
    write_url = await text(redeemed)
    assert write_url == f"{relay.url}/write/{paired_id}"

    delivered = next_delivery(pc)
    photo = jpeg_bytes()
    assert await send_photo_through(http_client, write_url, "#NHID1234-arm.jpg", photo) == 200
    assert await delivered == "NHID1234/arm.jpg"
    assert (target / "NHID1234" / "arm.jpg").read_bytes() == photo

    # Pairing again sends the id (same relay, same service): phones stay paired.
    response, page = await pair_on_page(http_client, pc.url, proxyServer=relay.url,
                                        customPairing=central.url)
    assert response.code == 200 and shown_code(page) != code
    assert central.requests[-1].form["guid"] == [paired_id]
    assert json.loads((pc.data / "config.json").read_text())["globalId"] == paired_id


@pytest_twisted.ensureDeferred
async def test_relay_takes_any_id_of_16_to_20_characters(start_server, http_client):
    """
    Ids come from whichever pairing service the PC used (AtomJump's too):
    our relay queues uploads for any 16-20 letters and digits, and no other.
    """
    relay = await start_server("relay", clock=Clock(), allowPhotosLeaving=True,
                               allowGettingRemotePhotos=False)
    for paired_id in ["aB3dE5gH7jK9mN1p", "ZyXwVuTsRqPoNmLkJiHg", "uPSE4UWHmJ8XqFUqvf"]:
        code = await send_photo_through(http_client, f"{relay.url}/write/{paired_id}", "#P1-x.jpg", jpeg_bytes())
        assert code == 200, paired_id
        waiting = await http_client.get(f"{relay.url}/check=%23{paired_id}-%23P1-x.jpg")
        assert await text(waiting) == "true", paired_id
    for paired_id in ["aB3dE5gH7jK9mN1", "ZyXwVuTsRqPoNmLkJiHgF"]:
        code = await send_photo_through(http_client, f"{relay.url}/write/{paired_id}", "#P1-x.jpg", jpeg_bytes())
        assert code != 200, paired_id


@pytest_twisted.ensureDeferred
async def test_pc_pairs_through_our_relays_own_code_service(start_server, http_client):
    relay = await start_server("relay", clock=Clock(), allowPhotosLeaving=True,
                               allowGettingRemotePhotos=False)
    pc = await start_server("pc", tune=fast_retries)
    response, page = await pair_on_page(http_client, pc.url, proxyServer=relay.url,
                                        customPairing=relay.url + "/med-genid.php")
    assert response.code == 200, page
    code = shown_code(page)
    paired_id = json.loads((pc.data / "config.json").read_text())["globalId"]
    for path in ("/med-genid.php", "/pair/code"):  # our relay's codes ignore case
        redeemed = await http_client.get(f"{relay.url}{path}?compare={code.lower()}")
        assert await text(redeemed) == f"{relay.url}/write/{paired_id}"


@pytest_twisted.ensureDeferred
async def test_pair_page_shows_a_form_and_contacts_nobody(start_server, http_client, central):
    pc = await start_server("pc")
    page = await http_client.get(f"{pc.url}/pair?proxyServer=http://relay.example:5566"
                                 f"&customPairing={central.url}&country=NZ")
    body = await text(page)
    assert page.code == 200 and "<form method='post' action='/pair'>" in body
    assert "value='http://relay.example:5566'" in body and "AtomJump" in body
    assert "The link you followed filled in this form" in body
    assert central.requests == [] and "id='code'" not in body


@pytest_twisted.ensureDeferred
async def test_pair_page_errors_leave_config_untouched(start_server, http_client, central):
    pc = await start_server("pc")
    before = (pc.data / "config.json").read_text()
    response, page = await pair_on_page(http_client, pc.url, proxyServer="http://127.0.0.1:9",
                                        customPairing="http://127.0.0.1:9/med-genid.php")
    assert response.code == 502 and "Cannot reach the pairing service" in page
    response, page = await pair_on_page(http_client, pc.url, proxyServer="")
    assert response.code == 400 and "relay address must be" in page
    central.answer = lambda form: (200, b"<html>an intranet page, not a pairing</html>")
    response, page = await pair_on_page(http_client, pc.url, proxyServer="http://127.0.0.1:9",
                                        customPairing=central.url)
    assert response.code == 502 and "was not a pairing" in page and "intranet" not in page
    assert (pc.data / "config.json").read_text() == before


@pytest_twisted.ensureDeferred
async def test_pair_command_for_headless_pcs(start_server, http_client, tmp_path, central):
    relay = await start_server("relay", clock=Clock(), allowPhotosLeaving=True,
                               allowGettingRemotePhotos=False)
    pc = await start_server("headless", tune=fast_retries)
    config_path = pc.data / "config.json"
    process = spawn([sys.executable, "-m", "medimage_tx", "pair", "--relay", relay.url,
                     "--config", str(config_path), "--custom-pairing", central.url], REPO, env=None)
    assert await process.exited() == 0, process.output
    code = re.search(rb"Pairing code: ([A-Za-z0-9]{4})\n", process.output).group(1).decode()
    paired_id = json.loads(config_path.read_text())["globalId"]
    redeemed = await http_client.get(f"{central.url}?compare={code}")
    write_url = await text(redeemed)
    assert write_url == f"{relay.url}/write/{paired_id}"

    # The running server picks the new pairing up from config.json.
    from medimage_tx.config_watch import ConfigWatcher

    watcher = next(s for s in pc.service if isinstance(s, ConfigWatcher))
    checked = watcher.check()  # None when the watcher's own timer got there first
    if checked is not None:
        await checked
    assert pc.service.state.config.globalId == paired_id
    delivered = next_delivery(pc)
    assert await send_photo_through(http_client, write_url, "#P9-leg.jpg", jpeg_bytes()) == 200
    assert await delivered == "P9/leg.jpg"

    # Another relay would mean a new id: refused without --new-id, nothing sent.
    sent = len(central.requests)
    process = spawn([sys.executable, "-m", "medimage_tx", "pair", "--relay", "http://127.0.0.1:9",
                     "--config", str(config_path), "--custom-pairing", central.url], REPO, env=None)
    assert await process.exited() == 1
    assert b"gives it a new id" in process.output and b"--new-id" in process.output
    assert len(central.requests) == sent
    process = spawn([sys.executable, "-m", "medimage_tx", "pair", "--config", str(config_path),
                     "--custom-pairing", "http://127.0.0.1:9/med-genid.php", "--relay", relay.url,
                     "--new-id"], REPO, env=None)
    assert await process.exited() == 1
    assert process.output.decode().strip().startswith("medimage: Cannot reach the pairing service")
    assert json.loads(config_path.read_text())["globalId"] == paired_id


def test_issue_answer_parsed_strictly_with_one_line_reasons():
    issued = parse_issue_answer(" aB3d uPSE4UWHmJ8XqFUqvf https://relay.example:5566/ NZ\n")
    assert (issued.code, issued.paired_id, issued.proxy_server) == ("aB3d", "uPSE4UWHmJ8XqFUqvf", "https://relay.example:5566")
    assert issued.read_proxy == "https://relay.example:5566/read/uPSE4UWHmJ8XqFUqvf"
    assert parse_issue_answer("AB uPSE4UWHmJ8XqFUqvf http://r").code == "AB"  # three words are enough
    reasons = {
        "ABCD uPSE4UWHmJ8XqFUqvf": "expected '<code> <id> <relay>'",
        "A uPSE4UWHmJ8XqFUqvf https://r": "the code in the answer is not a pairing code",
        "ABCDEFGHJKMNP uPSE4UWHmJ8XqFUqvf https://r": "the code in the answer is not a pairing code",
        "AB-D uPSE4UWHmJ8XqFUqvf https://r": "the code in the answer is not a pairing code",
        "ABCD uPSE4UWHmJ8X-qFUqvf https://r": "the id in the answer is not a valid id",
        "ABCD uPSE4UWHmJ8XqFUqvf relay:5566": "the relay address in the answer is not an http(s) address",
    }
    for answer, reason in reasons.items():
        with pytest.raises(BadPairingAnswer) as refused:
            parse_issue_answer(answer)
        assert str(refused.value) == reason


def test_redeem_answer_as_the_original():
    from medimage_tx.relay_store.pairing_codes import Pairing

    pairing = Pairing("ABCD", "uPSE4UWHmJ8XqFUqvf", "https://relay:5566/", "NZ", 0.0)
    assert redeem_answer(pairing) == "https://relay:5566/write/uPSE4UWHmJ8XqFUqvf"
    assert redeem_answer(None) == NOMATCH == "nomatch"


def test_issuing_limits_are_the_documented_ones():
    from medimage_tx.errors import Rejected, TryLater
    from medimage_tx.relay_store.pairing_codes import PairingBook

    clock = Clock()
    book = PairingBook(clock.seconds)
    for _ in range(documented.ISSUES_PER_ADDRESS):
        book.issue("", "https://relay", "NZ", "clinic")
    with pytest.raises(TryLater) as refused:
        book.issue("", "https://relay", "NZ", "clinic")
    assert refused.value.status == 429 and 1 <= refused.value.retry_after <= documented.CODE_LIFETIME_SECONDS + 61
    assert str(refused.value) == "Too many pairing codes were asked for; try again later."
    assert book.issue("", "https://relay", "NZ", "another clinic").code  # per address
    longest = ("g" * documented.LONGEST_GUID, "h" * documented.LONGEST_PROXY_SERVER, "c" * documented.LONGEST_COUNTRY)
    assert book.issue(*longest, "third").country == longest[2]
    for too_long in range(3):
        fields = list(longest)
        fields[too_long] += "x"
        with pytest.raises(Rejected, match="at most 64, 256 and 64 characters"):
            book.issue(*fields, "fourth")


def test_live_codes_are_capped_at_the_documented_number():
    from medimage_tx.errors import TryLater
    from medimage_tx.relay_store.pairing_codes import PairingBook

    clock = Clock()
    book = PairingBook(clock.seconds)
    for n in range(documented.MAX_LIVE_CODES):
        book.issue("", "https://relay", "", f"10.0.{n // 30}.1")
    assert book.live_codes() == documented.MAX_LIVE_CODES
    clock.advance(60)
    with pytest.raises(TryLater) as refused:
        book.issue("", "https://relay", "", "newcomer")
    assert refused.value.status == 429
    assert refused.value.retry_after == documented.CODE_LIFETIME_SECONDS - 60 + 1  # until the oldest expires
    clock.advance(documented.CODE_LIFETIME_SECONDS)
    book.purge_expired()
    assert book.live_codes() == 0


def test_guess_counts_and_codes_survive_a_restart_through_the_snapshot():
    from medimage_tx.relay_store.pairing_codes import PairingBook

    clock = Clock()
    before = PairingBook(clock.seconds)
    live = before.issue("", "https://relay", "", "clinic")
    for _ in range(documented.GUESSES_PER_ADDRESS):
        assert before.redeem("ZZZZ" if live.code != "ZZZZ" else "YYYY", "attacker") is None
    saved = json.loads(json.dumps(before.snapshot()))  # as pairing.json holds it
    after = PairingBook(clock.seconds)
    after.restore(saved)
    assert after.redeem(live.code, "attacker") is None  # no fresh guesses after a restart
    assert after.redeem(live.code, "phone") == live
    old_shape = PairingBook(clock.seconds)
    old_shape.restore(saved["codes"])  # the older file: a list of codes
    assert old_shape.redeem(live.code, "phone") == live
    clock.advance(documented.CODE_LIFETIME_SECONDS)
    expired = PairingBook(clock.seconds)
    expired.restore(saved)
    assert expired.live_codes() == 0


def test_successful_pairings_never_count_against_the_guess_limit():
    """
    A clinic pairs many phones from behind one address: matches are not failures.
    """
    from medimage_tx.relay_store.pairing_codes import PairingBook

    book = PairingBook(Clock().seconds)
    live = book.issue("", "https://relay", "", "clinic")
    for _ in range(3 * documented.GUESSES_PER_ADDRESS):
        assert book.redeem(live.code, "clinic NAT") == live


#: What tells a clinic to type a code into the MedImage app, on each of the
#: three ways to pair (the /pair page, /admin/pair, `medimage-tx pair`).
APP_STEPS = ("tap the large circle", "Enter this code on the phone", "enter the code")


def pair_command(*args: str, env: dict | None = None):
    import os

    return spawn([sys.executable, "-m", "medimage_tx", "pair", *args], REPO,
                 env=None if env is None else {**os.environ, **env})


@pytest_twisted.ensureDeferred
async def test_a_relays_own_code_is_never_offered_to_the_medimage_app(start_server, http_client):
    # The app redeems codes only at AtomJump's central service (protocol.md,
    # Pairing): a code from a relay's own service is for clients pointed at it.
    from test_web_admin import csrf_of, page, post

    relay = await start_server("relay", clock=Clock(), allowPhotosLeaving=True,
                               allowGettingRemotePhotos=False)
    own_service = relay.url + "/med-genid.php"
    pc = await start_server("pc")
    shown = []
    response, body = await pair_on_page(http_client, pc.url, proxyServer=relay.url, customPairing=own_service)
    assert response.code == 200, body
    shown.append(("/pair", body))
    token, cookie = csrf_of(*await page(http_client, pc.url + "/admin/pair"))
    response, body = await post(http_client, pc.url + "/admin/pair",
                                {"way": "own", "proxyServer": relay.url, "customPairing": own_service,
                                 "csrf": token}, pc.url, cookie)
    assert response.code == 200, body
    shown.append(("/admin/pair", body))
    process = pair_command("--relay", relay.url, "--custom-pairing", own_service,
                           "--config", str(pc.data / "config.json"))
    assert await process.exited() == 0, process.output
    shown.append(("medimage-tx pair", process.output.decode()))
    for where, said in shown:
        said = " ".join(said.split())
        assert not [step for step in APP_STEPS if step in said], (where, said)
        assert "case-sensitive" not in said, (where, said)  # the relay's codes ignore case
        assert "the MedImage app cannot redeem it" in said, (where, said)


@pytest_twisted.ensureDeferred
async def test_a_central_code_goes_into_the_app_exactly_as_shown(start_server, central, tmp_path):
    # MEDIMAGE_CENTRAL_PAIRING points the PC at the stand-in as AtomJump's service.
    relay = await start_server("relay", clock=Clock(), allowPhotosLeaving=True,
                               allowGettingRemotePhotos=False)
    process = pair_command("--relay", relay.url, "--config", str(tmp_path / "pc" / "config.json"),
                           env={"MEDIMAGE_CENTRAL_PAIRING": central.url})
    assert await process.exited() == 0, process.output
    said = process.output.decode()
    code = re.search(r"Pairing code: (\w+)\n", said).group(1)
    assert code in central.codes and "tap the large circle" in said
    # The central service compares codes as given.
    assert ("Letters are case-sensitive" in said) == (code.lower() != code.upper())


@pytest_twisted.ensureDeferred
async def test_offline_pairing_names_the_host_the_firewall_must_allow(tmp_path):
    from medimage_tx.pc.pairing import CENTRAL_PAIRING_URL, unreachable

    process = pair_command("--relay", "http://127.0.0.1:9", "--custom-pairing", "http://127.0.0.1:9/med-genid.php",
                           "--config", str(tmp_path / "config.json"))
    assert await process.exited() == 1
    said = process.output.decode().strip()
    assert said.startswith("medimage: Cannot reach the pairing service at 127.0.0.1 (port 9)"), said
    assert "firewall" in said and said.count("\n") == 0
    # AtomJump's: the host a clinic's firewall must let this PC reach.
    assert "medimage-pair.atomjump.com (port 443)" in unreachable(CENTRAL_PAIRING_URL)
