"""The outbox relay and the reconciler.

The relay publishes unsent outbox rows and marks them sent. The reconciler walks the
table of waits (``workers.waits``): it spoils an attempt whose station stopped renewing
its lease (the card is queued again) and re-publishes, through the outbox, the message
of every piece of work that stalled because its message was lost. Holding the master
key, the relay also seals the audit chain: a checkpoint MAC'd under a key derived from
it (``db.checkpoints``), so an edit of the database alone shows.
"""

from __future__ import annotations

import datetime as dt
import threading
import time

import dramatiq
import dramatiq.errors
import structlog

from db import checkpoints, outbox
from db.checkpoints import CheckpointKey, Seal
from db.engine import Store, is_transient
from schemas.messages import PublishCrl
from schemas.policy import Policy
from workers import waits
from workers.broker import BROKER_UNAVAILABLE
from workers.waits import StallPolicy

__all__ = ["Relay", "StallPolicy", "expire_leases", "publish_pending", "redrive"]

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


def expire_leases(store: Store, policy: Policy) -> int:
    """Spoil every attempt whose station stopped renewing its lease."""
    return waits.WAITS_BY_NAME["attempt certificates"].repair(
        waits.Reconcile(store=store, policy=policy, stall=StallPolicy())
    )


def redrive(
    store: Store,
    stall: StallPolicy,
    *,
    everything: bool = False,
    policy: Policy | None = None,
    mail: bool = False,
) -> int:
    """Walk the table of waits once, re-publishing (through the outbox) the message of
    every piece of work that stalled; return how many were re-driven. Leases are not
    expired here (``expire_leases``, or the relay's turn, does that).

    ``everything`` re-drives all pending work at once: right for a process whose
    in-memory broker started empty, where every earlier message is gone.
    """
    done = waits.reconcile(
        waits.Reconcile(
            store=store,
            policy=policy or Policy(),
            stall=stall,
            mail=mail,
            everything=everything,
            expire_leases=False,
        )
    )
    return sum(done.values())


class Relay:
    """Runs the relay and the reconciler on a thread until ``stop`` is set; given the
    checkpoint key, it also seals the audit chain every ``seal_s`` seconds."""

    def __init__(
        self,
        store: Store,
        broker: dramatiq.Broker,
        policy: Policy,
        *,
        stall: StallPolicy | None = None,
        poll_s: float = 0.05,
        mail: bool = False,
        checkpoint_key: CheckpointKey | None = None,
        seal_s: float = 10.0,
    ) -> None:
        self.store, self.broker, self.policy = store, broker, policy
        self.checkpoint_key, self.seal_s = checkpoint_key, seal_s
        self.stall = stall or StallPolicy()
        self.poll_s = poll_s
        self.mail = mail
        self.published = 0
        self.store_ok_since = time.monotonic()
        self._memory: dict[str, dt.datetime] = {}
        # The last checkpoint this relay sealed, remembered outside the store: if it
        # disappears from the store, the relay refuses to seal over what replaced it.
        self.sealed: Seal | None = None
        self._broken: str | None = None

    def reconcile(self) -> dict[str, int]:
        """One walk of the table of waits, as the relay does every ``reconcile_s``."""
        # Leases renewed by stations that could not reach the store either have
        # expired in the meantime; give them a lease's grace once it is back.
        grace_over = time.monotonic() - self.store_ok_since >= self.stall.lease_grace_s
        return waits.reconcile(
            waits.Reconcile(
                store=self.store,
                policy=self.policy,
                stall=self.stall,
                mail=self.mail,
                expire_leases=grace_over,
                memory=self._memory,
            )
        )

    def seal(self) -> Seal | None:
        """Seal the audit chain's head if it has new events and verifies since the last
        checkpoint (``db.checkpoints``); a broken chain is logged, never sealed."""
        if self.checkpoint_key is None:
            return None
        report, sealed = checkpoints.seal(
            self.store, self.checkpoint_key, by="worker:relay", remembered=self.sealed
        )
        if not report.ok and report.problem != self._broken:
            log.error(
                "audit.chain_broken",
                first_bad_seq=report.first_bad_seq,
                checkpoint=report.bad_checkpoint,
                problem=report.problem,
            )
        self._broken = report.problem
        if sealed is not None:
            self.sealed = sealed
        return sealed

    def run(self, stop: threading.Event) -> None:
        next_reconcile = 0.0
        next_crl = 0.0
        next_seal = 0.0
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
                    self.reconcile()
                    next_reconcile = now + self.stall.reconcile_s
                if now >= next_seal:
                    self.seal()
                    next_seal = now + self.seal_s
            except Exception as exc:
                # The relay must outlive a failed publish or a busy database; the rows
                # stay unsent and are tried again on the next turn.
                if is_transient(exc):
                    log.warning("relay.store_unavailable", error=str(exc).splitlines()[0])
                    self.store_ok_since = time.monotonic()
                elif isinstance(exc, BROKER_UNAVAILABLE):
                    log.warning("relay.broker_unavailable", error=str(exc))
                else:
                    log.exception("relay.turn_failed")
                sent = 0
            if not sent:
                stop.wait(self.poll_s)
