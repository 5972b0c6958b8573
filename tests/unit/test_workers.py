"""The prepare, pki and notify services: each does its work once, however often called."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import func, select
from structlog.testing import capture_logs

from db import keys
from db.models import AuditEvent, Certificate, Credential, OutboxMessage, utcnow
from db.secrets import context
from schemas.messages import IssueCertificate, PrepareCard, SendPinLetter
from schemas.policy import Policy
from schemas.states import CertUsage
from tests import factories
from workers.ca import CertificateAuthority
from workers.context import WorkerContext
from workers.letters import mask_card_number
from workers.notify import send_pin_letter
from workers.pki import issue_certificate
from workers.prepare import card_number, prepare_card


@pytest.fixture
def ctx(store, box, tmp_path):
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", box)
    return WorkerContext(
        store=store,
        box=box,
        policy=Policy(),
        ca=ca,
        letters_dir=tmp_path / "letters",
        crl_dir=tmp_path / "crl",
    )


def _count(store, model, *where):
    with store.read() as s:
        stmt = select(func.count()).select_from(model)
        for w in where:
            stmt = stmt.where(w)
        return s.scalar(stmt)


def _approved(store) -> int:
    with store.tx() as s:
        return factories.credential(s, "approved").id


def _queued(store):
    with store.read() as s:
        return [
            IssueCertificate.model_validate(m.payload) if m.actor == "pki" else m.payload
            for m in s.scalars(select(OutboxMessage).order_by(OutboxMessage.id))
        ]


def test_prepare_seals_secrets_and_asks_for_the_escrow_certificate_before_the_card_is_ready(
    ctx, store
):
    cid = _approved(store)
    prepare_card(ctx, PrepareCard(credential_id=cid))
    with store.read() as s:
        cred = s.get(Credential, cid)
        pin = ctx.box.open(cred.pin_sealed, context=context("credential", cid, "pin")).reveal()
        puk = ctx.box.open(cred.puk_sealed, context=context("credential", cid, "puk")).reveal()
        queued = s.scalars(select(OutboxMessage)).all()
    # No station may see the card before its escrowed key is certified.
    assert cred.state == "approved"
    assert cred.card_number == card_number(cid)
    assert len(pin) == 6
    assert pin.isdigit()
    assert len(puk) == 8
    assert puk.isdigit()
    assert [m.actor for m in queued] == ["pki"]
    for message in queued:
        assert pin not in str(message.payload)
        assert puk not in str(message.payload)


def test_the_escrow_certificate_makes_the_card_ready_and_sends_it_to_its_line(ctx, store):
    cid = _approved(store)
    prepare_card(ctx, PrepareCard(credential_id=cid))
    (request,) = _queued(store)
    issue_certificate(ctx, request)
    with store.read() as s:
        assert s.get(Credential, cid).state == "ready"
        produce = s.scalars(select(OutboxMessage).where(OutboxMessage.actor == "produce")).all()
    assert [m.payload["credential_id"] for m in produce] == [cid]


def test_a_lost_escrow_request_is_asked_again_for_the_same_sealed_key(ctx, store):
    cid = _approved(store)
    prepare_card(ctx, PrepareCard(credential_id=cid))
    with store.read() as s:
        sealed = s.get(Credential, cid).escrow_key_sealed
    prepare_card(ctx, PrepareCard(credential_id=cid))  # the reconciler's re-drive
    first, again = _queued(store)
    issue_certificate(ctx, again)
    with store.read() as s:
        cred = s.get(Credential, cid)
        cert = s.scalars(select(Certificate).where(Certificate.credential_id == cid)).one()
    assert cred.escrow_key_sealed == sealed
    assert cred.state == "ready"
    key = serialization.load_pem_private_key(
        ctx.box.open(sealed, context=context("credential", cid, "escrow_key")).reveal().encode(),
        None,
    )
    issued = x509.load_pem_x509_certificate(cert.pem.encode())
    assert issued.public_key().public_numbers() == key.public_key().public_numbers()
    issue_certificate(ctx, first)  # the first request, arriving late, issues nothing
    assert _count(store, Certificate) == 1


def test_a_second_prepare_delivery_changes_no_secret_and_no_state(ctx, store):
    cid = _approved(store)
    prepare_card(ctx, PrepareCard(credential_id=cid))
    with store.read() as s:
        sealed = s.get(Credential, cid).pin_sealed
    events = _count(store, AuditEvent)
    prepare_card(ctx, PrepareCard(credential_id=cid))
    with store.read() as s:
        assert s.get(Credential, cid).pin_sealed == sealed
    assert _count(store, AuditEvent) == events


def test_card_numbers_are_sixteen_digits_and_pass_luhn():
    for cid in (1, 42, 99999):
        number = card_number(cid)
        digits = [int(d) for d in number]
        checksum = sum(digits[-1::-2]) + sum(sum(divmod(2 * d, 10)) for d in digits[-2::-2])
        assert len(number) == 16
        assert checksum % 10 == 0


def _csr(common_name="test"):
    return keys.csr_pem(keys.generate("ec-p256"), common_name)


def _attempt(store):
    with store.tx() as s:
        attempt = factories.attempt(s)
        return attempt.credential_id, attempt.id


def test_pki_issues_one_certificate_however_often_the_request_arrives(ctx, store):
    cid, aid = _attempt(store)
    job = IssueCertificate(
        credential_id=cid, attempt_id=aid, usage=CertUsage.AUTHENTICATION, csr_pem=_csr()
    )
    issue_certificate(ctx, job)
    issue_certificate(ctx, job)
    with store.read() as s:
        certs = s.scalars(select(Certificate)).all()
    assert len(certs) == 1
    cert = x509.load_pem_x509_certificate(certs[0].pem.encode())
    assert cert.issuer == ctx.ca.issuing.subject
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH in eku


def test_pki_refuses_a_csr_whose_signature_does_not_verify(ctx, store):
    cid, aid = _attempt(store)
    pem = _csr()
    der = bytearray(x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0xFF  # flip bits inside the signature
    forged = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()
    from workers.ca import CsrRejected

    with pytest.raises(CsrRejected, match="signature"):
        issue_certificate(
            ctx,
            IssueCertificate(
                credential_id=cid, attempt_id=aid, usage=CertUsage.SIGNATURE, csr_pem=forged
            ),
        )
    assert _count(store, Certificate) == 0


def test_pki_issues_nothing_for_an_attempt_that_was_spoiled(ctx, store):
    with store.tx() as s:
        attempt = factories.attempt(s, "spoiled")
        cid, aid = attempt.credential_id, attempt.id
    issue_certificate(
        ctx,
        IssueCertificate(
            credential_id=cid, attempt_id=aid, usage=CertUsage.AUTHENTICATION, csr_pem=_csr()
        ),
    )
    assert _count(store, Certificate) == 0


def test_notify_writes_one_pin_letter_for_two_deliveries(ctx, store):
    cid = _approved(store)
    prepare_card(ctx, PrepareCard(credential_id=cid))
    with store.tx() as s:
        cred = s.get(Credential, cid)
        cred.state = "active"  # as if produced; the letter needs only the sealed PIN
        cred.valid_until = utcnow() + dt.timedelta(days=3)
    send_pin_letter(ctx, SendPinLetter(credential_id=cid))
    events = _count(store, AuditEvent)
    send_pin_letter(ctx, SendPinLetter(credential_id=cid))
    with store.read() as s:
        path = s.get(Credential, cid).pin_letter_path
    assert path is not None
    assert path.endswith(".pdf")
    assert list((ctx.letters_dir).iterdir()) == [ctx.letters_dir / path.split("/")[-1]]
    assert _count(store, AuditEvent) == events


def test_no_log_event_of_prepare_or_notify_carries_the_full_card_number(ctx, store):
    with capture_logs() as events:
        cid = _approved(store)
        prepare_card(ctx, PrepareCard(credential_id=cid))
        with store.tx() as s:
            cred = s.get(Credential, cid)
            cred.state = "active"  # as if produced; the letter needs only the sealed PIN
            cred.valid_until = utcnow() + dt.timedelta(days=3)
        send_pin_letter(ctx, SendPinLetter(credential_id=cid))
    number = card_number(cid)
    assert {"prepare.done", "pin_letter.written", "notify.pin_letter"} <= {
        e["event"] for e in events
    }
    for event in events:
        assert number not in repr(event), event
    (notified,) = [e for e in events if e["event"] == "notify.pin_letter"]
    assert notified["card_number"] == mask_card_number(number)
