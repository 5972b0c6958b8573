"""Signed checkpoints: the audit chain bound to a key that is not in the database.

The hash chain alone (``db.audit``) shows careless edits, but someone who can write the
database can change an event, recompute every hash after it and the head, and the
chain verifies again. A checkpoint records the chain's head hash at one sequence
number under an HMAC-SHA256 with a key derived from the master key, which the database
never holds; the relay seals one every few seconds when there are new events, after
checking the chain up to it. Verification checks every checkpoint's MAC and that the
chain still passes through each checkpoint's hash.

What this detects, against someone who can write the database but has no master key:
a changed, inserted or deleted event that a checkpoint already covers (the chain no
longer reaches that checkpoint's hash; the change is placed between two checkpoints);
a forged or altered checkpoint (its MAC); events deleted from the end after they were
sealed (a checkpoint beyond the head). What it does not detect: changes to events after
the newest checkpoint that keep the hash chain consistent (the next seal would sign
them, unless the sealer saw them first), and the deletion of the newest checkpoints,
which rolls back what is proved to an older checkpoint, unless something outside the
database remembers a newer one: the relay remembers the last checkpoint it sealed, and
``cardline audit verify`` keeps the last one it proved in the data dir. Whoever holds
the master key can forge anything.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.audit import GENESIS_HASH, _digest
from db.engine import Store
from db.models import AuditCheckpoint, AuditEvent, AuditHead, utcnow
from db.secrets import SecretBox

KEY_INFO = b"cardline audit checkpoints"
_LABEL = "cardline audit checkpoint v1"


@dataclass(frozen=True)
class Seal:
    """A checkpoint as remembered outside the store (the relay's memory, a file)."""

    seq: int
    hash: str
    created_at: dt.datetime
    mac: str

    @classmethod
    def of(cls, row: AuditCheckpoint) -> Seal:
        return cls(row.seq, row.hash, row.created_at, row.mac)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "created_at": self.created_at.isoformat()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Seal:
        at = dt.datetime.fromisoformat(data["created_at"])
        return cls(int(data["seq"]), str(data["hash"]), at, str(data["mac"]))


class CheckpointKey:
    """The HMAC key of checkpoints, derived from the master key; never printed."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def from_box(cls, box: SecretBox) -> CheckpointKey:
        return cls(box.derive_key(KEY_INFO))

    def __repr__(self) -> str:
        return "CheckpointKey('****')"

    def mac(self, seq: int, head_hash: str, created_at: dt.datetime) -> str:
        at = created_at.astimezone(dt.UTC).isoformat()
        blob = json.dumps([_LABEL, seq, head_hash, at], separators=(",", ":")).encode()
        return hmac.new(self._key, blob, hashlib.sha256).hexdigest()

    def signed(self, seal: Seal | AuditCheckpoint) -> bool:
        """Whether this key made ``seal``'s MAC over its seq, hash and time."""
        expected = self.mac(seal.seq, seal.hash, seal.created_at)
        return hmac.compare_digest(expected, seal.mac)


@dataclass(frozen=True)
class AuditReport:
    """What one verification proved. ``first_bad_seq`` is the earliest event that may
    have been changed: exact when the hash chain itself breaks, the first event after
    the previous checkpoint when the hashes were recomputed to hide the change."""

    ok: bool
    from_seq: int  # events after this one were recomputed (0: from genesis)
    events_read: int
    checkpoints: int  # checkpoints whose MAC was checked
    proved_seq: int  # the newest checkpoint the chain was seen to pass through (0: none)
    head_seq: int
    head_hash: str
    first_bad_seq: int | None = None
    bad_checkpoint: int | None = None
    problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "head_hash"}


@dataclass
class _Walk:
    """The state of one verification: the checkpoints it knows and what it has seen."""

    key: CheckpointKey
    seals: dict[int, str]
    checked: int
    head_seq: int
    head_hash: str
    from_seq: int
    read: int = 0
    proved: int = 0

    def report(self, **broken: Any) -> AuditReport:
        return AuditReport(
            ok=not broken,
            from_seq=self.from_seq,
            events_read=self.read,
            checkpoints=self.checked,
            proved_seq=self.proved,
            head_seq=self.head_seq,
            head_hash=self.head_hash,
            **broken,
        )

    def since(self, seq: int) -> int:
        """The first event after the checkpoint before ``seq`` (where a hidden change
        may start)."""
        return max((s for s in self.seals if s < seq), default=0) + 1


