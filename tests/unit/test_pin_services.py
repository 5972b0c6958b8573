"""PIN services: Cardline's retry counter on the simulated chip, and remote unblock by
challenge/response with the card's admin key (the Windows minidriver's 3DES-ECB)."""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import subprocess

import pytest

from db.adminkey import (
    AdminKeyInvalid,
    ResponseRefused,
    check_response,
    compute_response,
    new_challenge,
)
from db.secrets import Secret
from schemas.errors import ConfigurationError, DeviceFault, ValidationFailed
from stations.pin import PinBlocked, PinCounter, PinGuard, SoftAdminKeyCard
from stations.sim import SimClock, SimFaults, SimTimings, SimToken

PIN, PUK, NEW_PIN, WRONG = Secret("123456"), Secret("87654321"), Secret("246810"), Secret("000000")

# Known answers computed by OpenSSL 3.0.19, not by our code:
#   printf '%s' CHALLENGE | xxd -r -p | openssl enc -des-ede3 -K KEY -nopad | xxd -p -u
# (-des-ede3 is three-key 3DES in ECB mode; -nopad because the challenge is one block).
# The second vector also came out of SoftHSM2 2.6.1 computing CKM_DES3_ECB on the token.
KNOWN_ANSWERS = [
    ("0123456789ABCDEFFEDCBA987654321089ABCDEF01234567", "5A3C8E1F00FF7B29", "99F55C0569D69668"),
    ("000102030405060708090A0B0C0D0E0F1011121314151617", "0123456789ABCDEF", "A2F7DC8BCB6EC00C"),
]
ADMIN_KEY = Secret(KNOWN_ANSWERS[0][0])


class CountingToken:
    """Wraps a token and counts how often the chip was asked for a PIN."""

    def __init__(self, token: SimToken) -> None:
        self.token = token
        self.asked = 0

    def verify_pin(self, pin: Secret) -> bool:
        self.asked += 1
        return self.token.verify_pin(pin)

    def unblock(self, puk: Secret, new_pin: Secret) -> None:
        self.token.unblock(puk, new_pin)


def _sim() -> SimToken:
    token = SimToken(SimTimings(), SimFaults(), SimClock(0), random.Random(7))
    token.initialise(label="C1", so_pin=PUK, pin=PIN)
    return token


# --- retry counting ---------------------------------------------------------------------


def test_a_right_pin_resets_the_count_of_wrong_ones():
    guard = PinGuard(_sim())
    assert guard.verify(WRONG) is False
    assert guard.verify(WRONG) is False
    assert guard.counter.tries_left == 1
    assert guard.verify(PIN) is True
    assert guard.counter == PinCounter()


def test_three_wrong_pins_block_the_card_and_the_chip_is_not_asked_again():
    chip = CountingToken(_sim())
    guard = PinGuard(chip)
    assert [guard.verify(WRONG) for _ in range(3)] == [False, False, False]
    assert guard.counter.blocked
    with pytest.raises(PinBlocked):
        guard.verify(PIN)
    assert chip.asked == 3


def test_cardline_blocks_at_its_own_limit_whatever_the_chip_allows():
    chip = _sim()  # the simulated chip itself allows 3 tries
    guard = PinGuard(chip, PinCounter(max_tries=2))
    guard.verify(WRONG)
    guard.verify(WRONG)
    assert chip.pin_tries_left == 1
    with pytest.raises(PinBlocked):
        guard.verify(PIN)


def test_a_block_reported_by_the_chip_blocks_the_counter_too():
    guard = PinGuard(_sim(), PinCounter(max_tries=5))
    for _ in range(3):
        assert guard.verify(WRONG) is False
    with pytest.raises(PinBlocked) as caught:
        guard.verify(PIN)
    assert isinstance(caught.value.__cause__, DeviceFault)
    assert guard.counter.blocked


def test_the_counter_persisted_between_sessions_keeps_counting():
    chip = _sim()
    first = PinGuard(chip)
    first.verify(WRONG)
    first.verify(WRONG)
    stored = dataclasses.asdict(first.counter)  # what a caller writes down
    assert stored == {"failures": 2, "max_tries": 3}
    second = PinGuard(chip, PinCounter(**stored))
    assert second.verify(WRONG) is False
    assert second.counter.blocked


def test_unblock_with_the_puk_resets_the_count_and_sets_the_new_pin():
    guard = PinGuard(_sim())
    for _ in range(3):
        guard.verify(WRONG)
    guard.unblock(PUK, NEW_PIN)
    assert guard.counter == PinCounter()
    assert guard.verify(NEW_PIN) is True


def test_a_wrong_puk_leaves_the_card_blocked():
    guard = PinGuard(_sim())
    for _ in range(3):
        guard.verify(WRONG)
    with pytest.raises(DeviceFault):
        guard.unblock(Secret("11111111"), NEW_PIN)
    assert guard.counter.blocked


