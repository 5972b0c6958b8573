"""Expiry checks and reminders: the ``[expiry]`` table of the configuration file.

A reminder is one mail to an item's holder, of one kind (``expiring`` or ``expired``),
at most once per period: the period key is the UTC date (``daily``) or the ISO week
(``weekly``), so each kind of reminder repeats once a day or once a week until the
item is renewed, expires or goes out of use.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.states import CardState, CertState, TempCardState


class ReminderKind(StrEnum):
    EXPIRING = "expiring"
    EXPIRED = "expired"


class ReminderEntity(StrEnum):
    """What a reminder is about (the names of the state machines that govern them)."""

    CARD = "card"
    TEMP_CARD = "temp_card"
    CERTIFICATE = "certificate"


# The states in which an item is still in use, so its holder is reminded: a locked,
# cancelled or revoked item is left alone. A temporary card counts while assigned.
REMINDED_STATES: dict[ReminderEntity, frozenset[str]] = {
    ReminderEntity.CARD: frozenset({CardState.ACTIVE, CardState.INACTIVE, CardState.ISSUED}),
    ReminderEntity.TEMP_CARD: frozenset({TempCardState.ASSIGNED}),
    ReminderEntity.CERTIFICATE: frozenset({CertState.VALID, CertState.HOLD}),
}
# Where the check moves an item past its date (``expire_states``); temp cards stay.
EXPIRED_STATES: dict[ReminderEntity, str] = {
    ReminderEntity.CARD: CardState.EXPIRED,
    ReminderEntity.CERTIFICATE: CertState.EXPIRED,
}


class ExpiryConfig(BaseModel):
    """When items count as expiring, how often their holders are reminded, and what the
    scheduled check does to items past their date."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # "Expiring": valid_until / not_after / assigned_until within this many days.
    warn_days: int = Field(30, ge=1, le=366)
    # Each kind of reminder at most once per UTC day, or per ISO week.
    frequency: Literal["daily", "weekly"] = "daily"
    # How often the relay process runs the check.
    check_interval_s: float = Field(3600.0, ge=1.0)
    # Move cards past valid_until and certificates past not_after to ``expired``.
    expire_states: bool = True

    def period(self, at: dt.datetime) -> str:
        """The period ``at`` falls in: ``2026-11-24`` (daily) or ``2026-W48`` (weekly)."""
        day = at.astimezone(dt.UTC).date()
        if self.frequency == "daily":
            return day.isoformat()
        year, week, _ = day.isocalendar()
        return f"{year}-W{week:02d}"
