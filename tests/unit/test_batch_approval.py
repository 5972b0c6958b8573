"""Batch approval: a second person decides on a batch; the requester never can."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.models import AuditEvent, BatchOrder, Credential, OutboxMessage
from producers.approvals import approve_batch, reject_batch
from producers.batch_import import import_batch
from producers.generate import write_users_csv
from schemas.errors import (
    FourEyesViolation,
    NotFound,
    PermanentError,
    StateConflict,
    ValidationFailed,
)
from schemas.policy import Policy


def imported_batch(store, tmp_path: Path, *, count: int = 4, policy: Policy | None = None) -> int:
    path = write_users_csv(tmp_path / "batch.csv", count)
    report = import_batch(
        store,
        path,
        policy=policy or Policy(),
        requested_by="Alice",
        reject_dir=tmp_path / "rejects",
    )
    assert report.batch_id is not None
    return report.batch_id


def snapshot(store, batch_id: int):
    """Everything an approval could change."""
    with store.tx() as session:
        batch = session.get(BatchOrder, batch_id)
        assert batch is not None
        card_states = session.scalars(
            select(Credential.state).where(Credential.batch_id == batch_id)
        ).all()
        return (
            batch.state,
            batch.approved_by,
            sorted(card_states),
            session.scalar(select(func.count()).select_from(AuditEvent)),
            session.scalar(select(func.count()).select_from(OutboxMessage)),
        )


@pytest.mark.parametrize("who", ["Alice", "alice", "  ALICE "])
def test_requester_cannot_approve_own_batch_and_nothing_changes(store, tmp_path, who):
    batch_id = imported_batch(store, tmp_path)
    before = snapshot(store, batch_id)

    with pytest.raises(FourEyesViolation):
        approve_batch(store, batch_id, by=who)

    assert snapshot(store, batch_id) == before


def test_the_four_eyes_error_says_the_decider_may_not_decide_what_they_requested(store, tmp_path):
    batch_id = imported_batch(store, tmp_path)
    with pytest.raises(FourEyesViolation) as refused:
        approve_batch(store, batch_id, by="alice")
    assert str(refused.value) == (
        f"alice may not approve or reject batch {batch_id}: they requested it (four-eyes rule)"
    )


def test_another_person_approves_every_card_and_queues_one_prepare_each(store, tmp_path):
    batch_id = imported_batch(store, tmp_path, count=4)

    report = approve_batch(store, batch_id, by="bob")

    assert (report.batch_id, report.approved) == (batch_id, 4)
    with store.tx() as session:
        batch = session.get(BatchOrder, batch_id)
        assert batch is not None
        assert (batch.state, batch.approved_by) == ("approved", "bob")
        cards = session.scalars(select(Credential).where(Credential.batch_id == batch_id)).all()
        queued = session.scalars(select(OutboxMessage)).all()
        approvals = session.scalars(select(AuditEvent).where(AuditEvent.action == "approve")).all()
    assert {c.state for c in cards} == {"approved"}
    assert sorted(m.payload["credential_id"] for m in queued) == sorted(c.id for c in cards)
    assert {m.queue for m in queued} == {"prepare"}
    assert len(approvals) == 5
    assert {e.actor for e in approvals} == {"bob"}


def test_approving_twice_is_a_state_conflict_and_changes_nothing(store, tmp_path):
    batch_id = imported_batch(store, tmp_path)
    approve_batch(store, batch_id, by="bob")
    before = snapshot(store, batch_id)

    with pytest.raises(StateConflict):
        approve_batch(store, batch_id, by="carol")

    assert snapshot(store, batch_id) == before


def test_batch_approved_by_policy_cannot_be_approved_again(store, tmp_path):
    batch_id = imported_batch(store, tmp_path, policy=Policy(approval_required=False))

    with pytest.raises(StateConflict):
        approve_batch(store, batch_id, by="bob")


def test_unknown_batch_is_not_found(store):
    with pytest.raises(NotFound, match="batch 999 does not exist") as caught:
        approve_batch(store, 999, by="bob")

    assert isinstance(caught.value, PermanentError)


def test_another_person_rejects_the_batch_and_every_card(store, tmp_path):
    batch_id = imported_batch(store, tmp_path, count=3)

    report = reject_batch(store, batch_id, by="bob", reason="wrong cost centre")

    assert (report.approved, report.rejected) == (0, 3)
    state, approved_by, card_states, _, outbox = snapshot(store, batch_id)
    assert (state, approved_by, card_states, outbox) == ("rejected", None, ["rejected"] * 3, 0)
    with pytest.raises(StateConflict):
        approve_batch(store, batch_id, by="carol")


def test_requester_cannot_reject_own_batch(store, tmp_path):
    batch_id = imported_batch(store, tmp_path)
    before = snapshot(store, batch_id)

    with pytest.raises(FourEyesViolation):
        reject_batch(store, batch_id, by="alice", reason="changed my mind")

    assert snapshot(store, batch_id) == before


def test_rejection_needs_a_reason(store, tmp_path):
    batch_id = imported_batch(store, tmp_path)

    with pytest.raises(ValidationFailed):
        reject_batch(store, batch_id, by="bob", reason="  ")


def test_approver_must_be_named(store, tmp_path):
    batch_id = imported_batch(store, tmp_path)

    with pytest.raises(ValidationFailed):
        approve_batch(store, batch_id, by=" ")
