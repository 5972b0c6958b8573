"""Bodies of the HTTP API (pydantic): what callers send and what they get back."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.states import CertUsage, RevocationReason

Reason = Field(None, max_length=400)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserIn(_In):
    """A card holder's attributes (the batch CSV's columns, without ``photo``)."""

    first_name: str = Field(max_length=100)
    last_name: str = Field(max_length=100)
    email: str = Field(max_length=254)
    upn: str = Field(max_length=254)
    organization: str = Field(max_length=200)
    org_unit: str = Field(max_length=200)
    title: str | None = Field(None, max_length=100)
    country: str | None = Field(None, max_length=2)
    username: str | None = Field(None, max_length=100)
    identifier: str | None = Field(None, max_length=100)
    external_id: str | None = Field(None, max_length=128)


class UserPatch(_In):
    """Only the attributes given change."""

    first_name: str | None = Field(None, max_length=100)
    last_name: str | None = Field(None, max_length=100)
    email: str | None = Field(None, max_length=254)
    upn: str | None = Field(None, max_length=254)
    organization: str | None = Field(None, max_length=200)
    org_unit: str | None = Field(None, max_length=200)
    title: str | None = Field(None, max_length=100)
    country: str | None = Field(None, max_length=2)
    username: str | None = Field(None, max_length=100)
    identifier: str | None = Field(None, max_length=100)
    external_id: str | None = Field(None, max_length=128)


class UserOut(BaseModel):
    id: int
    state: str
    email: str
    first_name: str
    last_name: str
    upn: str
    organization: str
    org_unit: str
    title: str | None
    country: str | None
    username: str | None
    identifier: str | None
    external_id: str | None
    cards: int
    created_at: str
    updated_at: str


class UserPage(BaseModel):
    items: list[UserOut]
    total: int
    page: int
    per_page: int


class ReasonIn(_In):
    reason: str | None = Reason


class RequiredReasonIn(_In):
    reason: str = Field(min_length=1, max_length=400)
    comment: str | None = Reason


class CommentIn(_In):
    comment: str | None = Reason


LockReason = Literal[
    "privilege_withdrawn",
    "affiliation_changed",
    "cessation_of_operation",
    "key_compromise",
    "unspecified",
]


class LockIn(_In):
    reason: LockReason


class RevokeIn(_In):
    reason: RevocationReason


class BulkIn(_In):
    """The users a multi-user form acts on: every one the search finds."""

    state: str | None = Field(None, max_length=32)
    text: str | None = Field(None, max_length=200)
    reason: str | None = Reason


class BulkLockIn(BulkIn):
    lock_reason: LockReason = "privilege_withdrawn"


class BulkOut(BaseModel):
    done: list[int]
    refused: dict[int, str]


class CardRequestIn(_In):
    """One user gets one card; several users make one batch order."""

    users: list[str] = Field(min_length=1, max_length=1000)  # e-mail or id of each
    line: str | None = Field(None, max_length=32)


class CardsCreated(BaseModel):
    ids: list[int]
    state: str


class RecoverIn(_In):
    """Which escrowed keys to recover: their certificates' serials (empty: all)."""

    keys: list[str] = Field(default_factory=list, max_length=100)


class UnblockIn(_In):
    """The challenge the card shows (16 hex digits; spaces and case do not matter)."""

    challenge: str = Field(min_length=16, max_length=40)


class UnblockOut(BaseModel):
    card_number: str
    response: str  # 16 hex digits the holder types into the card


class RenewIn(BaseModel):
    """A renewal's options (seed 002 §5.3.5); all may be left out."""

    model_config = ConfigDict(extra="forbid")

    # The certificates to deliver; empty: every one whose key the chip made.
    usages: list[CertUsage] = Field(default_factory=list, max_length=3)
    keep_keys: bool = False  # re-certify the chip's keys instead of new ones
    # Escrowed keys of the holder's to write in the same visit (certificate serials;
    # an empty list: all of them); null: none.
    recover: list[str] | None = Field(default=None, max_length=100)


class PinResetOut(BaseModel):
    """A PIN reset waiting for the card at an update desk."""

    update_id: int
    state: str  # "pending" until the desk applies it


