"""The outbox relay publishes each row once; the reconciler repairs stalled work."""

from __future__ import annotations

import datetime as dt

from dramatiq import Message
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import select, update

from db import outbox, production
from db.models import Certificate, Credential, OutboxMessage, ProductionAttempt, utcnow
from schemas.messages import PrepareCard
from schemas.policy import Policy
from tests import factories
from workers.relay import StallPolicy, expire_leases, publish_pending, redrive


def test_relay_publishes_every_unsent_row_once_and_marks_it_sent(store):
    broker = StubBroker()
    with store.tx() as s:
        for i in range(5):
            outbox.add(s, PrepareCard(credential_id=i + 1))
    assert publish_pending(store, broker) == 5
    assert publish_pending(store, broker) == 0
    assert broker.queues["prepare"].qsize() == 5
    with store.read() as s:
        assert all(r.sent_at is not None for r in s.scalars(select(OutboxMessage)))


def _claimed(store, *, lease_s=30.0, attempts_before=0):
    with store.tx() as s:
        cred = factories.credential(s, "ready")
        cred.attempt_count = attempts_before
        s.flush()
        _, attempt = production.claim(
            s, cred.id, station_id="ST9", station_instance="x", lease_s=lease_s
        )
        now = utcnow()
        s.add(
            Certificate(
                state="valid",
                credential_id=cred.id,
                attempt_id=attempt.id,
                usage="authentication",
                serial=f"{attempt.id:x}ab",
                subject="CN=x",
                not_before=now,
                not_after=now + dt.timedelta(days=1),
                pem="-",
            )
        )
        return cred.id, attempt.id


def _expire(store, attempt_id):
    with store.tx() as s:
        s.execute(
            update(ProductionAttempt)
            .where(ProductionAttempt.id == attempt_id)
            .values(lease_expires_at=utcnow() - dt.timedelta(seconds=1))
        )


def test_an_expired_lease_spoils_the_attempt_revokes_its_certificates_and_requeues(store):
    cid, aid = _claimed(store)
    assert expire_leases(store, Policy()) == 0  # the lease is still good
    _expire(store, aid)
    assert expire_leases(store, Policy()) == 1
    with store.read() as s:
        assert s.get(ProductionAttempt, aid).state == "spoiled"
        assert s.get(ProductionAttempt, aid).fault == "lease_expired"
        assert s.get(Credential, cid).state == "ready"
        assert {c.state for c in s.scalars(select(Certificate))} == {"revoked"}
        produce = [m for m in s.scalars(select(OutboxMessage)) if m.actor == "produce"]
    assert [m.payload["credential_id"] for m in produce] == [cid]


def _spoiled_before(store, cid, faults):
    with store.tx() as s:
        for number, fault in enumerate(faults, start=1):
            s.add(
                ProductionAttempt(
                    state="spoiled",
                    credential_id=cid,
                    number=number,
                    station_id="ST8",
                    station_instance="old",
                    lease_expires_at=utcnow(),
                    fault=fault,
                )
            )


def _spoil(store, aid, fault, policy):
    with store.tx() as s:
        attempt = s.get(ProductionAttempt, aid)
        return production.spoil(
            s, attempt, fault=fault, detail="test", actor="test", max_attempts=policy.max_attempts
        )


def test_a_card_fails_once_its_last_allowed_card_or_device_fault_spoils_a_blank(store):
    policy = Policy(max_attempts=3)
    cid, aid = _claimed(store, attempts_before=2)
    _spoiled_before(store, cid, ["chip_failure", "jam"])
    assert _spoil(store, aid, "print_failure", policy) == "failed"
    with store.read() as s:
        assert s.get(Credential, cid).attempt_count == 3


def test_blanks_spoiled_by_killed_stations_do_not_count_against_the_card(store):
    policy = Policy(max_attempts=3)
    cid, aid = _claimed(store, attempts_before=2)
    _spoiled_before(store, cid, ["station_restart", "chip_failure"])
    _expire(store, aid)
    expire_leases(store, policy)  # lease_expired: the third blank, the card's second fault
    with store.read() as s:
        assert s.get(Credential, cid).state == "ready"


def test_a_card_whose_attempts_never_finish_fails_at_the_cap(store):
    from db.production import ATTEMPTS_CAP_FACTOR

    policy = Policy(max_attempts=3)
    cap = policy.max_attempts * ATTEMPTS_CAP_FACTOR
    cid, aid = _claimed(store, attempts_before=cap - 1)
    _spoiled_before(store, cid, ["station_restart"] * (cap - 1))
    assert _spoil(store, aid, "station_restart", policy) == "failed"


def test_redrive_republishes_pending_work_of_a_lost_broker_through_the_outbox(store):
    with store.tx() as s:
        approved = factories.credential(s, "approved").id
        ready = factories.credential(s, "ready").id
        factories.credential(s, "requested")  # waits for a person, not for the line
    assert redrive(store, StallPolicy()) == 0  # nothing has stalled yet
    assert redrive(store, StallPolicy(), everything=True) == 2
    with store.read() as s:
        jobs = {(m.actor, m.payload["credential_id"]) for m in s.scalars(select(OutboxMessage))}
    assert jobs == {("prepare", approved), ("produce", ready)}
    # Re-driven just now: a second sweep does not publish the same work again at once.
    assert redrive(store, StallPolicy(approved_s=60, ready_s=60)) == 0


def test_two_relays_at_once_publish_every_row_exactly_once(store):
    import threading

    broker = StubBroker()
    broker.declare_queue("prepare")
    with store.tx(audited=False) as s:
        for i in range(400):
            outbox.add(s, PrepareCard(credential_id=i + 1))
    errors = []

    def relay():
        try:
            while publish_pending(store, broker, limit=25):
                pass
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=relay) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    published = [
        Message.decode(raw).args[0]["credential_id"] for raw in list(broker.queues["prepare"].queue)
    ]
    assert sorted(published) == list(range(1, 401))


def test_work_queued_behind_a_busy_owner_is_not_sent_again_only_work_whose_owner_went_quiet(
    store,
):
    from db.models import Certificate
    from workers.waits import StallPolicy as Stall

    stall = Stall(approved_s=30)
    long_ago = utcnow() - dt.timedelta(minutes=5)
    with store.tx() as s:
        waiting = [factories.credential(s, "approved") for _ in range(3)]
        for cred in waiting:
            cred.escrow_key_sealed, cred.card_number = "sealed", f"89990000{cred.id:08d}"
        done = factories.credential(s, "ready")
        s.flush()
        s.execute(
            update(Credential)
            .where(Credential.id.in_([c.id for c in waiting]))
            .values(updated_at=long_ago)
        )
        s.add(  # the pki worker issued an escrow certificate a moment ago: it is busy
            Certificate(
                state="valid",
                credential_id=done.id,
                attempt_id=None,
                usage="encryption",
                serial="beef",
                subject="CN=x",
                not_before=utcnow(),
                not_after=utcnow() + dt.timedelta(days=1),
                pem="-",
            )
        )
    assert redrive(store, stall) == 0  # queued behind the others, not lost
    with store.tx() as s:
        s.execute(update(Certificate).values(created_at=long_ago))  # the worker went quiet
    assert redrive(store, stall) == 3