@pytest.mark.parametrize(("failures", "max_tries"), [(-1, 3), (4, 3)])
def test_an_impossible_count_is_refused(failures, max_tries):
    with pytest.raises(ValueError, match="failures"):
        PinCounter(failures=failures, max_tries=max_tries)


def test_a_limit_below_one_is_a_configuration_error():
    with pytest.raises(ConfigurationError):
        PinCounter(max_tries=0)


# --- challenge/response -----------------------------------------------------------------


@pytest.mark.parametrize(("key", "challenge", "response"), KNOWN_ANSWERS)
def test_the_response_is_3des_ecb_of_the_challenge_as_openssl_computes_it(key, challenge, response):
    assert compute_response(Secret(key), challenge) == response
    check_response(Secret(key), challenge, response)


def test_the_response_agrees_with_openssl_on_random_keys_and_challenges():
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    for _ in range(3):
        key, challenge = os.urandom(24).hex(), os.urandom(8)
        ours = compute_response(Secret(key), challenge.hex())
        theirs = subprocess.run(
            ["openssl", "enc", "-des-ede3", "-K", key, "-nopad"],
            input=challenge,
            capture_output=True,
            check=True,
        ).stdout
        assert ours == theirs.hex().upper()


def test_operators_may_type_hex_in_any_case_with_spaces():
    _, challenge, response = KNOWN_ANSWERS[0]
    assert compute_response(ADMIN_KEY, "5a3c 8e1f 00ff 7b29") == response
    check_response(ADMIN_KEY, challenge, "99f5 5c05 69d6 9668")


def test_a_wrong_response_is_refused():
    _, challenge, response = KNOWN_ANSWERS[0]
    flipped = f"{int(response, 16) ^ 1:016X}"
    with pytest.raises(ResponseRefused):
        check_response(ADMIN_KEY, challenge, flipped)
    with pytest.raises(ResponseRefused):
        check_response(Secret(KNOWN_ANSWERS[1][0]), challenge, response)


@pytest.mark.parametrize("text", ["5A3C8E1F00FF7B", "5A3C8E1F00FF7B2900", "not hex at all!!"])
def test_a_malformed_challenge_or_response_is_refused_as_input(text):
    with pytest.raises(ValidationFailed):
        compute_response(ADMIN_KEY, text)
    with pytest.raises(ValidationFailed):
        check_response(ADMIN_KEY, KNOWN_ANSWERS[0][1], text)


@pytest.mark.parametrize("key", ["00" * 16, "zz" * 24, ""])
def test_a_malformed_admin_key_is_refused_without_showing_it(key):
    with pytest.raises(AdminKeyInvalid) as caught:
        compute_response(Secret(key), KNOWN_ANSWERS[0][1])
    if key:
        assert key not in str(caught.value)


def test_challenges_are_16_hex_digits_and_never_repeat():
    challenges = {new_challenge() for _ in range(1000)}
    assert len(challenges) == 1000
    assert all(len(c) == 16 and bytes.fromhex(c) for c in challenges)


# --- remote unblock, the card's side in software -------------------------------------------


def test_a_remote_unblock_resets_a_blocked_card_to_the_new_pin():
    chip = _sim()
    guard = PinGuard(chip)
    for _ in range(3):
        guard.verify(WRONG)
    card = SoftAdminKeyCard(chip, admin_key=ADMIN_KEY, puk=PUK)
    challenge = card.challenge()  # the operator reads it out ...
    response = compute_response(ADMIN_KEY, challenge)  # ... Cardline answers ...
    guard.unblock_by_response(card, response, NEW_PIN)  # ... the operator types it in.
    assert guard.counter == PinCounter()
    assert guard.verify(NEW_PIN) is True


def test_a_wrong_response_uses_up_the_challenge_and_leaves_the_card_blocked():
    chip = _sim()
    guard = PinGuard(chip, PinCounter(failures=3))
    card = SoftAdminKeyCard(chip, admin_key=ADMIN_KEY, puk=PUK)
    challenge = card.challenge()
    with pytest.raises(ResponseRefused):
        guard.unblock_by_response(card, "00" * 8, NEW_PIN)
    assert guard.counter.blocked
    # The right answer to the used-up challenge no longer works either.
    with pytest.raises(ResponseRefused):
        card.unblock_with_response(compute_response(ADMIN_KEY, challenge), NEW_PIN)
    assert chip.verify_pin(PIN) is True


def test_an_old_response_does_not_answer_a_new_challenge():
    chip = _sim()
    card = SoftAdminKeyCard(chip, admin_key=ADMIN_KEY, puk=PUK)
    old = compute_response(ADMIN_KEY, card.challenge())
    card.challenge()
    with pytest.raises(ResponseRefused):
        card.unblock_with_response(old, NEW_PIN)


def test_a_card_with_a_malformed_admin_key_fails_when_it_is_set_up():
    with pytest.raises(AdminKeyInvalid):
        SoftAdminKeyCard(_sim(), admin_key=Secret("00" * 8), puk=PUK)