class CardCertificateOut(BaseModel):
    """One of a card's certificates: its state, and whether the chip carries it (only
    once written and read back)."""

    serial: str
    usage: str
    state: str
    on_chip: bool
    not_after: str
    revocation_reason: str | None = None


class CardUpdateOut(BaseModel):
    """A change to the card's chip: pending until the card is next at a desk."""

    id: int
    kind: str
    state: str
    requested_by: str
    requested_at: str
    applied_at: str | None = None
    steps_done: list[str] = []
    error: str | None = None


class CardEventOut(BaseModel):
    """One audit event of the card: its timeline."""

    seq: int
    at: str
    actor: str
    action: str
    from_state: str | None
    to_state: str | None
    reason: str | None


class CardAttemptOut(BaseModel):
    """One production attempt: where, which chip, how it ended."""

    number: int
    state: str
    station_id: str | None
    chip_serial: str | None
    fault: str | None
    detail: str | None
    started_at: str
    finished_at: str | None


class CardOut(BaseModel):
    id: int
    kind: str
    state: str
    card_number: str | None
    user_id: int | None
    user_email: str | None
    batch_id: int | None
    line: str
    requested_by: str
    attempts: int
    valid_from: str | None
    valid_until: str | None
    certificates: dict[str, str]  # serial -> state
    certificate_list: list[CardCertificateOut] = []
    updates: list[CardUpdateOut] = []
    # The timeline (one card only: ``GET /cards/{card}``, ``cardline card show``).
    events: list[CardEventOut] = []
    attempt_list: list[CardAttemptOut] = []


class CardPage(BaseModel):
    items: list[CardOut]
    total: int
    page: int
    per_page: int


class StateOut(BaseModel):
    state: str


class CountOut(BaseModel):
    """A state change and how many certificates it moved."""

    certificates: int


class BatchOut(BaseModel):
    batch_id: int | None
    users_created: int
    users_updated: int
    cards_requested: int
    rejected: list[dict[str, object]]
    reject_report: str | None = None  # its file name in the line's reject folder


class BatchSummaryOut(BaseModel):
    """A batch order and how far its cards have come."""

    id: int
    name: str
    state: str
    requested_by: str
    approved_by: str | None
    created_at: str
    card_count: int
    rejected_rows: int
    reason: str | None = None
    cards: dict[str, int] = {}  # card state -> how many


class BatchListOut(BaseModel):
    items: list[BatchSummaryOut]
    total: int
    page: int
    per_page: int


class DecisionOut(BaseModel):
    batch_id: int
    approved: int
    rejected: int


class SoftTokenRequestIn(_In):
    user: str = Field(min_length=1, max_length=254)
    types: list[str] = Field(min_length=1, max_length=16)


class SoftTokenOut(BaseModel):
    id: int
    user_email: str
    token_type: str
    state: str
    requested_by: str
    approved_by: str | None
    serial: str | None


class PassphraseOut(BaseModel):
    passphrase: str


class StockIn(_In):
    count: int = Field(ge=1, le=1000)
    line: str | None = Field(None, max_length=32)


class StockOut(BaseModel):
    batch_id: int
    ids: list[int]


class AssignIn(_In):
    user: str = Field(min_length=1, max_length=254)  # e-mail or id
    days: int | None = Field(None, ge=1, le=366)


class DaysIn(_In):
    days: int | None = Field(None, ge=1, le=366)


IncidentKindName = Literal["forgotten", "lost", "stolen", "damaged"]


class IncidentIn(_In):
    kind: IncidentKindName
    temporary: bool | None = None  # default: forgotten -> temporary, others -> permanent
    note: str | None = Reason


class IncidentOut(BaseModel):
    id: int
    card_id: int
    kind: str
    temporary: bool
    state: str
    replacement_id: int | None
    declared_by: str
    # Stolen or damaged under ``[approvals] card_lock``: the held lock request it made.
    lock_request_id: int | None = None


class CardPatch(_In):
    """What may change on a card not yet at a station."""

    line: str = Field(min_length=1, max_length=32)