def _start(session: Session, key: CheckpointKey, remembered: Seal | None) -> tuple[int, str]:
    """Where an incremental verification starts: the newest of the last checkpoint a
    verification passed through and the one remembered outside the store (each only
    if its MAC holds; a bad one is then reported by the MAC check)."""
    row = session.scalars(
        select(AuditCheckpoint)
        .where(AuditCheckpoint.verified_at.is_not(None))
        .order_by(AuditCheckpoint.seq.desc())
        .limit(1)
    ).first()
    starts = [(0, GENESIS_HASH)]
    if row is not None and key.signed(row):
        starts.append((row.seq, row.hash))
    if remembered is not None and key.signed(remembered):
        starts.append((remembered.seq, remembered.hash))
    return max(starts)


def verify(
    session: Session,
    key: CheckpointKey,
    *,
    full: bool = False,
    remembered: Seal | None = None,
    every_mac: bool = True,
    locate: bool = True,
    batch: int = 2000,
) -> AuditReport:
    """Check the checkpoints' MACs and recompute the chain, from genesis (``full``) or
    from the last verified checkpoint, through every checkpoint's hash to the head.

    ``remembered`` is a checkpoint known from outside the store: it must still be
    there. ``every_mac=False`` checks only the checkpoints from the start onward (the
    sealer, every few seconds). When the chain no longer passes through the starting
    checkpoint, the change lies somewhere before it: with ``locate`` the chain is then
    recomputed from genesis to place it. Events appended after the head was read are
    left for the next verification.
    """
    start_seq, start_hash = (0, GENESIS_HASH) if full else _start(session, key, remembered)
    stmt = select(AuditCheckpoint).order_by(AuditCheckpoint.seq)
    if not every_mac:
        lowest = min(start_seq, remembered.seq) if remembered else start_seq
        stmt = stmt.where(AuditCheckpoint.seq >= lowest)
    # Checkpoints before the head: a checkpoint is only sealed over a head that exists,
    # so every one read here is at or below the head read next, even on a live line.
    rows = list(session.scalars(stmt))
    head = session.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1)).one()
    walk = _Walk(key, {r.seq: r.hash for r in rows}, len(rows), head.seq, head.hash, start_seq)
    walk.proved = start_seq
    broken = _check_seals(walk, rows, remembered)
    if broken is None and start_seq:
        broken = _check_start(session, walk, start_seq, start_hash)
        if broken is not None and locate:
            return verify(session, key, full=True, remembered=remembered, batch=batch)
    if broken is None:
        broken = _walk_events(session, walk, start_hash, batch)
    return walk.report(**broken) if broken else walk.report()


def _check_seals(
    walk: _Walk, rows: list[AuditCheckpoint], remembered: Seal | None
) -> dict[str, Any] | None:
    for row in rows:
        if not walk.key.signed(row):
            problem = f"checkpoint {row.seq} is not signed by this store's key: forged or altered"
            return {"bad_checkpoint": row.seq, "problem": problem}
        if row.seq > walk.head_seq:
            return {
                "bad_checkpoint": row.seq,
                "first_bad_seq": walk.head_seq + 1,
                "problem": f"checkpoint {row.seq} sealed events the chain no longer has",
            }
    if remembered is None:
        return None
    if not walk.key.signed(remembered):
        return {
            "bad_checkpoint": remembered.seq,
            "problem": f"the remembered checkpoint {remembered.seq} is not signed by this key",
        }
    if walk.seals.get(remembered.seq) != remembered.hash:
        return {
            "bad_checkpoint": remembered.seq,
            "problem": f"checkpoint {remembered.seq}, remembered outside the store, is gone "
            "or changed: checkpoints were deleted",
        }
    return None


