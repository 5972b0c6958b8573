"""What the console's pages show, read from the store in a few indexed queries each.

Every function takes an open read session and returns plain data for a template.
Nothing here reads a whole table: counts are index scans (state, line, batch, the
``finished_at`` window), lists are paged, a card's timeline is read by its id. The
console test renders every page over 100,000 cards and checks each query's plan.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db import alerts as db_alerts
from db.line_control import LINE, STATION, pauses
from db.models import (
    AuditEvent,
    BatchOrder,
    CardUpdate,
    Certificate,
    Credential,
    ProductionAttempt,
    Station,
    User,
    utcnow,
)
from db.summary import queue_depths
from producers.batches import list_batches
from schemas.alerts import Alert, AlertConfig
from schemas.states import AttemptState, CardState

# The states a batch's card is done in, and still on its way in.
DONE = frozenset({"active", "issued", "unassigned", "assigned", "inactive", "locked", "expired"})
ENDED = DONE | {"rejected", "cancelled", "failed"}
RATE_WINDOW = dt.timedelta(hours=1)
SEARCH_LIMIT = 20
_CODE = re.compile(r"\[([^\[\]]{1,64})\]\s*$")


def _age_s(now: dt.datetime, then: dt.datetime | None) -> float | None:
    return None if then is None else max(0.0, (now - then).total_seconds())


def raw_code(detail: str | None) -> str | None:
    """The raw device code a fault's detail ends with (``DeviceFault``: ``[CKR_...]``)."""
    found = _CODE.search(detail or "")
    return found.group(1) if found else None


# --- overview ---------------------------------------------------------------------------


@dataclass
class Overview:
    cards: dict[str, int]
    finished_5m: int
    finished_60m: int
    spoiled_60m: int
    queues: list[dict[str, Any]]
    alerts: list[Alert]
    paused: list[dict[str, Any]] = field(default_factory=list)

    @property
    def spoil_rate(self) -> float:
        blanks = self.finished_60m + self.spoiled_60m
        return self.spoiled_60m / blanks if blanks else 0.0

    @property
    def total(self) -> int:
        return sum(self.cards.values())


def _finished_since(session: Session, since: dt.datetime) -> dict[str, int]:
    rows = session.execute(
        select(ProductionAttempt.state, func.count())
        .where(ProductionAttempt.finished_at >= since)
        .group_by(ProductionAttempt.state)
    )
    return {str(state): int(count) for state, count in rows}


def overview(session: Session, config: AlertConfig, *, now: dt.datetime | None = None) -> Overview:
    now = now or utcnow()
    cards = {
        str(k): int(v)
        for k, v in session.execute(
            select(Credential.state, func.count()).group_by(Credential.state)
        )
    }
    last5 = _finished_since(session, now - dt.timedelta(minutes=5))
    last60 = _finished_since(session, now - dt.timedelta(minutes=60))
    oldest = db_alerts.oldest_waiting(session)
    queues = [
        {"queue": name, "depth": depth, "oldest_s": _age_s(now, oldest.get(name))}
        for name, depth in sorted(queue_depths(session).items())
    ]
    return Overview(
        cards=dict(sorted(cards.items())),
        finished_5m=last5.get(AttemptState.SUCCEEDED, 0),
        finished_60m=last60.get(AttemptState.SUCCEEDED, 0),
        spoiled_60m=last60.get(AttemptState.SPOILED, 0),
        queues=queues,
        alerts=db_alerts.open_alerts(session, config, now=now),
        paused=[
            {"scope": p.scope, "name": p.name, "by": p.paused_by, "reason": p.reason}
            for p in pauses(session)
        ],
    )


# --- stations ---------------------------------------------------------------------------


