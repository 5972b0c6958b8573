"""Soft tokens (seed 004): request, four-eyes approval, issuance exactly once, delivery,
"display password" by role, revoke; the passphrase never leaks."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12
from sqlalchemy import func, select, update
from structlog.testing import capture_logs

from db.models import AuditEvent, Certificate, OutboxMessage, SoftToken
from producers import softtokens
from schemas.errors import Forbidden, FourEyesViolation, StateConflict, ValidationFailed
from schemas.messages import DeliverSoftToken, IssueSoftToken, PublishCrl
from schemas.pki import PkiConfig
from schemas.policy import Policy
from schemas.states import RevocationReason
from tests import factories
from workers.ca import CertificateAuthority
from workers.context import WorkerContext
from workers.p12 import verify_passphrase
from workers.relay import StallPolicy, redrive
from workers.softtokens import deliver_softtoken, issue_softtoken

PKI = PkiConfig()


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
        pki=PKI,
        softtokens_dir=tmp_path / "softtokens",
    )


@pytest.fixture
def holder(store) -> str:
    with store.tx() as s:
        return factories.user(s).email


def _messages(store, kind: type) -> list[dict]:
    """The payloads (without their type tag) of every ``kind`` message in the outbox."""
    tag = kind.model_fields["type"].default
    with store.read() as s:
        payloads = [dict(r.payload) for r in s.scalars(select(OutboxMessage))]
    return [{k: v for k, v in p.items() if k != "type"} for p in payloads if p.get("type") == tag]


def _token(store, token_id: int) -> SoftToken:
    with store.read() as s:
        token = s.get(SoftToken, token_id)
        assert token is not None
        s.expunge(token)
        return token


def _issued(store, ctx, holder, kind: str = "user-p12") -> int:
    (tid,) = softtokens.request_softtokens(store, holder, [kind], by="alice", pki=PKI)
    softtokens.approve(store, tid, by="bob")
    issue_softtoken(ctx, IssueSoftToken(soft_token_id=tid))
    return tid


def test_a_request_makes_one_token_per_selected_type_waiting_for_approval(store, holder):
    ids = softtokens.request_softtokens(
        store, holder, ["user-p12", "email-signing"], by="alice", pki=PKI
    )
    views = softtokens.list_softtokens(store, user=holder)
    assert [(v.id, v.token_type, v.state) for v in views] == [
        (ids[0], "user-p12", "requested"),
        (ids[1], "email-signing", "requested"),
    ]
    assert _messages(store, IssueSoftToken) == []  # nothing is issued before approval


def test_without_required_approval_a_request_goes_straight_to_the_pki_worker(store, holder):
    pki = PkiConfig(softtoken_approval=False)
    (tid,) = softtokens.request_softtokens(store, holder, ["user-p12"], by="alice", pki=pki)
    assert _token(store, tid).state == "approved"
    assert _messages(store, IssueSoftToken) == [{"soft_token_id": tid}]


@pytest.mark.parametrize(
    ("types", "message"),
    [
        (["no-such-type"], "no-such-type"),
        ([], "at least one"),
        (["user-p12", "user-p12"], "twice"),
    ],
)
def test_a_bad_type_selection_is_refused_naming_the_field(store, holder, types, message):
    with pytest.raises(ValidationFailed) as err:
        softtokens.request_softtokens(store, holder, types, by="alice", pki=PKI)
    assert err.value.field == "token_types"
    assert message in str(err.value)
    with store.read() as s:
        assert s.scalar(select(func.count()).select_from(SoftToken)) == 0


def test_a_requester_can_neither_approve_nor_reject_their_own_request(store, holder):
    (tid,) = softtokens.request_softtokens(store, holder, ["user-p12"], by="alice", pki=PKI)
    with pytest.raises(FourEyesViolation):
        softtokens.approve(store, tid, by="alice")
    with pytest.raises(FourEyesViolation):
        softtokens.reject(store, tid, by="alice", reason="changed my mind")
    assert _token(store, tid).state == "requested"
    assert softtokens.reject(store, tid, by="bob", reason="no business need") == "rejected"
    with pytest.raises(StateConflict):
        softtokens.approve(store, tid, by="carol")


def test_an_inactive_user_gets_no_soft_token(store):
    with store.tx() as s:
        email = factories.user(s, "inactive").email
    with pytest.raises(Exception, match="inactive"):
        softtokens.request_softtokens(store, email, ["user-p12"], by="alice", pki=PKI)


def test_issuing_twice_makes_one_certificate_and_one_p12(store, ctx, holder):
    tid = _issued(store, ctx, holder)
    first = _token(store, tid)
    issue_softtoken(ctx, IssueSoftToken(soft_token_id=tid))  # the redelivered message
    again = _token(store, tid)
    assert again.state == "issued"
    assert again.p12_sealed == first.p12_sealed
    with store.read() as s:
        certs = list(s.scalars(select(Certificate).where(Certificate.soft_token_id == tid)))
    assert len(certs) == 1
    assert certs[0].state == "valid"
    assert certs[0].credential_id is None
    assert _messages(store, DeliverSoftToken) == [{"soft_token_id": tid}]


def test_the_p12_holds_the_key_of_its_certificate_and_the_chain(store, ctx, holder, box):
    tid = _issued(store, ctx, holder)
    deliver_softtoken(ctx, DeliverSoftToken(soft_token_id=tid))
    token = _token(store, tid)
    passphrase = softtokens.reveal_passphrase(
        store, box, tid, by="olga", roles=frozenset({"softtoken_admin"})
    )
    assert token.p12_path is not None
    blob = pkcs12.load_pkcs12(
        (ctx.softtokens_dir / f"{tid}-user-p12.p12").read_bytes(),
        passphrase.reveal().encode(),
    )
    assert blob.key is not None
    assert blob.cert is not None
    assert blob.key.public_key() == blob.cert.certificate.public_key()
    san = blob.cert.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.RFC822Name) == [holder]
    chain = {c.certificate.subject for c in blob.additional_certs}
    assert chain == {ctx.ca.issuing.subject, ctx.ca.root.subject}
    assert verify_passphrase(passphrase, token.passphrase_hash or "")


def test_a_second_delivery_writes_nothing_new(store, ctx, holder):
    tid = _issued(store, ctx, holder)
    deliver_softtoken(ctx, DeliverSoftToken(soft_token_id=tid))
    p12 = ctx.softtokens_dir / f"{tid}-user-p12.p12"
    stamp = p12.stat().st_mtime_ns
    assert p12.stat().st_mode & 0o777 == 0o600
    deliver_softtoken(ctx, DeliverSoftToken(soft_token_id=tid))
    assert p12.stat().st_mtime_ns == stamp
    with store.read() as s:
        delivered = s.scalars(select(AuditEvent).where(AuditEvent.action == "deliver")).all()
    assert len(delivered) == 1


def test_displaying_the_passphrase_needs_the_role_and_is_audited(store, ctx, holder, box):
    tid = _issued(store, ctx, holder)
    with pytest.raises(Forbidden) as err:
        softtokens.reveal_passphrase(store, box, tid, by="rita", roles=frozenset({"requester"}))
    assert "softtoken_admin" in str(err.value)
    with store.read() as s:
        shown = s.scalars(select(AuditEvent).where(AuditEvent.action == "reveal_passphrase")).all()
    assert shown == []
    secret = softtokens.reveal_passphrase(store, box, tid, by="olga", roles=frozenset({"admin"}))
    assert verify_passphrase(secret, _token(store, tid).passphrase_hash or "")
    with store.read() as s:
        (event,) = s.scalars(select(AuditEvent).where(AuditEvent.action == "reveal_passphrase"))
    assert event.actor == "olga"
    assert event.entity_id == str(tid)


def test_a_requested_token_has_no_passphrase_to_display(store, holder, box):
    (tid,) = softtokens.request_softtokens(store, holder, ["user-p12"], by="alice", pki=PKI)
    with pytest.raises(StateConflict):
        softtokens.reveal_passphrase(store, box, tid, by="olga", roles=frozenset({"admin"}))


def test_revoking_a_soft_token_revokes_its_certificate_and_publishes_a_crl(store, ctx, holder):
    tid = _issued(store, ctx, holder)
    state = softtokens.revoke(store, tid, by="olga", reason=RevocationReason.KEY_COMPROMISE)
    assert state == "revoked"
    with store.read() as s:
        cert = s.scalars(select(Certificate).where(Certificate.soft_token_id == tid)).one()
    assert cert.state == "revoked"
    assert cert.revocation_reason == "key_compromise"
    assert len(_messages(store, PublishCrl)) == 1
    with pytest.raises(StateConflict):
        softtokens.revoke(store, tid, by="olga", reason=RevocationReason.KEY_COMPROMISE)


def test_revoking_takes_only_an_operator_reason(store, ctx, holder):
    tid = _issued(store, ctx, holder)
    with pytest.raises(ValidationFailed) as err:
        softtokens.revoke(store, tid, by="olga", reason=RevocationReason.CERTIFICATE_HOLD)
    assert err.value.field == "reason"
    assert _token(store, tid).state == "issued"


def test_the_passphrase_never_appears_in_logs_outbox_audit_or_errors(store, ctx, holder, box):
    with capture_logs() as events:
        tid = _issued(store, ctx, holder)
        deliver_softtoken(ctx, DeliverSoftToken(soft_token_id=tid))
        secret = softtokens.reveal_passphrase(
            store, box, tid, by="olga", roles=frozenset({"softtoken_admin"})
        )
        try:
            softtokens.reveal_passphrase(store, box, tid, by="x", roles=frozenset())
        except Forbidden as exc:
            error = f"{exc!r} {exc}"
    phrase = secret.reveal()
    assert phrase not in repr(secret)
    assert phrase not in str(secret)
    assert phrase not in repr(events)
    assert phrase not in error
    with store.read() as s:
        token = s.get(SoftToken, tid)
        assert token is not None
        assert phrase not in (token.passphrase_sealed or "")
        assert phrase not in (token.passphrase_hash or "")
        assert all(phrase not in str(m.payload) for m in s.scalars(select(OutboxMessage)))
        audit = [f"{e.reason} {e.actor}" for e in s.scalars(select(AuditEvent))]
    assert all(phrase not in line for line in audit)


def test_the_reconciler_redrives_a_token_whose_message_was_lost(store, ctx, holder):
    (tid,) = softtokens.request_softtokens(store, holder, ["user-p12"], by="alice", pki=PKI)
    softtokens.approve(store, tid, by="bob")
    stall = StallPolicy(approved_s=30)
    assert redrive(store, stall) == 0  # just approved: not stalled yet
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    with store.tx() as s:
        s.execute(update(SoftToken).where(SoftToken.id == tid).values(updated_at=long_ago))
    assert redrive(store, stall) == 1
    assert redrive(store, stall) == 0  # not again until it stalls again
    assert _messages(store, IssueSoftToken) == [{"soft_token_id": tid}] * 2
    issue_softtoken(ctx, IssueSoftToken(soft_token_id=tid))
    with store.tx() as s:
        s.execute(
            update(SoftToken)
            .where(SoftToken.id == tid)
            .values(updated_at=long_ago, redriven_at=None)
        )
    assert redrive(store, stall) == 1
    assert _messages(store, DeliverSoftToken).count({"soft_token_id": tid}) == 2