def _check_start(
    session: Session, walk: _Walk, start_seq: int, start_hash: str
) -> dict[str, Any] | None:
    """The event at the starting checkpoint still has its sealed hash: a change before
    it whose hashes were recomputed up to the head is caught without reading back."""
    event = session.scalars(select(AuditEvent).where(AuditEvent.seq == start_seq)).first()
    walk.read += 1
    if event is not None and event.hash == start_hash and _digest(event) == start_hash:
        return None
    walk.proved = 0
    return {
        "bad_checkpoint": start_seq,
        "problem": f"the chain no longer passes through checkpoint {start_seq}: "
        f"an event up to {start_seq} was changed",
    }


def _walk_events(session: Session, walk: _Walk, prev: str, batch: int) -> dict[str, Any] | None:
    expected = walk.from_seq + 1
    stmt = (
        select(AuditEvent)
        .where(AuditEvent.seq > walk.from_seq, AuditEvent.seq <= walk.head_seq)
        .order_by(AuditEvent.seq)
        .execution_options(yield_per=batch)
    )
    for event in session.scalars(stmt):
        walk.read += 1
        if event.seq != expected or event.prev_hash != prev or _digest(event) != event.hash:
            return {
                "first_bad_seq": min(event.seq, expected),
                "problem": f"event {min(event.seq, expected)} does not fit the hash chain",
            }
        sealed = walk.seals.get(event.seq)
        if sealed is not None:
            if sealed != event.hash:
                since = walk.since(event.seq)
                return {
                    "first_bad_seq": since,
                    "bad_checkpoint": event.seq,
                    "problem": f"events {since}..{event.seq} no longer hash to checkpoint "
                    f"{event.seq}: one was changed and the hashes after it recomputed",
                }
            walk.proved = event.seq
        prev = event.hash
        expected += 1
    if expected - 1 != walk.head_seq or prev != walk.head_hash:
        return {
            "first_bad_seq": expected,
            "problem": f"the chain ends at event {expected - 1}, its head says {walk.head_seq}",
        }
    return None


def seal(
    store: Store, key: CheckpointKey, *, by: str, remembered: Seal | None = None
) -> tuple[AuditReport, Seal | None]:
    """Verify the chain since the last checkpoint (and ``remembered``), then seal its
    head when it has events no checkpoint covers. Returns the verification and the new
    checkpoint; None when the chain is broken (nothing is sealed over it), when nothing
    is new, or when another sealer sealed this head first (the sequence number is the
    checkpoint's key, so two sealers never both write it)."""
    with store.read() as s:
        report = verify(s, key, remembered=remembered, every_mac=False, locate=False)
    if not report.ok or report.head_seq <= report.proved_seq:
        return report, None
    now = utcnow()
    row = AuditCheckpoint(
        seq=report.head_seq,
        hash=report.head_hash,
        mac=key.mac(report.head_seq, report.head_hash, now),
        created_at=now,
        created_by=by,
        verified_at=now,  # the sealer has just verified the chain up to it
    )
    try:
        with store.tx(audited=False) as s:
            s.add(row)
    except IntegrityError:
        return report, None
    return report, Seal.of(row)


def mark_verified(session: Session, report: AuditReport, *, at: dt.datetime | None = None) -> None:
    """Record on the newest checkpoint a passed verification reached that it was
    verified: the next incremental verification starts there."""
    if report.ok and report.proved_seq:
        session.execute(
            update(AuditCheckpoint)
            .where(AuditCheckpoint.seq == report.proved_seq)
            .values(verified_at=at or utcnow())
        )


@dataclass(frozen=True)
class SealStatus:
    """Cheap to read (two aggregates over the small checkpoint table): how far the
    chain is sealed, and when a verification last passed through a checkpoint."""

    sealed_seq: int | None
    verified_at: dt.datetime | None


def seal_status(session: Session) -> SealStatus:
    sealed = session.scalar(select(func.max(AuditCheckpoint.seq)))
    verified = session.scalar(select(func.max(AuditCheckpoint.verified_at)))
    return SealStatus(sealed, verified)


def sealed_at(session: Session, seq: int) -> Seal | None:
    """The checkpoint at ``seq``, as one remembers it outside the store."""
    row = session.get(AuditCheckpoint, seq)
    return None if row is None else Seal.of(row)
