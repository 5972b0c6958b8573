"""Every allowed and every disallowed transition, generated from the tables in schemas."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from db import transition as tr
from db.audit import verify_chain
from db.models import AuditEvent, OutboxMessage
from schemas.errors import StateConflict
from schemas.messages import PrepareCard
from schemas.states import MACHINES
from tests import factories

ALLOWED = [
    (m.name, state, edge.action, edge.target)
    for m in MACHINES.values()
    for edge in m.edges
    for state in sorted(edge.sources)
]
DISALLOWED = [
    (m.name, state, edge.action)
    for m in MACHINES.values()
    for edge in m.edges
    for state in sorted(m.states - edge.sources)
]


def _counts(session):
    return (
        session.scalar(select(func.count()).select_from(AuditEvent)),
        session.scalar(select(func.count()).select_from(OutboxMessage)),
    )


@pytest.mark.parametrize(("machine", "state", "action", "target"), ALLOWED)
def test_allowed_transition_moves_state_bumps_version_audits_and_queues(
    store, machine, state, action, target
):
    with store.tx() as s:
        row = factories.entity(s, machine, state)
        version = row.version
        audits, messages = _counts(s)
        new = tr.transition(
            s,
            row,
            action,
            actor="tester",
            reason="because",
            messages=[PrepareCard(credential_id=1)],
        )
        assert new == target
    with store.tx() as s:
        fresh = s.get(type(row), row.id)
        assert (fresh.state, fresh.version) == (target, version + 1)
        event = s.scalars(select(AuditEvent).order_by(AuditEvent.seq.desc())).first()
        assert (event.entity, event.action, event.from_state, event.to_state, event.actor) == (
            machine,
            action,
            state,
            target,
            "tester",
        )
        assert _counts(s) == (audits + 1, messages + 1)
        assert verify_chain(s).ok


@pytest.mark.parametrize(("machine", "state", "action"), DISALLOWED)
def test_disallowed_transition_raises_state_conflict_and_changes_nothing(
    store, machine, state, action
):
    with store.tx() as s:
        row = factories.entity(s, machine, state)
        version = row.version
        before = _counts(s)
        with pytest.raises(StateConflict) as err:
            tr.transition(s, row, action, actor="tester", messages=[PrepareCard(credential_id=1)])
        assert err.value.current == state
        assert _counts(s) == before
        s.refresh(row)
        assert (row.state, row.version) == (state, version)


def test_lost_race_raises_state_conflict_and_the_winner_stands(store):
    with store.tx() as s:
        card_id = factories.credential(s, "requested").id
    stale_session = store.sessions()
    stale = stale_session.get(factories.Credential, card_id)
    stale_session.commit()  # keep the loaded (now stale) object without a transaction
    with store.tx() as s:
        tr.transition(s, s.get(factories.Credential, card_id), "approve", actor="winner")
    with pytest.raises(StateConflict, match="another writer"), stale_session.begin():
        tr.transition(stale_session, stale, "reject", actor="loser")
    with store.tx() as s:
        card = s.get(factories.Credential, card_id)
        assert card.state == "approved"
        actors = s.scalars(select(AuditEvent.actor).where(AuditEvent.entity == "card")).all()
        assert "loser" not in actors
    stale_session.close()


def test_create_refuses_a_non_initial_state(store):
    row = factories.Credential(state="active", kind="card", requested_by="x")
    with store.tx() as s, pytest.raises(StateConflict):
        tr.create(s, row, actor="tester")


def test_every_state_is_reachable_or_initial():
    for machine in MACHINES.values():
        reachable = set(machine.initial) | {e.target for e in machine.edges}
        assert reachable == set(machine.states), machine.name


def test_tampering_with_an_audit_event_breaks_the_chain(store):
    with store.tx() as s:
        row = factories.credential(s, "requested")
        tr.transition(s, row, "approve", actor="a")
        tr.transition(s, row, "prepare", actor="b")
    with store.tx() as s:
        assert verify_chain(s).ok
        first = s.scalars(select(AuditEvent).order_by(AuditEvent.seq)).first()
        first.reason = "rewritten"
    with store.tx() as s:
        report = verify_chain(s)
        assert not report.ok
        assert report.first_bad_seq == 1
