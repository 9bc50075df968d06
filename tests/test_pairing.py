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

from conftest import jpeg_bytes, multipart
from medimage_tx.pairing import (
    CODE_ALPHABET, FAILURES_IN_TOTAL, FAILURES_PER_ADDRESS, NOMATCH, BadPairingAnswer, PairingBook,
    guess_odds, parse_issue_answer, redeem_answer,
)
from processes import spawn
from test_relay import fast_retries, next_delivery

REPO = str(Path(__file__).parent.parent)


def book(tmp_path, clock) -> PairingBook:
    return PairingBook(tmp_path / "pairing.json", clock.seconds)


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
    assert restarted.redeem(issued.code, "a") == issued
    clock.advance(2)
    assert restarted.redeem(issued.code, "a") is None
    restarted.purge_expired()
    assert json.loads((tmp_path / "pairing.json").read_text()) == []


def test_wrong_guesses_hit_the_per_address_limit(tmp_path):
    clock = Clock()
    pairings = book(tmp_path, clock)
    live = pairings.issue("", "https://relay:5566", "")
    wrong = next(c for c in ("AAAA", "BBBB") if c != live.code)
    for _ in range(FAILURES_PER_ADDRESS):
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
    for attempt in range(5 * FAILURES_IN_TOTAL):
        guess = next(guesses)
        address = f"bot{attempt % 50}"
        if pairings.redeem(guess, address) is not None:
            found += 1
    # Unless the code is among the first FAILURES_IN_TOTAL guesses, nothing
    # after the lock reveals it, not even the right code.
    first_allowed = [c1 + c2 + c3 + c4 for c1 in CODE_ALPHABET for c2 in CODE_ALPHABET
                     for c3 in CODE_ALPHABET for c4 in CODE_ALPHABET][:FAILURES_IN_TOTAL]
    assert found == (1 if live.code in first_allowed else 0)
    assert pairings.redeem(live.code, "phone") is None  # locked for everyone
    clock.advance(3601)
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


@pytest_twisted.ensureDeferred
async def test_pc_pairs_phone_redeems_and_photo_arrives(start_server, http_client, tmp_path):
    relay = await start_server("relay", clock=Clock(), allowPhotosLeaving=True,
                               allowGettingRemotePhotos=False)
    target = tmp_path / "clinic"
    target.mkdir()
    pc = await start_server("pc", tune=fast_retries, backupTo=[target.as_posix()],
                            keepMaster=False, lockDown=True)
    page = await http_client.get(f"{pc.url}/pair?proxyServer={relay.url}&country=NZ")
    body = await text(page)
    assert page.code == 200
    code = re.search(r"letter-spacing:0.2em;font-family:monospace'>([A-Z0-9]{4})<", body).group(1)
    config = json.loads((pc.data / "config.json").read_text())
    paired_id = config["globalId"]
    assert config["readProxy"] == f"{relay.url}/read/{paired_id}"
    assert paired_id not in body  # the id is a secret, never shown

    # The phone redeems the code, the app's way and ours.
    for path in ("/med-genid.php", "/pair/code"):
        redeemed = await http_client.get(f"{relay.url}{path}?compare={code.lower()}")
        assert await text(redeemed) == f"{relay.url}/write/{paired_id}"
    wrong = await http_client.get(f"{relay.url}/med-genid.php?compare=ZZZZ")
    assert await text(wrong) == NOMATCH or code == "ZZZZ"

    delivered = next_delivery(pc)
    photo = jpeg_bytes()
    body_bytes, content_type = multipart(f"#{paired_id}-#NHID1234-arm.jpg", photo)
    upload = await http_client.post(f"{relay.url}/api/photo", data=body_bytes,
                                    headers={b"Content-Type": [content_type]})
    assert upload.code == 200
    assert await delivered == "NHID1234/arm.jpg"
    assert (target / "NHID1234" / "arm.jpg").read_bytes() == photo

    # Pairing again keeps the id, so phones stay paired.
    again = await http_client.get(f"{pc.url}/pair?proxyServer={relay.url}")
    assert again.code == 200
    await again.content()
    assert json.loads((pc.data / "config.json").read_text())["globalId"] == paired_id


@pytest_twisted.ensureDeferred
async def test_pair_page_errors_leave_config_untouched(start_server, http_client):
    pc = await start_server("pc")
    before = (pc.data / "config.json").read_text()
    unreachable = await http_client.get(f"{pc.url}/pair?proxyServer=http://127.0.0.1:9")
    assert unreachable.code == 502
    assert "Cannot reach the pairing service" in await text(unreachable)
    missing = await http_client.get(f"{pc.url}/pair")
    assert missing.code == 400
    await missing.content()
    # A server that answers, but not with a pairing: the PC's own status page.
    odd = await http_client.get(f"{pc.url}/pair?proxyServer={pc.url}&customPairing={pc.url}/")
    assert odd.code == 502
    assert "answer this server cannot use" in await text(odd)
    assert (pc.data / "config.json").read_text() == before


@pytest_twisted.ensureDeferred
async def test_pair_command_for_headless_pcs(start_server, http_client, tmp_path):
    relay = await start_server("relay", clock=Clock(), allowPhotosLeaving=True,
                               allowGettingRemotePhotos=False)
    pc = await start_server("headless", tune=fast_retries)
    config_path = pc.data / "config.json"
    process = spawn([sys.executable, "-m", "medimage_tx", "pair", "--relay", relay.url,
                     "--config", str(config_path)], REPO, env=None)
    assert await process.ended == 0, process.output
    code = re.search(rb"Pairing code: ([A-Z0-9]{4})", process.output).group(1).decode()
    paired_id = json.loads(config_path.read_text())["globalId"]
    assert relay.service.state.pairing.redeem(code, "phone").paired_id == paired_id

    # The running server picks the new pairing up from config.json.
    from medimage_tx.config_watch import ConfigWatcher

    watcher = next(s for s in pc.service if isinstance(s, ConfigWatcher))
    checked = watcher.check()  # None when the watcher's own timer got there first
    if checked is not None:
        await checked
    assert pc.service.state.config.globalId == paired_id
    delivered = next_delivery(pc)
    body, content_type = multipart(f"#{paired_id}-#P9-leg.jpg", jpeg_bytes())
    upload = await http_client.post(f"{relay.url}/api/photo", data=body,
                                    headers={b"Content-Type": [content_type]})
    assert upload.code == 200
    assert await delivered == "P9/leg.jpg"

    process = spawn([sys.executable, "-m", "medimage_tx", "pair", "--relay", "http://127.0.0.1:9",
                     "--config", str(config_path)], REPO, env=None)
    assert await process.ended == 1
    assert process.output.decode().strip().startswith("medimage: cannot reach the pairing service")
    assert json.loads(config_path.read_text())["globalId"] == paired_id