def stations(
    session: Session, config: AlertConfig, *, now: dt.datetime | None = None
) -> list[dict[str, Any]]:
    """Each station: status (paused and offline as they are), the card in hand and
    since when, cards per hour (the last hour), blanks by outcome, spoils by fault with
    the last one's raw device code."""
    now = now or utcnow()
    held = {(p.scope, p.name) for p in pauses(session)}
    hour = {w.station_id: w for w in db_alerts.recent_attempts(session, now - RATE_WINDOW)}
    rows = list(session.scalars(select(Station).order_by(Station.id)))
    found: list[dict[str, Any]] = []
    for st in rows:
        outcomes = {
            str(state): int(count)
            for state, count in session.execute(
                select(ProductionAttempt.state, func.count())
                .where(ProductionAttempt.station_id == st.id)
                .group_by(ProductionAttempt.state)
            )
        }
        faults = []
        for fault, count in session.execute(
            select(ProductionAttempt.fault, func.count())
            .where(
                ProductionAttempt.station_id == st.id,
                ProductionAttempt.state == AttemptState.SPOILED,
            )
            .group_by(ProductionAttempt.fault)
        ):
            last = session.execute(
                select(ProductionAttempt.fault_detail, ProductionAttempt.finished_at)
                .where(
                    ProductionAttempt.station_id == st.id,
                    ProductionAttempt.state == AttemptState.SPOILED,
                    ProductionAttempt.fault == fault,
                )
                .order_by(ProductionAttempt.id.desc())
                .limit(1)
            ).first()
            faults.append(
                {
                    "fault": fault or "unknown",
                    "count": int(count),
                    "last_code": raw_code(last[0]) if last else None,
                    "last_detail": last[0] if last else None,
                }
            )
        in_hand = None
        if st.current_credential_id is not None:
            live = session.execute(
                select(ProductionAttempt.created_at, Credential.card_number, Credential.id)
                .join(Credential, Credential.id == ProductionAttempt.credential_id)
                .where(
                    ProductionAttempt.station_id == st.id,
                    ProductionAttempt.state == AttemptState.IN_PROGRESS,
                )
                .limit(1)
            ).first()
            if live is not None:
                in_hand = {"id": live[2], "card_number": live[1], "for_s": _age_s(now, live[0])}
        silent = _age_s(now, st.heartbeat_at) or 0.0
        status = st.status
        if status != "offline" and silent > config.station_heartbeat_s:
            status = "offline"  # no heartbeat: dead, whatever it last said
        window = hour.get(st.id)
        found.append(
            {
                "id": st.id,
                "line": st.line,
                "status": status,
                "paused": (STATION, st.id) in held or (LINE, st.line) in held,
                "heartbeat_s": silent,
                "in_hand": in_hand,
                "cards_per_hour": (window.finished - window.spoiled) if window else 0,
                "blanks": sum(outcomes.values()),
                "outcomes": outcomes,
                "faults": faults,
            }
        )
    return found


def lines(session: Session) -> list[dict[str, Any]]:
    """Every line a station is on, and whether it is paused."""
    held = {p.name: p for p in pauses(session) if p.scope == LINE}
    names = sorted(set(session.scalars(select(Station.line).distinct())) | set(held))
    return [{"name": n, "paused": n in held} for n in names]


# --- batches ----------------------------------------------------------------------------


