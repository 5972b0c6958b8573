"""What ``GET /metrics`` reports, read from the store in one pass per scrape.

Plain data, no Prometheus here: ``producers.api.metrics`` turns a ``LineMetrics`` into
metric families. Reading the store on every scrape (instead of counting in process
memory) is what makes every API process report the same numbers, and the same as
``cardline status``: the counts come from ``db.summary``'s own queries.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db import alerts, attention
from db.models import (
    AuditHead,
    Certificate,
    Credential,
    OutboxMessage,
    ProductionAttempt,
    SoftToken,
    Station,
    utcnow,
)

# The same counts as ``cardline status``, from the same functions.
from db.summary import _counts, _letters_pending, _softtokens_pending, queue_depths
from schemas.alerts import WATCHED_STATES, Alert, AlertConfig
from schemas.messages import PKI_QUEUE
from schemas.states import AttemptState

# Certificate issuance latency is measured over the newest requests only: enough for
# stable quantiles, and a bounded read however large the store.
LATENCY_SAMPLE = 1_000
QUANTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True)
class StationReading:
    id: str
    line: str
    status: str
    cards_done: int
    cards_spoiled: int
    heartbeat_age_s: float


@dataclass
class LineMetrics:
    cards: dict[tuple[str, str], int]  # (state, kind) -> count
    attempts: dict[tuple[str, str], int]  # (state, fault or "") -> count
    certificates: dict[str, int]
    soft_tokens: dict[str, int]
    stations: list[StationReading]
    queues: dict[str, int]
    queue_oldest_age_s: dict[str, float]
    card_oldest_age_s: dict[str, float]  # the states ``[alerts.card_state_s]`` watches
    outbox_unsent: int
    outbox_oldest_age_s: float
    audit_events: int
    attention_open: int
    letters_pending: int
    softtokens_pending: int
    issuance_s: list[float]  # certificate request to issue, newest requests, sorted
    alerts: list[Alert] = field(default_factory=list)

    def issuance_quantiles(self) -> dict[float, float]:
        values = self.issuance_s
        if not values:
            return {}
        return {q: values[min(len(values) - 1, int(q * len(values)))] for q in QUANTILES}


def _age(now: dt.datetime, then: dt.datetime | None) -> float:
    return 0.0 if then is None else max(0.0, (now - then).total_seconds())


def issuance_latencies(session: Session, *, sample: int = LATENCY_SAMPLE) -> list[float]:
    """Seconds from the first request for a certificate (its IssueCertificate in the
    outbox) to the certificate stored, for the newest ``sample`` requests, sorted."""
    payload = OutboxMessage.payload
    requests = (
        select(
            OutboxMessage.created_at,
            payload["credential_id"].as_integer(),
            payload["attempt_id"].as_integer(),
            payload["update_id"].as_integer(),
            payload["usage"].as_string(),
        )
        .where(
            OutboxMessage.queue == PKI_QUEUE,
            payload["type"].as_string() == "issue_certificate",
        )
        .order_by(OutboxMessage.id.desc())
        .limit(sample)
    )
    asked: dict[tuple[int, int | None, int | None, str], dt.datetime] = {}
    for at, cid, attempt, update, usage in session.execute(requests):
        key = (cid, attempt, update, usage)
        asked[key] = min(at, asked.get(key, at))  # a re-sent request counts from the first
    if not asked:
        return []
    certs = select(
        Certificate.credential_id,
        Certificate.attempt_id,
        Certificate.update_id,
        Certificate.usage,
        Certificate.created_at,
    ).where(Certificate.credential_id.in_({k[0] for k in asked}))
    issued: dict[tuple[int, int | None, int | None, str], dt.datetime] = {}
    for cid, attempt, update, usage, at in session.execute(certs):
        key = (cid, attempt, update, usage)
        if key in asked and at >= asked[key]:
            issued[key] = min(at, issued.get(key, at))
    return sorted((at - asked[key]).total_seconds() for key, at in issued.items())


def read(session: Session, config: AlertConfig, *, now: dt.datetime | None = None) -> LineMetrics:
    """Every reading of one scrape, from one read transaction."""
    now = now or utcnow()
    cards = {
        (str(state), str(kind)): int(n)
        for state, kind, n in session.execute(
            select(Credential.state, Credential.kind, func.count()).group_by(
                Credential.state, Credential.kind
            )
        )
    }
    attempts = {
        (str(state), str(fault or "")): int(n)
        for state, fault, n in session.execute(
            select(ProductionAttempt.state, ProductionAttempt.fault, func.count()).group_by(
                ProductionAttempt.state, ProductionAttempt.fault
            )
        )
    }
    for outcome in (AttemptState.SUCCEEDED, AttemptState.SPOILED):
        if not any(state == outcome for state, _ in attempts):
            attempts[(outcome.value, "")] = 0  # a counter that exists from the start
    stations = [
        StationReading(
            st.id, st.line, st.status, st.cards_done, st.cards_spoiled, _age(now, st.heartbeat_at)
        )
        for st in session.scalars(select(Station).order_by(Station.id))
    ]
    first_change = select(func.min(Credential.updated_at))
    oldest = {
        state.value: _age(now, session.scalar(first_change.where(Credential.state == state)))
        for state in WATCHED_STATES
    }
    depths = queue_depths(session)
    waiting = alerts.oldest_waiting(session)
    return LineMetrics(
        cards=cards,
        attempts=attempts,
        certificates=_counts(session, Certificate.state),
        soft_tokens=_counts(session, SoftToken.state),
        stations=stations,
        queues=depths,
        queue_oldest_age_s={q: _age(now, waiting.get(q)) for q in depths},
        card_oldest_age_s=oldest,
        outbox_unsent=depths["outbox"],
        outbox_oldest_age_s=_age(now, waiting.get("outbox")),
        audit_events=int(session.scalar(select(AuditHead.seq).where(AuditHead.id == 1)) or 0),
        attention_open=attention.open_count(session),
        letters_pending=_letters_pending(session),
        softtokens_pending=_softtokens_pending(session),
        issuance_s=issuance_latencies(session),
        alerts=alerts.open_alerts(session, config, now=now),
    )
