"""Alerts: what the console, ``cardline alerts``, ``GET /alerts`` and the Prometheus
rules in ``ops/monitoring/`` call wrong with the line, and what to do about it.

``ALERT_KINDS`` is the catalogue (one row per alert name: severity, what it means, what
the operator should do); ``AlertConfig`` is the ``[alerts]`` table of the configuration
file (the limits); ``db.alerts.open_alerts`` finds the open ones in the store. The
Prometheus rules are one rule per name over ``cardline_alerts_open``, so the console,
the CLI and Prometheus apply the same limits from the same code.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.states import CardState


class Severity(StrEnum):
    WARNING = "warning"  # the line is slowing down or will stop: look within the hour
    CRITICAL = "critical"  # the line, or part of it, has stopped: look now


@dataclass(frozen=True)
class AlertKind:
    """One alert name: how bad it is, what it means and what the operator does."""

    name: str
    severity: Severity
    summary: str  # what is wrong, in general terms
    action: str  # what the operator should do, one sentence


ALERT_KINDS: tuple[AlertKind, ...] = (
    AlertKind(
        "card_stuck",
        Severity.WARNING,
        "cards have been in one state longer than [alerts.card_state_s] allows",
        "Look at what the state waits for (`cardline waits`): decide requested cards "
        "(`cardline approvals`), check the prepare and pki workers for approved ones, an "
        "idle station of the card's line for ready ones, the station holding the card "
        "for producing ones.",
    ),
    AlertKind(
        "station_silent",
        Severity.CRITICAL,
        "a station that has not stopped sent no heartbeat for station_heartbeat_s",
        "Check the station's process and host and restart `cardline station --id ID`; "
        "the card it held is spoiled at lease expiry and queued again on a new blank.",
    ),
    AlertKind(
        "spoil_rate_high",
        Severity.WARNING,
        "a station spoiled more than spoil_rate of the attempts it finished in the "
        "last spoil_window_s",
        "Look at the station's faults (the dashboard's spoiled-by-fault panel): clean or "
        "service its printer and encoder, check the blank stock, and stop the station "
        "until it is fixed.",
    ),
    AlertKind(
        "outbox_backlog",
        Severity.WARNING,
        "more than outbox_backlog messages are unsent, or the oldest is older than outbox_age_s",
        "Check that a `cardline relay` runs and reaches the broker (its log says when "
        "the broker is away); the messages are safe in the store and go out once it is "
        "back.",
    ),
    AlertKind(
        "queue_backlog",
        Severity.WARNING,
        "more than queue_backlog items wait in one queue",
        "Check that the queue's consumers run (`cardline worker` for prepare, the "
        "stations of the line for line.NAME) and add workers or stations if they are "
        "busy but too few.",
    ),
    AlertKind(
        "needs_attention",
        Severity.WARNING,
        "work failed for a reason a retry cannot cure and waits for a person",
        "Read the reason (`cardline attention list`), fix its cause, then `cardline "
        "attention resolve ID` so the reconciler drives the work on.",
    ),
)

KINDS: dict[str, AlertKind] = {k.name: k for k in ALERT_KINDS}


class CardStateLimits(BaseModel):
    """``[alerts.card_state_s]``: seconds a card may stay in a state before
    ``card_stuck`` fires (0: never). Only the states in which a card waits for the line
    or a decision; a produced card may stay produced."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # A request waits for an approver, a person: a working day.
    requested: float = Field(86_400.0, ge=0)
    # Prepare takes seconds; the reconciler re-drives a lost message after 30 s.
    approved: float = Field(600.0, ge=0)
    # Waiting for a station: a large batch takes hours on a few stations.
    ready: float = Field(14_400.0, ge=0)
    # One card takes about 24 s; a station waits up to server_wait_s (1800 s) for
    # the PKI before it gives the blank up.
    producing: float = Field(900.0, ge=0)

    def limits(self) -> dict[str, float]:
        """Each watched state and its limit, the switched-off ones left out."""
        return {state: s for state, s in self.model_dump().items() if s > 0}


class AlertConfig(BaseModel):
    """``[alerts]``: the limits past which ``db.alerts`` raises an alert."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    card_state_s: CardStateLimits = Field(default_factory=CardStateLimits)
    # A live station beats every 5 s (stations.toml heartbeat_s); the reconciler counts
    # one silent for 30 s as gone (StallPolicy.station_alive_s).
    station_heartbeat_s: float = Field(30.0, gt=0)
    # Spoiled attempts / finished attempts of one station over the window, once it has
    # finished at least spoil_min_attempts in it (one fault in two cards is no trend).
    spoil_rate: float = Field(0.10, gt=0, le=1)
    spoil_window_s: float = Field(900.0, gt=0)
    spoil_min_attempts: int = Field(10, ge=1)
    outbox_backlog: int = Field(1_000, ge=1)
    outbox_age_s: float = Field(120.0, gt=0)
    queue_backlog: int = Field(50_000, ge=1)


# The states ``[alerts.card_state_s]`` may name: those a card leaves by itself.
WATCHED_STATES = (CardState.REQUESTED, CardState.APPROVED, CardState.READY, CardState.PRODUCING)

# What to do about a card stuck in each watched state (``card_stuck``).
STUCK_ACTIONS: dict[str, str] = {
    CardState.REQUESTED: "Have an approver decide the requests: `cardline approvals` lists "
    "them with the command that decides each.",
    CardState.APPROVED: "Check that a `cardline worker` consumes the prepare and pki queues "
    "and a `cardline relay` runs; `cardline attention list` shows cards prepare refused.",
    CardState.READY: "Check that a station of the card's line runs and is idle or busy, "
    "not offline or waiting (`cardline status`); start one if there is none.",
    CardState.PRODUCING: "Look at the station holding the card (`cardline status`): "
    "waiting_for_pki means the pki worker or the broker is away, waiting_for_store the "
    "database.",
}


@dataclass(frozen=True)
class Alert:
    """One open alert: ``subject`` names what it is about (``card 1234000000017``,
    ``station ST1``, ``queue line.default``, ``outbox``, ``attention 7``); ``since`` is
    when the condition began (the oldest card's last change, the last heartbeat, ...)."""

    name: str
    subject: str
    since: dt.datetime
    detail: str  # what is wrong here, with the numbers
    action: str = ""  # what to do (default: the kind's)

    @property
    def kind(self) -> AlertKind:
        return KINDS[self.name]

    @property
    def severity(self) -> Severity:
        return self.kind.severity

    @property
    def what_to_do(self) -> str:
        return self.action or self.kind.action

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "severity": self.severity.value,
            "subject": self.subject,
            "since": self.since.isoformat(),
            "detail": self.detail,
            "action": self.what_to_do,
        }