def batches(store: Any, session: Session, *, page: int, per_page: int = 20) -> dict[str, Any]:
    """A page of batches (newest first) with progress, per-state counts, and the
    expected finish at the rate of the last hour."""
    listing = list_batches(store, page=page, per_page=per_page)
    ids = [b.id for b in listing.items]
    now = utcnow()
    rates: dict[int, int] = {}
    priorities: dict[int, int] = {}
    if ids:
        rates = {
            bid: int(n)
            for bid, n in session.execute(
                select(Credential.batch_id, func.count())
                .join(ProductionAttempt, ProductionAttempt.credential_id == Credential.id)
                .where(
                    ProductionAttempt.finished_at >= now - RATE_WINDOW,
                    ProductionAttempt.state == AttemptState.SUCCEEDED,
                    Credential.batch_id.in_(ids),
                )
                .group_by(Credential.batch_id)
            )
            if bid is not None  # the query asks only for these batches' cards
        }
        priorities = {
            int(bid): int(level)
            for bid, level in session.execute(
                select(BatchOrder.id, BatchOrder.priority).where(BatchOrder.id.in_(ids))
            )
        }
    items = []
    for b in listing.items:
        total = sum(b.cards.values())
        done = sum(n for s, n in b.cards.items() if s in DONE)
        ended = sum(n for s, n in b.cards.items() if s in ENDED)
        left = total - ended
        rate = rates.get(b.id, 0)
        eta = now + dt.timedelta(hours=left / rate) if rate and left else None
        items.append(
            {
                "batch": b,
                "total": total,
                "done": done,
                "percent": round(100 * ended / total) if total else 100,
                "left": left,
                "rate": rate,
                "eta": eta.isoformat(timespec="minutes") if eta else None,
                "priority": priorities.get(b.id, 0),
            }
        )
    pages = max(1, -(-listing.total // per_page))
    return {"items": items, "page": page, "pages": pages, "total": listing.total}


def reject_report(session: Session, batch_id: int, rejects_dir: Path) -> Path | None:
    """The batch's reject report (``producers.batch_import`` names it after the file:
    ``<stem>-<16 hex of its SHA-256>-rejects.csv`` from the API, ``<stem>-rejects.csv``
    from the CLI), or None when it has none or it is gone."""
    batch = session.get(BatchOrder, batch_id)
    if batch is None or not batch.rejected_rows:
        return None
    stem = Path(Path(batch.name).name).stem
    names = [f"{stem}-rejects.csv"]
    if batch.source_sha256:
        names.insert(0, f"{stem}-{batch.source_sha256[:16]}-rejects.csv")
    root = rejects_dir.resolve()
    for name in names:
        path = (root / name).resolve()
        if path.parent == root and path.is_file():
            return path
    return None


# --- a card -----------------------------------------------------------------------------


def find_cards(session: Session, text: str) -> list[dict[str, Any]]:
    """Cards by card number (or id), holder e-mail, or holder name ("Grace Hopper",
    "Hopper"): at most ``SEARCH_LIMIT``, each an indexed lookup."""
    text = text.strip()[:200]
    if not text:
        return []
    stmt = select(Credential, User).outerjoin(User, User.id == Credential.user_id)
    if text.isdigit():
        by_id = Credential.id == int(text) if int(text) < 2**31 else False
        stmt = stmt.where((Credential.card_number == text) | by_id)
    else:
        # The holders first (an index on lower(email) or lower(last_name)), then their
        # cards (by user_id): joined the other way round the planner walks every card.
        holders = select(User.id)
        if "@" in text:
            holders = holders.where(func.lower(User.email) == text.lower())
        else:
            words = text.lower().split()
            holders = holders.where(func.lower(User.last_name) == words[-1])
            if len(words) > 1:
                holders = holders.where(func.lower(User.first_name) == " ".join(words[:-1]))
        ids = list(session.scalars(holders.limit(SEARCH_LIMIT)))
        stmt = stmt.where(Credential.user_id.in_(ids))
    rows = session.execute(stmt.order_by(Credential.id.desc()).limit(SEARCH_LIMIT))
    return [
        {
            "id": cred.id,
            "card_number": cred.card_number,
            "state": cred.state,
            "holder": user.display_name if user else "(temporary card)",
            "email": user.email if user else None,
        }
        for cred, user in rows
    ]


def card_timeline(session: Session, cred: Credential) -> dict[str, Any]:
    """Everything about one card, oldest first: audit events, attempts, certificates,
    updates, its PIN letter."""
    cid = cred.id
    events = list(
        session.scalars(
            select(AuditEvent)
            .where(AuditEvent.entity == cred.machine.name, AuditEvent.entity_id == str(cid))
            .order_by(AuditEvent.seq)
            .limit(500)
        )
    )
    attempts = list(
        session.scalars(
            select(ProductionAttempt)
            .where(ProductionAttempt.credential_id == cid)
            .order_by(ProductionAttempt.number)
        )
    )
    certs = list(
        session.scalars(
            select(Certificate).where(Certificate.credential_id == cid).order_by(Certificate.id)
        )
    )
    updates = list(
        session.scalars(
            select(CardUpdate).where(CardUpdate.credential_id == cid).order_by(CardUpdate.id)
        )
    )
    return {
        "card": cred,
        "holder": cred.user.display_name if cred.user else "(temporary card)",
        "email": cred.user.email if cred.user else None,
        "events": events,
        "attempts": [
            {
                "row": a,
                "code": raw_code(a.fault_detail),
                "took_s": _age_s(a.finished_at, a.created_at) if a.finished_at else None,
            }
            for a in attempts
        ],
        "certificates": certs,
        "updates": updates,
        "letter": {
            "path": cred.pin_letter_path,
            "mailed_at": cred.pin_letter_mailed_at,
        },
        "retryable": cred.state == CardState.FAILED,
    }
