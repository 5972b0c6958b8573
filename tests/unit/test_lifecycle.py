"""Deactivate, reactivate and lock a card or a user, and what that does to certificates:
on hold, released, revoked; a CRL after each change; a conflict changes nothing."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from sqlalchemy import select

from db.models import Certificate, Credential, OutboxMessage, SoftToken, User, utcnow
from producers import lifecycle
from schemas.errors import PermanentError, StateConflict, ValidationFailed
from schemas.states import CertUsage
from tests import factories

_serials = itertools.count(0x1000)


def _cert(s, *, credential_id=None, soft_token_id=None, usage="authentication") -> Certificate:
    now = utcnow()
    row = Certificate(
        state="valid",
        credential_id=credential_id,
        soft_token_id=soft_token_id,
        usage=usage,
        serial=f"{next(_serials):x}",
        subject="CN=test",
        not_before=now,
        not_after=now + dt.timedelta(days=365),
        pem="-",
    )
    s.add(row)
    s.flush()
    return row


def _card(s, user: User, state: str = "active", number: str | None = None) -> Credential:
    row = Credential(state=state, kind="card", user=user, requested_by="tests", card_number=number)
    s.add(row)
    s.flush()
    if state in ("active", "inactive", "issued"):
        for usage in CertUsage:
            _cert(s, credential_id=row.id, usage=usage.value)
    return row


@pytest.fixture
def holder(store):
    """A user with two active cards, one requested card and an issued soft token."""
    with store.tx() as s:
        user = factories.user(s)
        first = _card(s, user, number="1000000000000001")
        second = _card(s, user, number="1000000000000002")
        pending = _card(s, user, "requested")
        token = SoftToken(
            state="issued", user_id=user.id, token_type="user-p12", requested_by="alice"
        )
        s.add(token)
        s.flush()
        _cert(s, soft_token_id=token.id, usage="user-p12")
        return {
            "email": user.email,
            "cards": [first.id, second.id],
            "pending": pending.id,
            "token": token.id,
        }


def _cert_states(store, *, card=None, token=None) -> list[str]:
    with store.read() as s:
        stmt = select(Certificate.state).order_by(Certificate.id)
        if card is not None:
            stmt = stmt.where(Certificate.credential_id == card)
        if token is not None:
            stmt = stmt.where(Certificate.soft_token_id == token)
        return list(s.scalars(stmt))


def _state(store, model, row_id) -> str:
    with store.read() as s:
        return s.get(model, row_id).state


def _crl_messages(store) -> int:
    with store.read() as s:
        payloads = s.scalars(select(OutboxMessage.payload))
        return sum(1 for p in payloads if p.get("type") == "publish_crl")


def test_deactivating_a_card_holds_its_certificates_and_reactivating_releases_them(store, holder):
    card = holder["cards"][0]
    assert lifecycle.deactivate_card(store, str(card), by="olga", reason="on leave") == 3
    assert _state(store, Credential, card) == "inactive"
    assert _cert_states(store, card=card) == ["hold"] * 3
    assert _cert_states(store, card=holder["cards"][1]) == ["valid"] * 3
    assert _crl_messages(store) == 1
    assert lifecycle.reactivate_card(store, "1000000000000001", by="olga") == 3
    assert _state(store, Credential, card) == "active"
    assert _cert_states(store, card=card) == ["valid"] * 3
    assert _crl_messages(store) == 2


def test_locking_a_card_revokes_its_certificates_even_those_on_hold(store, holder):
    card = holder["cards"][0]
    lifecycle.deactivate_card(store, str(card), by="olga")
    assert lifecycle.lock_card(store, str(card), by="olga", reason="key_compromise") == 3
    assert _state(store, Credential, card) == "locked"
    with store.read() as s:
        certs = s.scalars(select(Certificate).where(Certificate.credential_id == card)).all()
    assert {(c.state, c.revocation_reason) for c in certs} == {("revoked", "key_compromise")}
    with pytest.raises(StateConflict):
        lifecycle.reactivate_card(store, str(card), by="olga")


def test_a_lock_needs_a_revocation_reason_and_a_bad_one_changes_nothing(store, holder):
    card = holder["cards"][0]
    with pytest.raises(ValidationFailed) as err:
        lifecycle.lock_card(store, str(card), by="olga", reason="because")
    assert err.value.field == "reason"
    assert _state(store, Credential, card) == "active"
    assert _cert_states(store, card=card) == ["valid"] * 3


def test_an_illegal_card_step_raises_state_conflict_and_changes_nothing(store, holder):
    with pytest.raises(StateConflict):
        lifecycle.reactivate_card(store, str(holder["cards"][0]), by="olga")
    with pytest.raises(StateConflict):
        lifecycle.deactivate_card(store, str(holder["pending"]), by="olga")
    assert _cert_states(store, card=holder["cards"][0]) == ["valid"] * 3
    assert _crl_messages(store) == 0


def test_deactivating_a_user_puts_every_card_and_certificate_of_theirs_out_of_use(store, holder):
    held = lifecycle.deactivate_user(store, holder["email"], by="olga", reason="left")
    assert held == 7
    with store.read() as s:
        user = s.scalars(select(User).where(User.email == holder["email"])).one()
        assert user.state == "inactive"
    for card in holder["cards"]:
        assert _state(store, Credential, card) == "inactive"
        assert _cert_states(store, card=card) == ["hold"] * 3
    assert _state(store, Credential, holder["pending"]) == "requested"
    assert _cert_states(store, token=holder["token"]) == ["hold"]
    assert _crl_messages(store) == 1


def test_reactivating_a_user_restores_exactly_what_their_deactivation_put_out(store, holder):
    own, other = holder["cards"]
    lifecycle.deactivate_card(store, str(own), by="olga", reason="card reported damaged")
    lifecycle.deactivate_user(store, holder["email"], by="olga")
    with pytest.raises(PermanentError, match="reactivate the user"):
        lifecycle.reactivate_card(store, str(other), by="olga")
    assert lifecycle.reactivate_user(store, holder["email"], by="olga") == 4
    assert _state(store, Credential, other) == "active"
    assert _cert_states(store, card=other) == ["valid"] * 3
    assert _state(store, Credential, own) == "inactive"  # deactivated on its own before
    assert _cert_states(store, card=own) == ["hold"] * 3
    assert _cert_states(store, token=holder["token"]) == ["valid"]


def test_locking_a_user_locks_or_cancels_everything_and_revokes_every_certificate(store, holder):
    with store.tx() as s:
        user = s.scalars(select(User).where(User.email == holder["email"])).one()
        waiting = SoftToken(
            state="requested", user_id=user.id, token_type="user-p12", requested_by="a"
        )
        s.add(waiting)
        s.flush()
        waiting_id = waiting.id
    lifecycle.deactivate_card(store, str(holder["cards"][0]), by="olga")
    revoked = lifecycle.lock_user(store, holder["email"], by="olga", reason="privilege_withdrawn")
    assert revoked == 7
    assert [_state(store, Credential, c) for c in holder["cards"]] == ["locked", "locked"]
    assert _state(store, Credential, holder["pending"]) == "cancelled"
    assert _state(store, SoftToken, holder["token"]) == "revoked"
    assert _state(store, SoftToken, waiting_id) == "cancelled"
    with store.read() as s:
        states = set(s.scalars(select(Certificate.state)))
    assert states == {"revoked"}
    with pytest.raises(StateConflict):
        lifecycle.reactivate_user(store, holder["email"], by="olga")


def test_a_user_with_a_card_at_a_station_is_refused_and_nothing_changes(store, holder):
    with store.tx() as s:
        user = s.scalars(select(User).where(User.email == holder["email"])).one()
        busy = _card(s, user, "producing").id
    for action in (
        lambda: lifecycle.deactivate_user(store, holder["email"], by="olga"),
        lambda: lifecycle.lock_user(store, holder["email"], by="olga", reason="unspecified"),
    ):
        with pytest.raises(PermanentError, match=f"card {busy} .* being produced"):
            action()
    assert _state(store, Credential, holder["cards"][0]) == "active"
    with store.read() as s:
        assert set(s.scalars(select(Certificate.state))) == {"valid"}
        assert s.scalars(select(User.state).where(User.email == holder["email"])).one() == (
            "active"
        )
