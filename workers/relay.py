"""The outbox relay and the reconciler.

The relay publishes unsent outbox rows and marks them sent. The reconciler repairs
what the broker cannot: a station lease that expired (the attempt is spoiled and the
card queued again) and work whose message was lost (re-published through the outbox).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import dramatiq
import structlog
from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from db import outbox, production
from db.engine import Store
from db.models import Credential, SoftToken, utcnow
from db.summary import PIN_LETTER_STATES
from schemas.errors import ConflictError
from schemas.messages import (
    DeliverSoftToken,
    IssueSoftToken,
    JobMessage,
    PrepareCard,
    ProduceCard,
    PublishCrl,
    RecertifyCard,
    SendPinLetter,
)
from schemas.policy import Policy
from schemas.states import CardState, SoftTokenState, TempCardState

log = structlog.get_logger(__name__)


def publish_pending(store: Store, broker: dramatiq.Broker, *, limit: int = 200) -> int:
    """Publish up to ``limit`` unsent outbox rows; return how many were published."""
    declared = set(broker.get_declared_queues())
    with store.tx(audited=False) as s:
        rows = outbox.claim_unsent(s, limit)
        for row in rows:
            if row.queue not in declared:
                broker.declare_queue(row.queue)
                declared.add(row.queue)
            broker.enqueue(
                dramatiq.Message(
                    queue_name=row.queue,
                    actor_name=row.actor,
                    args=(row.payload,),
                    kwargs={},
                    options={"outbox_id": row.id},
                )
            )
        outbox.mark_sent(s, [row.id for row in rows])
    return len(rows)


@dataclass(frozen=True)
class StallPolicy:
    """How long work may sit before the reconciler re-publishes it."""

    approved_s: float = 30.0
    ready_s: float = 120.0
    letter_s: float = 30.0
    reconcile_s: float = 2.0
    crl_interval_s: float = 3600.0


def expire_leases(store: Store, policy: Policy) -> int:
    """Spoil every attempt whose station stopped renewing its lease."""
    done = 0
    with store.read() as s:
        attempts = production.expired_attempts(s)
    for attempt in attempts:
        try:
            with store.tx() as s:
                fresh = s.get(type(attempt), attempt.id, with_for_update=True)
                if fresh is None or fresh.lease_expires_at >= utcnow():
                    continue
                production.spoil(
                    s,
                    fresh,
                    fault="lease_expired",
                    detail=f"station {fresh.station_id} stopped renewing its lease",
                    actor="reconciler",
                    max_attempts=policy.max_attempts,
                )
                done += 1
        except ConflictError as exc:
            log.info("reconciler.lease_race", attempt_id=attempt.id, detail=str(exc))
    return done


def _stalled(s: Session, states: Iterable[str], older_than: dt.datetime) -> list[Credential]:
    stmt = (
        select(Credential)
        .where(
            Credential.state.in_(list(states)),
            Credential.updated_at < older_than,
            or_(Credential.redriven_at.is_(None), Credential.redriven_at < older_than),
        )
        .limit(500)
    )
    return list(s.scalars(stmt))


def _stalled_softtokens(s: Session, older_than: dt.datetime) -> list[SoftToken]:
    """Soft tokens approved but not issued, or issued but not delivered, for a while."""
    stmt = (
        select(SoftToken)
        .where(
            or_(
                SoftToken.state == SoftTokenState.APPROVED,
                and_(SoftToken.state == SoftTokenState.ISSUED, SoftToken.p12_path.is_(None)),
            ),
            SoftToken.updated_at < older_than,
            or_(SoftToken.redriven_at.is_(None), SoftToken.redriven_at < older_than),
        )
        .limit(500)
    )
    return list(s.scalars(stmt))


def _job_for(cred: Credential) -> JobMessage | None:
    if cred.state == CardState.APPROVED:
        return PrepareCard(credential_id=cred.id)
    if cred.state == CardState.READY:
        return ProduceCard(credential_id=cred.id, line=cred.line)
    if cred.recertify_requested_at is not None:
        return RecertifyCard(credential_id=cred.id, pin_letter=cred.state == TempCardState.ASSIGNED)
    if cred.state in PIN_LETTER_STATES and cred.pin_letter_path is None:
        return SendPinLetter(credential_id=cred.id)
    return None


def redrive(store: Store, stall: StallPolicy, *, everything: bool = False) -> int:
    """Re-publish (through the outbox) the job of every credential whose work stalled.

    ``everything`` re-drives all pending work at once: right for a process whose
    in-memory broker started empty, where every earlier message is gone.
    """
    now = utcnow()

    def cutoff(seconds: float) -> dt.datetime:
        return now if everything else now - dt.timedelta(seconds=seconds)

    count = 0
    with store.tx() as s:
        creds = (
            _stalled(s, [CardState.APPROVED], cutoff(stall.approved_s))
            + _stalled(s, [CardState.READY], cutoff(stall.ready_s))
            + [
                c
                for c in _stalled(s, PIN_LETTER_STATES, cutoff(stall.letter_s))
                if c.pin_letter_path is None or c.recertify_requested_at is not None
            ]
        )
        for cred in creds:
            job = _job_for(cred)
            if job is None:
                continue
            outbox.add(s, job)
            count += 1
        if creds:
            s.execute(
                update(Credential)
                .where(Credential.id.in_([c.id for c in creds]))
                .values(redriven_at=now)
            )
        tokens = _stalled_softtokens(s, cutoff(stall.approved_s))
        for token in tokens:
            if token.state == SoftTokenState.APPROVED:
                outbox.add(s, IssueSoftToken(soft_token_id=token.id))
            else:
                outbox.add(s, DeliverSoftToken(soft_token_id=token.id))
        count += len(tokens)
        if tokens:
            s.execute(
                update(SoftToken)
                .where(SoftToken.id.in_([t.id for t in tokens]))
                .values(redriven_at=now)
            )
    if count:
        log.info("reconciler.redriven", jobs=count, everything=everything)
    return count


class Relay:
    """Runs the relay and the reconciler on a thread until ``stop`` is set."""

    def __init__(
        self,
        store: Store,
        broker: dramatiq.Broker,
        policy: Policy,
        *,
        stall: StallPolicy | None = None,
        poll_s: float = 0.05,
    ) -> None:
        self.store, self.broker, self.policy = store, broker, policy
        self.stall = stall or StallPolicy()
        self.poll_s = poll_s
        self.published = 0

    def run(self, stop: threading.Event) -> None:
        next_reconcile = 0.0
        next_crl = 0.0
        while not stop.is_set():
            try:
                sent = publish_pending(self.store, self.broker)
                self.published += sent
                now = time.monotonic()
                if now >= next_crl:
                    # On a schedule too: a CRL must be re-signed before its next update
                    # even when nothing was revoked (the pki worker skips it if fresh).
                    with self.store.tx(audited=False) as s:
                        outbox.add(s, PublishCrl(reason="schedule"))
                    next_crl = now + self.stall.crl_interval_s
                if now >= next_reconcile:
                    expire_leases(self.store, self.policy)
                    redrive(self.store, self.stall)
                    next_reconcile = now + self.stall.reconcile_s
            except Exception:
                # The relay must outlive a failed publish or a busy database; the rows
                # stay unsent and are tried again on the next turn.
                log.exception("relay.turn_failed")
                sent = 0
            if not sent:
                stop.wait(self.poll_s)
