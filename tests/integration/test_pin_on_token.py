"""Remote unblock checked on the chip (SoftHSM2): the card's 3DES admin key is stored on
the token as a CKK_DES3 secret key, the expected response is computed there with
CKM_DES3_ECB, and the PIN is then reset as SO. Cardline's retry counter blocks the card
even though SoftHSM2 itself never locks a PIN.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pkcs11
import pytest
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11
from structlog.testing import capture_logs

from db import pkcs11 as token_lib
from db.adminkey import ResponseRefused, compute_response
from db.secrets import Secret
from schemas.errors import DeviceFault
from stations.pin import PinBlocked, PinCounter, PinGuard
from stations.pkcs11_token import Pkcs11AdminKeyCard, Pkcs11Token
from tests.hw.softhsm import SoftHsm, shared_softhsm, unique

pytestmark = pytest.mark.hardware

PIN, PUK, NEW_PIN = Secret("716253"), Secret("90817263"), Secret("384756")
TRANSPORT = Secret("transport-4410")
WRONG = Secret("000000")
# The first known answer of tests/unit/test_pin_services.py (computed by OpenSSL).
KAT_KEY, KAT_CHALLENGE, KAT_RESPONSE = (
    "0123456789ABCDEFFEDCBA987654321089ABCDEF01234567",
    "5A3C8E1F00FF7B29",
    "99F55C0569D69668",
)


@pytest.fixture
def hsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHsm:
    return shared_softhsm(tmp_path_factory)


@pytest.fixture
def admin_key() -> Secret:
    return Secret(os.urandom(24).hex())


@pytest.fixture
def token(hsm: SoftHsm, admin_key: Secret) -> Iterator[Pkcs11Token]:
    """A personalised card holding its admin key, its session closed."""
    hopper = unique("pin")
    hsm.make_blank(f"{hopper}-1", TRANSPORT.reveal())
    token = Pkcs11Token(hsm.module, token_label=f"{hopper}-*", transport_pin=TRANSPORT)
    token.initialise(label="C0000077", so_pin=PUK, pin=PIN)
    token.store_admin_key(admin_key)
    token.close()
    yield token
    token.close()


def _admin_key_object(token: Pkcs11Token) -> tuple[pkcs11.Session, Any]:
    """A public session on the card and its admin key object (for inspection; the key is
    Any because python-pkcs11 adds encrypt() to it at run time)."""
    assert token.chip_label is not None
    library = token_lib.library(token.module)
    session = token_lib.open_session(library.token(label=token.chip_label))
    [key] = token_lib.find(
        session, {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: "C0000077 admin key"}
    )
    return session, key


def test_a_remote_unblock_is_checked_on_the_chip_and_sets_the_new_pin(token, admin_key):
    guard = PinGuard(token)
    with capture_logs() as events:
        for _ in range(3):
            assert guard.verify(WRONG) is False
        with pytest.raises(PinBlocked):
            guard.verify(PIN)  # SoftHSM2 would have let it in; Cardline does not
        card = Pkcs11AdminKeyCard(token, puk=PUK)
        challenge = card.challenge()
        guard.unblock_by_response(card, compute_response(admin_key, challenge), NEW_PIN)
        assert guard.counter == PinCounter()
        assert guard.verify(NEW_PIN) is True
        assert token.verify_pin(PIN) is False
    for event in events:
        for secret in (PIN, PUK, NEW_PIN, admin_key):
            assert secret.reveal() not in repr(event)


def test_a_wrong_response_is_refused_on_the_chip_and_uses_up_the_challenge(token, admin_key):
    card = Pkcs11AdminKeyCard(token, puk=PUK)
    challenge = card.challenge()
    with pytest.raises(ResponseRefused):
        card.unblock_with_response(
            compute_response(Secret(os.urandom(24).hex()), challenge), NEW_PIN
        )
    with pytest.raises(ResponseRefused):
        card.unblock_with_response(compute_response(admin_key, challenge), NEW_PIN)
    assert token.verify_pin(PIN) is True


def test_the_chip_computes_the_known_answer_with_ckm_des3_ecb(hsm, token):
    token.verify_pin(PIN)
    token.store_admin_key(Secret(KAT_KEY))
    token.close()
    session, key = _admin_key_object(token)
    try:
        answer = key.encrypt(bytes.fromhex(KAT_CHALLENGE), mechanism=Mechanism.DES3_ECB)
        assert answer.hex().upper() == KAT_RESPONSE
    finally:
        session.close()


def test_the_admin_key_never_leaves_the_chip(hsm, token):
    session, key = _admin_key_object(token)
    try:
        with pytest.raises(p11.AttributeSensitive):
            key[Attribute.VALUE]
        assert key[Attribute.KEY_TYPE] == KeyType.DES3
        assert key[Attribute.ENCRYPT]
        assert not key[Attribute.DECRYPT]
        assert not key[Attribute.EXTRACTABLE]
    finally:
        session.close()
    listing = hsm.tool("--token-label", token.chip_label, "--list-objects").stdout
    block = listing.split("Secret Key Object; DES3")[1].split("Object;")[0]
    assert "label:      C0000077 admin key" in block
    assert "sensitive" in block


def test_a_card_without_an_admin_key_refuses_the_unblock(hsm):
    hopper = unique("pin")
    hsm.make_blank(f"{hopper}-1", TRANSPORT.reveal())
    token = Pkcs11Token(hsm.module, token_label=f"{hopper}-*", transport_pin=TRANSPORT)
    token.initialise(label="C0000077", so_pin=PUK, pin=PIN)
    card = Pkcs11AdminKeyCard(token, puk=PUK)
    card.challenge()
    with pytest.raises(DeviceFault) as caught:
        card.unblock_with_response("00" * 8, NEW_PIN)
    assert caught.value.code == "CKR_KEY_HANDLE_INVALID"
    token.close()


def test_a_wrong_puk_on_the_card_side_is_a_chip_fault(token, admin_key):
    card = Pkcs11AdminKeyCard(token, puk=Secret("11111111"))
    challenge = card.challenge()
    with pytest.raises(DeviceFault) as caught:
        card.unblock_with_response(compute_response(admin_key, challenge), NEW_PIN)
    assert caught.value.code == "CKR_PIN_INCORRECT"
    assert token.verify_pin(PIN) is True


def test_the_holder_changes_the_pin_with_the_old_one(token):
    token.change_pin(PIN, NEW_PIN)
    assert token.verify_pin(NEW_PIN) is True
    assert token.verify_pin(PIN) is False
    with pytest.raises(DeviceFault) as caught:
        token.change_pin(PIN, Secret("121212"))
    assert caught.value.code == "CKR_PIN_INCORRECT"
    assert token.verify_pin(NEW_PIN) is True
