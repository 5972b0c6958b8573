"""Steering the line (issue 14 point 2) on the embedded line of every backend: a paused
station or line takes no new card and goes on when resumed; a retried failed card gets a
new attempt budget; cancelling a batch stops what is not yet at a station; a batch of a
higher priority is produced first."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from db import batches as db_batches
from db.models import AuditEvent, BatchOrder, Credential, ProductionAttempt, Station
from ops.config import Settings
from ops.line import EmbeddedLine, LineOptions
from ops.store import open_migrated
from producers import line_control
from producers.approvals import approve_batch
from producers.batch_import import import_batch
from producers.generate import write_users_csv
from schemas.errors import FourEyesViolation, StateConflict
from schemas.policy import Policy
from tests import factories
from tests.invariants import assert_books_balance


def _settings(tmp_path, backend) -> Settings:
    kind, url = backend
    return Settings(data_dir=tmp_path / "data", database_url=url, broker_url=kind.broker_url())


def _batch(store, tmp_path, cards: int, seed: int, policy: Policy) -> int:
    csv = write_users_csv(tmp_path / f"users{seed}.csv", cards, seed=seed)
    report = import_batch(
        store, csv, policy=policy, requested_by="alice", reject_dir=tmp_path / "rejects"
    )
    approve_batch(store, report.batch_id, by="bob")
    return report.batch_id


def _line(settings, policy, *, stations=1, fault_rate=0.0) -> EmbeddedLine:
    options = LineOptions(stations=stations, time_scale=0, fault_rate=fault_rate, seed=5)
    return EmbeddedLine(settings, policy, options)


def _until(check, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _cards(store) -> dict[str, int]:
    with store.read() as s:
        found: dict[str, int] = {}
        for state in s.scalars(select(Credential.state)):
            found[state] = found.get(state, 0) + 1
        return found


def _attempts(store) -> list[ProductionAttempt]:
    with store.read() as s:
        return list(s.scalars(select(ProductionAttempt).order_by(ProductionAttempt.id)))


def _status(store, station_id: str) -> str | None:
    with store.read() as s:
        row = s.get(Station, station_id)
        return row.status if row else None


def test_a_paused_station_takes_no_new_card_and_a_paused_line_none_until_resumed(tmp_path, backend):
    policy = Policy()
    settings = _settings(tmp_path, backend)
    store = open_migrated(settings)
    line_control.pause(store, "line", "default", by="principal:1", reason="shift change")
    _batch(store, tmp_path, 6, seed=1, policy=policy)
    line = _line(settings, policy, stations=2)
    line.start()
    try:
        # Prepared, but no station takes a card while the line is paused.
        _until(lambda: _cards(store) == {"ready": 6})
        _until(lambda: _status(store, "ST1") == _status(store, "ST2") == "paused")
        time.sleep(1.0)
        assert _attempts(store) == []
        # ST1 paused on its own, the line resumed: only ST2 produces.
        line_control.pause(store, "station", "ST1", by="principal:1")
        with pytest.raises(StateConflict):
            line_control.pause(store, "station", "ST1", by="principal:1")
        line_control.resume(store, "line", "default", by="principal:1")
        _until(lambda: _cards(store) == {"active": 6})
        assert {a.station_id for a in _attempts(store)} == {"ST2"}
        assert _status(store, "ST1") == "paused"
        line_control.resume(store, "station", "ST1", by="principal:1")
        _until(lambda: _status(store, "ST1") == "idle")
        assert line.wait_drained(timeout_s=60)
    finally:
        line.stop()
    assert_books_balance(store, policy)
    with store.read() as s:
        audited = [
            (e.entity, e.entity_id, e.action, e.to_state)
            for e in s.scalars(select(AuditEvent).where(AuditEvent.action.in_(["pause", "resume"])))
        ]
    assert audited == [
        ("line", "default", "pause", "paused"),
        ("station", "ST1", "pause", "paused"),
        ("line", "default", "resume", "running"),
        ("station", "ST1", "resume", "running"),
    ]


def test_a_claim_is_refused_in_the_store_while_the_station_is_paused(store):
    from db import production

    with store.tx() as s:
        card = factories.credential(s, "ready")
        s.add(Station(id="ST9", line="default", instance="x", status="idle"))
        card_id = card.id
    line_control.pause(store, "station", "ST9", by="principal:1")
    with pytest.raises(StateConflict), store.tx() as s:
        production.claim(s, card_id, station_id="ST9", station_instance="x", lease_s=30)
    with store.read() as s:
        assert s.get(Credential, card_id).state == "ready"


def test_retry_gives_a_failed_card_a_new_attempt_budget(tmp_path, backend):
    policy = Policy(max_attempts=2)
    settings = _settings(tmp_path, backend)
    store = open_migrated(settings)
    _batch(store, tmp_path, 1, seed=2, policy=policy)

    def run(fault_rate: float) -> None:
        line = _line(settings, policy, fault_rate=fault_rate)
        line.start()
        try:
            assert line.wait_drained(timeout_s=60)
        finally:
            line.stop()

    run(1.0)  # every blank spoiled: failed after its budget of 2
    (card_id,) = [c.id for c in _all(store)]
    assert _card(store, card_id) == ("failed", 2)
    assert line_control.retry_card(store, str(card_id), by="principal:1") == "approved"
    with pytest.raises(StateConflict):
        line_control.retry_card(store, str(card_id), by="principal:1")
    run(1.0)  # a new budget of 2 more blanks, not failed at once
    assert _card(store, card_id) == ("failed", 4)
    line_control.retry_card(store, str(card_id), by="principal:1")
    run(0.0)
    assert _card(store, card_id) == ("active", 5)
    assert_books_balance(store, policy)
    with store.read() as s:
        retries = s.scalars(
            select(AuditEvent).where(AuditEvent.action == "retry", AuditEvent.entity == "card")
        ).all()
    assert [(e.from_state, e.to_state, e.actor) for e in retries] == [
        ("failed", "approved", "principal:1")
    ] * 2


def _all(store) -> list[Credential]:
    with store.read() as s:
        return list(s.scalars(select(Credential)))


def _card(store, card_id: int) -> tuple[str, int]:
    with store.read() as s:
        cred = s.get(Credential, card_id)
        return cred.state, cred.attempt_count


def test_cancel_stops_what_is_not_at_a_station_and_the_cards_at_one_finish(store):
    with store.tx() as s:
        batch = factories.batch(s, "approved")
        ids = {}
        for state in ("requested", "approved", "ready", "producing", "active"):
            card = factories.credential(s, state)
            card.batch_id = batch.id
            ids[state] = card.id
        batch_id = batch.id
    done = line_control.cancel_batch(store, batch_id, by="principal:1", reason="order withdrawn")
    assert (done.cancelled, done.at_station) == (3, 1)
    with store.read() as s:
        assert s.get(BatchOrder, batch_id).state == "cancelled"
        states = {k: s.get(Credential, v).state for k, v in ids.items()}
    assert states == {
        "requested": "cancelled",
        "approved": "cancelled",
        "ready": "cancelled",
        "producing": "producing",
        "active": "active",
    }
    with pytest.raises(StateConflict):
        line_control.cancel_batch(store, batch_id, by="principal:1")


def test_a_cancelled_batch_left_half_done_is_finished_by_settling(store):
    # The canceller died after the batch's own transaction: settling (the reconciler's
    # wait "batch decision") cancels the rest.
    from db.transition import transition

    with store.tx() as s:
        batch = factories.batch(s, "approved")
        cards = [factories.credential(s, "ready") for _ in range(3)]
        for card in cards:
            card.batch_id = batch.id
        s.flush()
        transition(s, batch, "cancel", actor="principal:1", reason="x")
        batch_id = batch.id
    assert db_batches.settle(store, batch_id) == 3
    assert {c.state for c in _all(store)} == {"cancelled"}


def test_priority_makes_a_high_batch_go_first(tmp_path, backend):
    policy = Policy()
    settings = _settings(tmp_path, backend)
    store = open_migrated(settings)
    line_control.pause(store, "line", "default", by="principal:1")
    low = _batch(store, tmp_path, 5, seed=3, policy=policy)
    high = _batch(store, tmp_path, 5, seed=4, policy=policy)
    with pytest.raises(FourEyesViolation):
        line_control.set_priority(store, high, 5, by="alice")  # its requester
    assert line_control.set_priority(store, high, 5, by="principal:7") == 5
    line = _line(settings, policy, stations=1)
    line.start()
    try:
        _until(lambda: _cards(store) == {"ready": 10})
        line_control.resume(store, "line", "default", by="principal:1")
        assert line.wait_drained(timeout_s=60)
    finally:
        line.stop()
    with store.read() as s:
        batch_of = {c.id: c.batch_id for c in s.scalars(select(Credential))}
        assert s.get(BatchOrder, high).priority == 5
    order = [batch_of[a.credential_id] for a in _attempts(store)]
    assert order == [high] * 5 + [low] * 5
