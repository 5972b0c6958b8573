"""The table of waits: every state in which work waits for a message, and its owner.

The broker is transport, not truth: the in-process broker loses everything when the
process dies, Redis on a restart, any broker a message an actor took and never
finished. So for each wait this table says which message moves the work on, who must
act, how the reconciler notices that the work has stalled, and how it re-drives it.
The reconciler (``workers.relay``) walks ``WAITS`` on every turn; ``docs/architecture.md``
carries the same table, rendered by ``markdown_table()`` (a test keeps them equal).

A row with an open *needs attention* entry (``db.models.Attention``: it failed for a
reason a retry cannot cure) is not re-driven until a person resolves it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import ColumnElement, String, and_, cast, exists, func, or_, select, update
from sqlalchemy.orm import Session

from db import batches, outbox, production
from db.engine import Store
from db.models import (
    Attention,
    BatchOrder,
    CardUpdate,
    Certificate,
    Credential,
    CrlPublication,
    Reminder,
    SoftToken,
    Station,
    utcnow,
)
from db.summary import PIN_LETTER_STATES, awaiting_activation
from db.transition import transition
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
    SendReminder,
)
from schemas.policy import Policy
from schemas.states import (
    AttemptState,
    BatchState,
    CardState,
    CertState,
    SoftTokenState,
    TempCardState,
    UpdateState,
)

log = structlog.get_logger(__name__)

BATCH = 500  # rows re-driven per wait and turn: a big backlog drains over a few turns


@dataclass(frozen=True)
class StallPolicy:
    """How long work may sit before the reconciler re-drives it."""

    approved_s: float = 30.0
    ready_s: float = 120.0
    letter_s: float = 30.0
    crl_s: float = 30.0
    reconcile_s: float = 2.0
    crl_interval_s: float = 3600.0
    # After the reconciler itself could not reach the store, stations get this long to
    # renew their leases before an expired one counts: an outage of the store is not
    # a dead station, and must not cost the blank in it.
    lease_grace_s: float = 60.0
    # A station whose heartbeat is younger than this counts as alive.
    station_alive_s: float = 30.0
    # A large import records its progress on its batch after every chunk (well under
    # a second each); one silent for this long has stopped, and is abandoned.
    import_s: float = 300.0


@dataclass
class Reconcile:
    """One turn of the reconciler: what it may read, and since when work counts as stalled."""

    store: Store
    policy: Policy
    stall: StallPolicy
    mail: bool = False  # an SMTP server is configured (mail waits exist only then)
    everything: bool = False  # a fresh in-process broker: re-drive all pending work now
    expire_leases: bool = True
    now: dt.datetime = field(default_factory=utcnow)
    memory: dict[str, dt.datetime] = field(default_factory=dict)  # for waits without a row

    def cutoff(self, seconds: float) -> dt.datetime:
        return self.now if self.everything else self.now - dt.timedelta(seconds=seconds)


@dataclass(frozen=True)
class Wait:
    """One row of the table of waits."""

    name: str
    waiting: str  # what waits, in the store's terms
    message: str  # the message that moves it on
    owner: str  # who acts on that message
    noticed: str  # how the reconciler sees that it stalled
    redrive: str  # what the reconciler does then
    repair: Callable[[Reconcile], int]


def _open_attention(entity: str, id_column: Any) -> ColumnElement[bool]:
    return exists(
        select(Attention.id).where(
            Attention.entity == entity,
            Attention.entity_id == cast(id_column, String),
            Attention.resolved_at.is_(None),
        )
    )


def _redrive_rows(
    r: Reconcile,
    model: Any,
    entity: str,
    where: Sequence[ColumnElement[bool]],
    job: Callable[[Any], JobMessage],
    stall_s: float,
    *,
    since: Any = None,
    progress: Callable[[Session], dt.datetime | None] | None = None,
) -> int:
    """Re-publish ``job(row)`` (through the outbox) for every row matching ``where`` that
    has not moved (``since``, default ``updated_at``) nor been re-driven for ``stall_s``.

    ``progress`` gives when the wait's owner last finished a piece of this kind of work:
    while that is more recent than ``stall_s`` the owner is working through a queue,
    and the waiting rows' messages are most likely in it, not lost. Re-sending them
    then would only pile duplicates behind them (a batch of 100,000 approved cards
    would be asked for again and again); a lost message is re-driven once its cohort
    is through. The look-up is a plain read: most turns find nothing, and must not
    queue for the audit lock that every writer of the line takes."""
    cutoff = r.cutoff(stall_s)
    if progress is not None and not r.everything:
        with r.store.read() as s:
            last = progress(s)
        if last is not None and last >= cutoff:
            return 0
    since = model.updated_at if since is None else since
    stalled = and_(
        *where,
        since < cutoff,
        or_(model.redriven_at.is_(None), model.redriven_at < cutoff),
        ~_open_attention(entity, model.id),
    )
    with r.store.read() as s:
        ids = list(s.scalars(select(model.id).where(stalled).order_by(model.id).limit(BATCH)))
    if not ids:
        return 0
    with r.store.tx() as s:
        # Again under the transaction: a row may have moved on since the read.
        rows = list(s.scalars(select(model).where(model.id.in_(ids), stalled)))
        if not rows:
            return 0
        outbox.add_all(s, [job(row) for row in rows])
        s.execute(
            update(model).where(model.id.in_([row.id for row in rows])).values(redriven_at=r.now)
        )
    return len(rows)


# --- the waits ------------------------------------------------------------------------


def _last_prepared(s: Session) -> dt.datetime | None:
    # prepare stamps valid_from on every card it prepares.
    return s.scalar(select(func.max(Credential.valid_from)))


def _last_escrow_certificate(s: Session) -> dt.datetime | None:
    newest = select(func.max(Certificate.id)).where(Certificate.attempt_id.is_(None))
    return s.scalar(
        select(Certificate.created_at).where(Certificate.id == newest.scalar_subquery())
    )


def _approved(r: Reconcile) -> int:
    return _redrive_rows(
        r,
        Credential,
        "credential",
        [Credential.state == CardState.APPROVED, Credential.escrow_key_sealed.is_(None)],
        lambda c: PrepareCard(credential_id=c.id),
        r.stall.approved_s,
        progress=_last_prepared,
    )


def _escrow(r: Reconcile) -> int:
    return _redrive_rows(
        r,
        Credential,
        "credential",
        [Credential.state == CardState.APPROVED, Credential.escrow_key_sealed.is_not(None)],
        lambda c: PrepareCard(credential_id=c.id),
        r.stall.approved_s,
        progress=_last_escrow_certificate,
    )


def _ready(r: Reconcile) -> int:
    where = [Credential.state == CardState.READY]
    if r.policy.bureau_lines:  # a bureau's cards wait for its next order file
        where.append(Credential.line.not_in(r.policy.bureau_lines))
    if not r.everything:
        # Lost, not merely queued: a station of the card's line is idle while the card
        # waits. While every station is busy the card is most likely in the queue, and
        # re-sending it would only add duplicates behind it.
        alive = r.now - dt.timedelta(seconds=r.stall.station_alive_s)
        where.append(
            exists(
                select(Station.id).where(
                    Station.line == Credential.line,
                    Station.status == "idle",
                    Station.heartbeat_at > alive,
                )
            )
        )
    return _redrive_rows(
        r,
        Credential,
        "credential",
        where,
        lambda c: ProduceCard(credential_id=c.id, line=c.line),
        r.stall.ready_s,
    )


def _leases(r: Reconcile) -> int:
    """Spoil every attempt whose station stopped renewing its lease."""
    if not r.expire_leases:
        return 0
    done = 0
    with r.store.read() as s:
        attempts = production.expired_attempts(s)
    for attempt in attempts:
        try:
            with r.store.tx() as s:
                fresh = s.get(type(attempt), attempt.id, with_for_update=True)
                if (
                    fresh is None
                    or fresh.state != AttemptState.IN_PROGRESS
                    or fresh.lease_expires_at >= utcnow()
                ):
                    continue
                production.spoil(
                    s,
                    fresh,
                    fault="lease_expired",
                    detail=f"station {fresh.station_id} stopped renewing its lease",
                    actor="reconciler",
                    max_attempts=r.policy.max_attempts,
                )
                done += 1
        except ConflictError as exc:
            log.info("reconciler.lease_race", attempt_id=attempt.id, detail=str(exc))
    return done


def _batch_import(r: Reconcile) -> int:
    """Abandon every chunked import that stopped recording progress (its process died
    or lost the store): the batch ``failed``, its file free to be imported again. Not
    hurried by ``everything``: another process may be importing while this one starts."""
    cutoff = r.now - dt.timedelta(seconds=r.stall.import_s)
    stalled = and_(BatchOrder.state == BatchState.IMPORTING, BatchOrder.updated_at < cutoff)
    with r.store.read() as s:
        ids = list(s.scalars(select(BatchOrder.id).where(stalled).limit(BATCH)))
    done = 0
    for batch_id in ids:
        with r.store.tx() as s:
            batch = s.scalar(
                select(BatchOrder).where(BatchOrder.id == batch_id, stalled).with_for_update()
            )
            if batch is not None and batches.abandon(
                s,
                batch,
                actor="reconciler",
                reason=f"the import made no progress for {r.stall.import_s:g} s: "
                "import the file again",
            ):
                done += 1
    return done


def _batch_decision(r: Reconcile) -> int:
    """Settle the cards still ``requested`` of every decided batch whose decider did
    not finish (approved, rejected, or failed with the batch), and the cards not yet at
    a station of a cancelled one."""
    cutoff = r.cutoff(r.stall.approved_s)
    waiting = select(Credential.batch_id).where(
        Credential.state == CardState.REQUESTED, Credential.batch_id.is_not(None)
    )
    cancelling = select(Credential.batch_id).where(
        Credential.state.in_(batches.SETTLES["cancel"]), Credential.batch_id.is_not(None)
    )
    with r.store.read() as s:
        ids = list(
            s.scalars(
                select(BatchOrder.id)
                .where(
                    BatchOrder.state.in_(sorted(batches.SETTLE)),
                    BatchOrder.updated_at < cutoff,
                    or_(
                        BatchOrder.id.in_(waiting),
                        and_(
                            BatchOrder.state == BatchState.CANCELLED,
                            BatchOrder.id.in_(cancelling),
                        ),
                    ),
                )
                .order_by(BatchOrder.id)
                .limit(BATCH)
            )
        )
    return sum(batches.settle(r.store, batch_id) for batch_id in ids)


def _card_update(r: Reconcile) -> int:
    """Give back every card update whose desk stopped renewing its lease (killed, or
    the card pulled and the desk gone): ``in_progress -> pending``, its journal kept,
    so the next insertion anywhere resumes it."""
    now = utcnow()
    stalled = and_(CardUpdate.state == UpdateState.IN_PROGRESS, CardUpdate.lease_expires_at < now)
    with r.store.read() as s:
        ids = list(s.scalars(select(CardUpdate.id).where(stalled).limit(BATCH)))
    done = 0
    for update_id in ids:
        try:
            with r.store.tx() as s:
                row = s.scalar(
                    select(CardUpdate).where(CardUpdate.id == update_id, stalled).with_for_update()
                )
                if row is not None:
                    transition(
                        s,
                        row,
                        "release",
                        actor="reconciler",
                        reason=f"desk {row.station_id} stopped renewing its lease",
                        changes={"station_id": None, "lease_expires_at": None},
                    )
                    done += 1
        except ConflictError as exc:
            log.info("reconciler.update_race", update_id=update_id, detail=str(exc))
    return done


def _recertify(r: Reconcile) -> int:
    return _redrive_rows(
        r,
        Credential,
        "credential",
        [
            Credential.recertify_requested_at.is_not(None),
            Credential.state.in_(list(PIN_LETTER_STATES)),
        ],
        lambda c: RecertifyCard(credential_id=c.id, pin_letter=c.state == TempCardState.ASSIGNED),
        r.stall.letter_s,
    )


def _pin_letter(r: Reconcile) -> int:
    return _redrive_rows(
        r,
        Credential,
        "credential",
        [
            Credential.state.in_(list(PIN_LETTER_STATES)),
            Credential.user_id.is_not(None),
            Credential.pin_letter_path.is_(None),
            Credential.recertify_requested_at.is_(None),  # the letter follows the recert
            ~awaiting_activation(),  # a bureau's card: the letter follows its activation
        ],
        lambda c: SendPinLetter(credential_id=c.id),
        r.stall.letter_s,
    )


def _pin_letter_mail(r: Reconcile) -> int:
    if not (r.mail and r.policy.pin_letter_delivery == "mail"):
        return 0
    return _redrive_rows(
        r,
        Credential,
        "credential",
        [
            Credential.state.in_(list(PIN_LETTER_STATES)),
            Credential.pin_letter_path.is_not(None),
            Credential.pin_letter_mailed_at.is_(None),
        ],
        lambda c: SendPinLetter(credential_id=c.id),
        r.stall.letter_s,
    )


def _softtoken_issue(r: Reconcile) -> int:
    return _redrive_rows(
        r,
        SoftToken,
        "soft_token",
        [SoftToken.state == SoftTokenState.APPROVED],
        lambda t: IssueSoftToken(soft_token_id=t.id),
        r.stall.approved_s,
    )


def _softtoken_delivery(r: Reconcile) -> int:
    return _redrive_rows(
        r,
        SoftToken,
        "soft_token",
        [SoftToken.state == SoftTokenState.ISSUED, SoftToken.p12_path.is_(None)],
        lambda t: DeliverSoftToken(soft_token_id=t.id),
        r.stall.approved_s,
    )


def _reminders(r: Reconcile) -> int:
    if not r.mail:
        return 0  # without mail a reminder waits for the next expiry check, by design
    return _redrive_rows(
        r,
        Reminder,
        "reminder",
        [Reminder.sent_at.is_(None)],
        lambda m: SendReminder(reminder_id=m.id),
        r.stall.letter_s,
        since=Reminder.created_at,
    )


LISTED = (CertState.REVOKED, CertState.HOLD)


def crl_stale(s: Session, cutoff: dt.datetime) -> bool:
    """The revoked set changed before ``cutoff`` and no CRL published since covers it.

    Two cheap, indexed checks stand in for comparing the whole revoked set: the number
    of listed certificates differs from the last CRL's (a revocation or a release), or
    a listed certificate changed after that CRL (a hold became a revocation).
    """
    last = s.scalars(select(CrlPublication).order_by(CrlPublication.number.desc())).first()
    listed = int(
        s.scalar(select(func.count()).select_from(Certificate).where(Certificate.state.in_(LISTED)))
        or 0
    )
    if last is None:
        return listed > 0 and _oldest_listed_change(s, None) < cutoff
    if last.this_update >= cutoff:
        return False
    if listed != last.revoked_count:
        return True
    changed = s.scalar(
        select(func.min(Certificate.updated_at)).where(
            Certificate.state.in_(LISTED), Certificate.updated_at > last.this_update
        )
    )
    return changed is not None and changed < cutoff


def _oldest_listed_change(s: Session, after: dt.datetime | None) -> dt.datetime:
    stmt = select(func.min(Certificate.updated_at)).where(Certificate.state.in_(LISTED))
    if after is not None:
        stmt = stmt.where(Certificate.updated_at > after)
    return s.scalar(stmt) or utcnow()


def _crl(r: Reconcile) -> int:
    cutoff = r.cutoff(r.stall.crl_s)
    last_redrive = r.memory.get("crl")
    if last_redrive is not None and last_redrive >= cutoff:
        return 0
    with r.store.read() as s:
        if s.scalar(select(Attention.id).where(_crl_attention())) is not None:
            return 0
        stale = crl_stale(s, cutoff)
    if not stale:
        return 0
    with r.store.tx(audited=False) as s:
        # force: the set may be back to what the last CRL listed (a hold released
        # again), which the worker would otherwise skip, leaving this wait open.
        outbox.add(s, PublishCrl(reason="re-driven: revocations not yet published", force=True))
    r.memory["crl"] = r.now
    return 1


def _crl_attention() -> ColumnElement[bool]:
    return and_(
        Attention.entity == "crl", Attention.entity_id == "issuing", Attention.resolved_at.is_(None)
    )


WAITS: tuple[Wait, ...] = (
    Wait(
        "batch import",
        "batch `importing`: a large file written a chunk per transaction",
        "none: the importing process writes the next chunk",
        "the process importing the file (CLI or API)",
        f"no chunk recorded for `import_s` ({StallPolicy.import_s:g} s)",
        "abandons it: the batch `failed` (its file may be imported again), its cards"
        " rejected by the next wait",
        _batch_import,
    ),
    Wait(
        "batch decision",
        "batch approved, rejected or `failed` with cards still `requested`, or"
        " `cancelled` with cards not yet at a station",
        "none: whoever decided the batch settles its cards a thousand per transaction",
        "the approver's (or importer's, or canceller's) process",
        f"the batch unchanged for `approved_s` ({StallPolicy.approved_s:g} s)",
        "settles the rest (`db.batches.settle`): approved with PrepareCard, rejected"
        " with the batch's reason, or cancelled",
        _batch_decision,
    ),
    Wait(
        "card approved",
        "card `approved`, not yet prepared (no escrowed key)",
        "PrepareCard",
        "prepare worker",
        f"`approved` and unchanged for `approved_s` ({StallPolicy.approved_s:g} s), and no"
        " card prepared for as long (else the message is queued, not lost)",
        "PrepareCard again (prepare is idempotent: a prepared card is left alone)",
        _approved,
    ),
    Wait(
        "escrow certificate",
        "card `approved` with its escrowed key sealed, waiting for the key's certificate",
        "IssueCertificate (attempt none, encryption)",
        "pki worker; storing the certificate makes the card `ready` in the same transaction",
        f"`approved` with a sealed escrow key, unchanged for `approved_s` "
        f"({StallPolicy.approved_s:g} s), and no escrow certificate issued for as long",
        "PrepareCard, which asks again with a CSR made from the sealed key, or makes the"
        " card `ready` if the certificate exists",
        _escrow,
    ),
    Wait(
        "card ready",
        "card `ready` (every server-side part done), waiting for a station",
        "ProduceCard on `line.<line>`",
        "a station of the card's line",
        f"`ready` and unchanged for `ready_s` ({StallPolicy.ready_s:g} s) while a station"
        " of its line is idle (alive, no card in hand)",
        "ProduceCard again (a station turns away a card that is no longer `ready`)",
        _ready,
    ),
    Wait(
        "attempt certificates",
        "attempt `in_progress`: the keys are on the chip, their CSRs at the pki worker",
        "IssueCertificate (the attempt's id, per usage)",
        "pki worker; the station holding the attempt is woken when they are stored"
        " (db.wakeups) and reads them",
        "the station re-sends what is missing every `cert_resend_s`; the reconciler sees"
        " an attempt whose lease (renewed by the station's heartbeat) has expired",
        "the station re-sends idempotently while it lives; a dead station's attempt is"
        " spoiled at lease expiry (after `lease_grace_s` if the store was away) and the"
        " card queued on a new blank",
        _leases,
    ),
    Wait(
        "card update",
        "card update `pending` (a renewal), or `in_progress` at a desk",
        "none: the holder inserts the card at an update desk (the embedded line's"
        " simulated holders bring every such card to its desk)",
        "the update desk the card is inserted in",
        "`in_progress` and its desk's lease expired",
        "gives it back (`pending`, journal kept): the next insertion resumes at the first"
        " step not recorded",
        _card_update,
    ),
    Wait(
        "re-certification",
        "produced card with `recertify_requested_at` set (by an earlier version: renewal and"
        " temporary-card assignment are card updates now)",
        "RecertifyCard",
        "pki worker",
        f"request still set, card unchanged for `letter_s` ({StallPolicy.letter_s:g} s)",
        "RecertifyCard again (it issues only usages older than the request)",
        _recertify,
    ),
    Wait(
        "PIN letter",
        "card `active`, `issued` or `assigned` with no PIN letter written",
        "SendPinLetter",
        "notify worker",
        f"no letter, card unchanged for `letter_s` ({StallPolicy.letter_s:g} s)",
        "SendPinLetter again (a written letter is not written twice)",
        _pin_letter,
    ),
    Wait(
        "PIN letter mail",
        'PIN letter written, `pin_letter_delivery = "mail"`, not yet mailed',
        "SendPinLetter",
        "notify worker",
        f"letter written, no mail stamp, for `letter_s` ({StallPolicy.letter_s:g} s)",
        "SendPinLetter again (it mails once, then stamps `pin_letter_mailed_at`)",
        _pin_letter_mail,
    ),
    Wait(
        "soft token issue",
        "soft token `approved`",
        "IssueSoftToken",
        "pki worker",
        f"`approved` and unchanged for `approved_s` ({StallPolicy.approved_s:g} s)",
        "IssueSoftToken again (an issued token is left alone)",
        _softtoken_issue,
    ),
    Wait(
        "soft token delivery",
        "soft token `issued`, its P12 not yet written out (nor mailed)",
        "DeliverSoftToken",
        "notify worker",
        f"no P12 path for `approved_s` ({StallPolicy.approved_s:g} s)",
        "DeliverSoftToken again (a delivered token is not delivered twice)",
        _softtoken_delivery,
    ),
    Wait(
        "CRL publication",
        "a certificate revoked, held or released after the last published CRL",
        "PublishCrl",
        "pki worker",
        f"the listed count differs from the last CRL's, or a listed certificate changed"
        f" after it, for `crl_s` ({StallPolicy.crl_s:g} s)",
        "PublishCrl again (published only if the revoked set differs)",
        _crl,
    ),
    Wait(
        "expiry reminder",
        "reminder row not yet sent (only with `CARDLINE_SMTP_URL` set)",
        "SendReminder",
        "notify worker",
        f"unsent for `letter_s` ({StallPolicy.letter_s:g} s)",
        "SendReminder again (a sent reminder is not sent twice)",
        _reminders,
    ),
)


WAITS_BY_NAME = {w.name: w for w in WAITS}


def reconcile(r: Reconcile) -> dict[str, int]:
    """Walk the table once; return how much each wait re-drove (only non-zero ones)."""
    done = {}
    for wait in WAITS:
        count = wait.repair(r)
        if count:
            done[wait.name] = count
    if done:
        log.info("reconciler.redriven", everything=r.everything, **_kw(done))
    return done


def _kw(done: dict[str, int]) -> dict[str, int]:
    return {name.replace(" ", "_"): n for name, n in done.items()}


def markdown_table() -> str:
    """The table of waits as Markdown, for ``docs/architecture.md``."""
    head = "| wait | what waits | message that moves it on | owner | stalled when | re-driven by |"
    rows = [head, "|---|---|---|---|---|---|"]
    for w in WAITS:
        cells = (w.name, w.waiting, w.message, w.owner, w.noticed, w.redrive)
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"
