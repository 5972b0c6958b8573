"""Temporary cards, renewal at the desk and device incidents on a running embedded line: what the
operator does, what the line and the PKI worker make of it, and what ends up valid."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from db.models import Certificate, Credential, Incident
from ops.config import Settings
from ops.line import EmbeddedLine, LineOptions
from ops.store import open_migrated
from producers import cards, incidents, lifecycle, tempcards, users
from producers.approvals import approve_batch
from schemas.errors import FourEyesViolation, PermanentError, StateConflict
from schemas.policy import Policy

PERSON = {
    "first_name": "Ada",
    "last_name": "Lovelace",
    "email": "ada@example.org",
    "upn": "ada@corp.example.org",
    "organization": "Analytical Engines",
    "org_unit": "R&D",
}


@pytest.fixture
def world(tmp_path: Path):
    settings = Settings(data_dir=tmp_path / "data")
    store = open_migrated(settings)
    return settings, store


def _run(settings: Settings) -> None:
    line = EmbeddedLine(settings, settings.policy, LineOptions(stations=1, time_scale=0, seed=3))
    line.start()
    try:
        assert line.wait_drained(timeout_s=120)
    finally:
        line.stop()


def _user(store, policy: Policy, email: str = "ada@example.org") -> str:
    users.create_user(store, {**PERSON, "email": email, "upn": email}, by="rita", policy=policy)
    return email


def _certs(store, card_id: int) -> list[Certificate]:
    with store.read() as s:
        rows = list(
            s.scalars(
                select(Certificate)
                .where(Certificate.credential_id == card_id)
                .order_by(Certificate.id)
            )
        )
        for row in rows:
            s.expunge(row)
        return rows


def _valid(store, card_id: int) -> dict[str, Certificate]:
    return {c.usage: c for c in _certs(store, card_id) if c.state == "valid"}


def _spki(pem: str) -> bytes:
    return (
        x509.load_pem_x509_certificate(pem.encode())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _card(store, card_id: int) -> Credential:
    with store.read() as s:
        cred = s.get(Credential, card_id)
        assert cred is not None
        s.expunge(cred)
        return cred


def test_temporary_cards_from_a_stock_run_are_assigned_extended_withdrawn_and_locked(world):
    settings, store = world
    policy = settings.policy
    batch, ids = tempcards.request_stock(store, 2, by="alice", policy=policy)
    approve_batch(store, batch, by="bob")
    _run(settings)
    assert [_card(store, i).state for i in ids] == ["unassigned", "unassigned"]
    device = _valid(store, ids[0])
    assert set(device) == {"authentication", "signature", "encryption"}
    assert all("Temporary card" in c.subject for c in device.values())
    stock_pin = _card(store, ids[0]).pin_sealed

    email = _user(store, policy)
    assert tempcards.assign(store, str(ids[0]), email, by="olga", policy=policy) == "assigned"
    with pytest.raises(PermanentError, match="allows 1"):
        tempcards.assign(store, str(ids[1]), email, by="olga", policy=policy)
    _run(settings)  # the card goes to the line's desk, which writes the assignment
    card = _card(store, ids[0])
    assert card.pin_letter_path is not None
    assert Path(card.pin_letter_path).is_file()
    assert card.pin_sealed != stock_pin  # a new PIN for the holder
    assert card.assigned_until is not None
    days = (card.assigned_until - dt.datetime.now(dt.UTC)).days
    assert 12 <= days <= 14
    personal = {u: c for u, c in _valid(store, ids[0]).items() if c.on_chip}
    assert set(personal) == {"authentication", "signature", "encryption"}
    for usage in ("authentication", "signature"):
        cert = personal[usage]
        assert "Ada Lovelace" in cert.subject
        assert _spki(cert.pem) != _spki(device[usage].pem)  # new keys, made on the chip
        # ... valid until the end of the assignment, not for years.
        assert cert.not_after <= card.assigned_until + dt.timedelta(days=1)
    old = {c.serial: c for c in _certs(store, ids[0])}
    for usage in ("authentication", "signature"):
        assert old[device[usage].serial].revocation_reason == "superseded"

    tempcards.extend(store, str(ids[0]), by="olga", policy=policy, days=7)
    extended = _card(store, ids[0]).assigned_until
    assert extended is not None
    assert (extended - card.assigned_until).days == 7
    _run(settings)
    longer = _valid(store, ids[0])
    assert longer["authentication"].serial != personal["authentication"].serial
    assert longer["authentication"].not_after > personal["authentication"].not_after

    assert tempcards.withdraw(store, str(ids[0]), by="olga", reason="returned") == 3
    back = _card(store, ids[0])
    assert (back.state, back.user_id, back.assigned_until) == ("unassigned", None, None)
    assert _valid(store, ids[0]) == {}
    _run(settings)  # wiped at the desk: nothing of Ada's left on the chip
    wiped = _card(store, ids[0])
    assert (wiped.pin_sealed, wiped.puk_sealed) != (back.pin_sealed, back.puk_sealed)
    assert not any(c.on_chip for c in _certs(store, ids[0]))

    first_holders = {_spki(c.pem) for c in _certs(store, ids[0])}
    other = _user(store, policy, "grace@example.org")
    tempcards.assign(store, str(ids[0]), other, by="olga", policy=policy)
    _run(settings)
    again = _valid(store, ids[0])
    assert set(again) == {"authentication", "signature"}  # Ada's escrowed key is gone
    assert all("Lovelace" in c.subject and c.on_chip for c in again.values())  # PERSON's name
    assert not first_holders & {_spki(c.pem) for c in again.values()}  # no key reused
    assert lifecycle.lock_card(store, str(ids[0]), by="olga", reason="key_compromise") == 2
    assert _valid(store, ids[0]) == {}


def test_renewal_at_the_desk_gives_the_card_new_keys_and_certificates_and_keeps_the_pin(world):
    settings, store = world
    policy = settings.policy
    email = _user(store, policy)
    (card_id,) = cards.request_cards(store, [email], by="rita", policy=policy)
    cards.approve_card(store, str(card_id), by="bob")
    _run(settings)
    before = _card(store, card_id)
    first = _valid(store, card_id)
    assert cards.renew_card(store, str(card_id), by="olga") == "active"
    _run(settings)  # the line's simulated holder brings the card to its desk
    after = _card(store, card_id)
    renewed = _valid(store, card_id)
    assert set(renewed) == set(first)
    for usage in ("authentication", "signature"):  # generated on the chip: new keys
        assert renewed[usage].serial != first[usage].serial
        assert _spki(renewed[usage].pem) != _spki(first[usage].pem)
        assert renewed[usage].on_chip
    assert renewed["encryption"].serial == first["encryption"].serial  # escrowed: kept
    assert (after.pin_sealed, after.puk_sealed) == (before.pin_sealed, before.puk_sealed)
    old = {first[u].serial for u in ("authentication", "signature")}
    revoked = [c for c in _certs(store, card_id) if c.serial in old]
    assert {(c.state, c.revocation_reason, c.on_chip) for c in revoked} == {
        ("revoked", "superseded", False)
    }


def _active_card(settings: Settings, store, email: str | None = None) -> int:
    policy = settings.policy
    holder = email or _user(store, policy)
    (card_id,) = cards.request_cards(store, [holder], by="rita", policy=policy)
    cards.approve_card(store, str(card_id), by="bob")
    _run(settings)
    return card_id


def test_a_lost_card_is_deactivated_and_its_approved_replacement_produced(world):
    settings, store = world
    policy = settings.policy
    card_id = _active_card(settings, store)
    incident = incidents.declare(
        store, str(card_id), "lost", by="ada-helpdesk", policy=policy, steps=settings.approvals
    )
    assert (incident.temporary, incident.state) == (False, "open")
    assert _card(store, card_id).state == "inactive"
    assert {c.state for c in _certs(store, card_id)} == {"hold"}
    assert incident.replacement_id is not None
    assert _card(store, incident.replacement_id).state == "requested"
    with pytest.raises(FourEyesViolation):
        incidents.approve(store, incident.id, by="ada-helpdesk", policy=policy)
    closed = incidents.approve(store, incident.id, by="bob", policy=policy)
    assert closed.state == "closed"
    _run(settings)
    assert _card(store, incident.replacement_id).state == "active"
    with pytest.raises(StateConflict):
        incidents.cancel(store, incident.id, by="ada-helpdesk")


@pytest.mark.parametrize(
    ("kind", "reason"), [("stolen", "key_compromise"), ("damaged", "cessation_of_operation")]
)
def test_a_stolen_or_damaged_card_is_locked_with_the_matching_reason(world, kind, reason):
    settings, store = world
    card_id = _active_card(settings, store)
    incidents.declare(
        store, str(card_id), kind, by="helpdesk", policy=settings.policy, steps=settings.approvals
    )
    assert _card(store, card_id).state == "locked"
    assert {(c.state, c.revocation_reason) for c in _certs(store, card_id)} == {("revoked", reason)}


def test_a_forgotten_card_gets_a_temporary_card_and_cancelling_restores_the_card(world):
    settings, store = world
    policy = settings.policy
    card_id = _active_card(settings, store)
    first = incidents.declare(
        store, str(card_id), "forgotten", by="helpdesk", policy=policy, steps=settings.approvals
    )
    assert first.temporary is True
    with pytest.raises(PermanentError, match="no temporary card in stock"):
        incidents.approve(store, first.id, by="bob", policy=policy)
    assert incidents.cancel(store, first.id, by="helpdesk").state == "cancelled"
    assert _card(store, card_id).state == "active"
    assert {c.state for c in _certs(store, card_id)} == {"valid"}

    batch, stock = tempcards.request_stock(store, 1, by="alice", policy=policy)
    approve_batch(store, batch, by="bob")
    _run(settings)
    second = incidents.declare(
        store, str(card_id), "forgotten", by="helpdesk", policy=policy, steps=settings.approvals
    )
    done = incidents.approve(store, second.id, by="bob", policy=policy)
    assert done.replacement_id == stock[0]
    _run(settings)
    temp = _card(store, stock[0])
    assert temp.state == "assigned"
    assert temp.user_id == _card(store, card_id).user_id
    with store.read() as s:
        assert [i.state for i in s.scalars(select(Incident).order_by(Incident.id))] == [
            "cancelled",
            "closed",
        ]


def test_one_open_incident_per_card(world):
    settings, store = world
    card_id = _active_card(settings, store)
    incidents.declare(
        store, str(card_id), "lost", by="helpdesk", policy=settings.policy, steps=settings.approvals
    )
    from schemas.errors import AlreadyExists

    with pytest.raises(AlreadyExists):
        incidents.declare(
            store,
            str(card_id),
            "stolen",
            by="helpdesk",
            policy=settings.policy,
            steps=settings.approvals,
        )


def test_a_deactivated_holder_loses_their_temporary_card_and_nothing_of_theirs_stays_on_it(world):
    settings, store = world
    policy = settings.policy
    batch, (temp_id,) = tempcards.request_stock(store, 1, by="alice", policy=policy)
    approve_batch(store, batch, by="bob")
    _run(settings)
    email = _user(store, policy)
    tempcards.assign(store, str(temp_id), email, by="olga", policy=policy)
    _run(settings)
    assert _valid(store, temp_id)

    lifecycle.deactivate_user(store, email, by="olga", reason="left")
    back = _card(store, temp_id)
    assert (back.state, back.user_id) == ("unassigned", None)
    assert _valid(store, temp_id) == {}  # revoked at once, whatever the chip
    _run(settings)
    assert not any(c.on_chip for c in _certs(store, temp_id))
