"""The open alerts, read from the store (the catalogue and limits: ``schemas.alerts``).

Every query here is aggregated and indexed, so a console refreshing every second on a
store of 100,000 cards costs a few milliseconds: cards per state by ``(state,
updated_at)``, attempts of the recent window by ``finished_at``, unsent messages by the
outbox's partial index; the stations and open attention items are small tables. An
alert about many cards is one alert naming the oldest and the count, never one per
card.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db import attention
from db.models import Credential, OutboxMessage, ProductionAttempt, Station, utcnow
from db.summary import queue_depths
from schemas.alerts import STUCK_ACTIONS, Alert, AlertConfig
from schemas.messages import PREPARE_QUEUE, line_queue
from schemas.states import AttemptState, CardState

# A station that stopped cleanly says so; its silence is no alert.
STOPPED = "offline"


@dataclass(frozen=True)
class Stuck:
    """Cards in one state unchanged since before a limit: how many, and the oldest."""

    state: str
    count: int
    oldest_id: int
    oldest_number: str | None
    since: dt.datetime


def stuck_cards(session: Session, state: str, cutoff: dt.datetime) -> Stuck | None:
    """Cards in ``state`` unchanged since before ``cutoff`` (None: there are none)."""
    waiting = (Credential.state == state, Credential.updated_at < cutoff)
    count = int(session.scalar(select(func.count()).select_from(Credential).where(*waiting)) or 0)
    if not count:
        return None
    oldest = session.execute(
        select(Credential.id, Credential.card_number, Credential.updated_at)
        .where(*waiting)
        .order_by(Credential.updated_at, Credential.id)
        .limit(1)
    ).one()
    return Stuck(state, count, oldest.id, oldest.card_number, oldest.updated_at)


def oldest_waiting(session: Session) -> dict[str, dt.datetime]:
    """When the oldest item of each queue ``db.summary.queue_depths`` counts began to
    wait: the approved card unchanged longest (prepare), the ready card of each line,
    the oldest unsent message (outbox). A queue with nothing waiting is left out."""
    found: dict[str, dt.datetime] = {}
    approved = session.scalar(
        select(func.min(Credential.updated_at)).where(Credential.state == CardState.APPROVED)
    )
    if approved is not None:
        found[PREPARE_QUEUE] = approved
    ready = (
        select(Credential.line, func.min(Credential.updated_at))
        .where(Credential.state == CardState.READY)
        .group_by(Credential.line)
    )
    for line, since in session.execute(ready).all():
        found[line_queue(line)] = since
    unsent = oldest_unsent(session)
    if unsent is not None:
        found["outbox"] = unsent
    return found


def oldest_unsent(session: Session) -> dt.datetime | None:
    first = select(func.min(OutboxMessage.id)).where(OutboxMessage.sent_at.is_(None))
    return session.scalar(
        select(OutboxMessage.created_at).where(OutboxMessage.id == first.scalar_subquery())
    )


@dataclass(frozen=True)
class StationWindow:
    """What one station finished in the recent window."""

    station_id: str
    finished: int
    spoiled: int

    @property
    def spoil_rate(self) -> float:
        return self.spoiled / self.finished if self.finished else 0.0


def recent_attempts(session: Session, since: dt.datetime) -> list[StationWindow]:
    """Attempts finished since ``since``, per station. Only the window's rows are read
    (by the ``finished_at`` index) and counted here: a GROUP BY tempts the planner to
    walk the whole table in station order instead."""
    stmt = select(ProductionAttempt.station_id, ProductionAttempt.state).where(
        ProductionAttempt.finished_at >= since
    )
    finished: Counter[str] = Counter()
    spoiled: Counter[str] = Counter()
    for station_id, state in session.execute(stmt):
        finished[station_id] += 1
        spoiled[station_id] += state == AttemptState.SPOILED
    return [StationWindow(sid, finished[sid], spoiled[sid]) for sid in sorted(finished)]


def _duration(seconds: float) -> str:
    if seconds >= 7200:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def _card_alerts(session: Session, config: AlertConfig, now: dt.datetime) -> list[Alert]:
    alerts = []
    for state, limit in config.card_state_s.limits().items():
        stuck = stuck_cards(session, state, now - dt.timedelta(seconds=limit))
        if stuck is None:
            continue
        card = stuck.oldest_number or f"#{stuck.oldest_id}"
        more = f" and {stuck.count - 1} more" if stuck.count > 1 else ""
        alerts.append(
            Alert(
                "card_stuck",
                f"card {card}",
                stuck.since,
                f"card {card}{more} {'has' if stuck.count == 1 else 'have'} been {state} "
                f"longer than {_duration(limit)} (oldest: {_duration(_age(now, stuck.since))})",
                STUCK_ACTIONS[state],
            )
        )
    return alerts


def _station_alerts(session: Session, config: AlertConfig, now: dt.datetime) -> list[Alert]:
    cutoff = now - dt.timedelta(seconds=config.station_heartbeat_s)
    silent = session.scalars(
        select(Station)
        .where(Station.status != STOPPED, Station.heartbeat_at < cutoff)
        .order_by(Station.id)
    )
    alerts = [
        Alert(
            "station_silent",
            f"station {st.id}",
            st.heartbeat_at,
            f"station {st.id} (line {st.line}, last {st.status}) sent no heartbeat for "
            f"{_duration(_age(now, st.heartbeat_at))}",
        )
        for st in silent
    ]
    window_start = now - dt.timedelta(seconds=config.spoil_window_s)
    for w in recent_attempts(session, window_start):
        if w.finished >= config.spoil_min_attempts and w.spoil_rate > config.spoil_rate:
            alerts.append(
                Alert(
                    "spoil_rate_high",
                    f"station {w.station_id}",
                    window_start,
                    f"station {w.station_id} spoiled {w.spoiled} of the {w.finished} blanks "
                    f"it finished in the last {_duration(config.spoil_window_s)} "
                    f"({w.spoil_rate:.0%}, limit {config.spoil_rate:.0%})",
                )
            )
    return alerts


def _backlog_alerts(session: Session, config: AlertConfig, now: dt.datetime) -> list[Alert]:
    depths = queue_depths(session)
    oldest = oldest_waiting(session)
    alerts = []
    unsent = depths.get("outbox", 0)
    first = oldest.get("outbox")
    if first is not None and (
        unsent > config.outbox_backlog or _age(now, first) > config.outbox_age_s
    ):
        alerts.append(
            Alert(
                "outbox_backlog",
                "outbox",
                first,
                f"{unsent} messages unsent, the oldest for {_duration(_age(now, first))}",
            )
        )
    for queue, depth in sorted(depths.items()):
        if queue != "outbox" and depth > config.queue_backlog:
            since = oldest.get(queue, now)
            alerts.append(
                Alert(
                    "queue_backlog",
                    f"queue {queue}",
                    since,
                    f"{depth} items wait in {queue} (limit {config.queue_backlog}), the "
                    f"oldest for {_duration(_age(now, since))}",
                )
            )
    return alerts


def _attention_alerts(session: Session) -> list[Alert]:
    return [
        Alert(
            "needs_attention",
            f"attention {item.id}",
            item.created_at,
            f"{item.entity} {item.entity_id} ({item.wait}): {item.reason}",
        )
        for item in attention.open_items(session)
    ]


def _age(now: dt.datetime, then: dt.datetime) -> float:
    return max(0.0, (now - then).total_seconds())


def open_alerts(
    session: Session, config: AlertConfig, *, now: dt.datetime | None = None
) -> list[Alert]:
    """Every open alert, most severe first, then oldest first."""
    now = now or utcnow()
    alerts = [
        *_card_alerts(session, config, now),
        *_station_alerts(session, config, now),
        *_backlog_alerts(session, config, now),
        *_attention_alerts(session),
    ]
    order = {"critical": 0, "warning": 1}
    return sorted(alerts, key=lambda a: (order[a.severity.value], a.since, a.name, a.subject))
