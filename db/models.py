"""SQLAlchemy models of the status store.

Every row that has a lifecycle carries ``state`` and ``version``; only
``db.transition`` changes them (compare-and-set on both).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from schemas.states import (
    APPROVAL_REQUEST,
    ATTEMPT,
    BATCH,
    BUREAU_LINE,
    CARD,
    CARD_UPDATE,
    CERTIFICATE,
    INCIDENT,
    SOFT_TOKEN,
    TEMP_CARD,
    USER,
    CredentialKind,
    Machine,
)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the status store")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dt.datetime: UTCDateTime()}


def state_in(*machines: Machine) -> str:
    """SQL that holds when ``state`` is a state of one of ``machines``."""
    states = sorted(frozenset[str]().union(*(m.states for m in machines)))
    if not all(s.isidentifier() for s in states):  # they are quoted into SQL below
        raise ValueError(f"a state name that is not an identifier: {states}")
    return "state IN (" + ", ".join(f"'{s}'" for s in states) + ")"


def state_in_kind(kinds: dict[str, Machine]) -> str:
    """SQL that holds when ``state`` is a state of the machine of the row's ``kind``."""
    return " OR ".join(f"(kind = '{kind}' AND {state_in(m)})" for kind, m in kinds.items())


# The credentials table holds cards and temporary cards: each kind its own states.
CREDENTIAL_KINDS: dict[str, Machine] = {
    CredentialKind.CARD: CARD,
    CredentialKind.TEMP_CARD: TEMP_CARD,
}


def state_check(*machines: Machine, kinds: dict[str, Machine] | None = None) -> CheckConstraint:
    """The table's ``state`` is one of its machines' states (``ck_<table>_state``), or,
    with ``kinds``, one of the states of its row's kind; migration 0009 builds the same
    CHECKs from the same data."""
    sql = state_in_kind(kinds) if kinds is not None else state_in(*machines)
    return CheckConstraint(sql, name="state")


class Stateful:
    """Mixin for rows with a lifecycle; ``machine`` names the table that governs them.

    Each stateful table declares ``state_check`` of its machines in ``__table_args__``.
    """

    id: Mapped[int]
    state: Mapped[str] = mapped_column(String(32), index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    @property
    def machine(self) -> Machine:
        raise NotImplementedError


class User(Stateful, Base):
    """A card holder."""

    __tablename__ = "users"
    __table_args__ = (
        state_check(USER),
        # Holders are matched by e-mail and UPN whatever their case (imports, CPRs,
        # the uniqueness checks): indexed as they are compared.
        Index("ix_users_lower_email", text("lower(email)")),
        Index("ix_users_lower_upn", text("lower(upn)")),
        # The console finds a card by its holder's name (migration 0019).
        Index("ix_users_lower_last_name", text("lower(last_name)")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), index=True)  # unique: Policy option
    external_id: Mapped[str | None] = mapped_column(String(128), unique=True)
    first_name: Mapped[str] = mapped_column(String(100))
    last_name: Mapped[str] = mapped_column(String(100))
    upn: Mapped[str] = mapped_column(String(254))
    organization: Mapped[str] = mapped_column(String(200))
    org_unit: Mapped[str] = mapped_column(String(200))
    title: Mapped[str | None] = mapped_column(String(100))
    country: Mapped[str | None] = mapped_column(String(2))
    username: Mapped[str | None] = mapped_column(String(100))
    identifier: Mapped[str | None] = mapped_column(String(100))
    photo_path: Mapped[str | None] = mapped_column(String(500))
    # Who created the user: ``cpr:<identity system>`` for a CPR; NULL for an operator,
    # a CSV import, or any user older than migration 0013. A CPR updates only its own
    # system's users unless ``[cpr] take_over_users``.
    source: Mapped[str | None] = mapped_column(String(80))

    credentials: Mapped[list[Credential]] = relationship(back_populates="user")

    @property
    def machine(self) -> Machine:
        return USER

    @property
    def display_name(self) -> str:
        return f"{self.first_name} {self.last_name}"


class BatchOrder(Stateful, Base):
    """One imported file (or API batch) of card requests."""

    __tablename__ = "batch_orders"
    __table_args__ = (state_check(BATCH),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    source_sha256: Mapped[str | None] = mapped_column(String(64), unique=True)
    requested_by: Mapped[str] = mapped_column(String(100))
    approved_by: Mapped[str | None] = mapped_column(String(100))
    card_count: Mapped[int] = mapped_column(Integer, default=0)
    rejected_rows: Mapped[int] = mapped_column(Integer, default=0)
    # Why the batch was rejected or its import failed: its cards still ``requested``
    # are rejected with it, a chunk at a time, with this reason (workers.waits).
    reason: Mapped[str | None] = mapped_column(String(500))
    # Higher goes first at the stations; its cards carry a copy (``Credential.priority``)
    # so a station's pick is one index read (``db.line_control``, migration 0019).
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))

    credentials: Mapped[list[Credential]] = relationship(back_populates="batch")

    @property
    def machine(self) -> Machine:
        return BATCH


class Credential(Stateful, Base):
    """A card or a temporary card, from request to the end of its life.

    Secrets (PIN, PUK, admin key, escrowed private key) are stored sealed by
    ``db.secrets.SecretBox``; they are never readable from this row without the master key.
    """

    __tablename__ = "credentials"
    # A credential is a card or a temporary card: its state is one of either machine's.
    # The oldest card in a state, and how many have waited past a limit, are index
    # reads (db.alerts, migration 0018).
    __table_args__ = (
        state_check(kinds=CREDENTIAL_KINDS),
        Index("ix_credentials_state_updated_at", "state", "updated_at"),
        # A station's pick: the oldest ready card of the highest priority of its line;
        # a batch's cards counted by state (migration 0019).
        Index("ix_credentials_line_queue", "state", "line", "priority", "id"),
        Index("ix_credentials_batch_state", "batch_id", "state"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), default=CredentialKind.CARD)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("batch_orders.id"), index=True)
    line: Mapped[str] = mapped_column(String(32), default="default")
    requested_by: Mapped[str] = mapped_column(String(100))
    card_number: Mapped[str | None] = mapped_column(String(32), unique=True)
    valid_from: Mapped[dt.datetime | None]
    valid_until: Mapped[dt.datetime | None]
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    # The attempts made before the card's last retry (``retry``: failed -> approved):
    # only the attempts after them count against ``max_attempts``.
    attempt_base: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # Copied from the batch (``cardline batch priority``): higher is claimed first.
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # What a batch row asked to change on its holder, made when this card's request is
    # approved (never at import, never on reject).
    # None is SQL NULL (not JSON null): "no changes" is found with IS NULL.
    user_changes: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    pin_sealed: Mapped[str | None] = mapped_column(Text)
    puk_sealed: Mapped[str | None] = mapped_column(Text)
    admin_key_sealed: Mapped[str | None] = mapped_column(Text)
    escrow_key_sealed: Mapped[str | None] = mapped_column(Text)
    pin_letter_path: Mapped[str | None] = mapped_column(String(500))
    # When the PIN letter was mailed to the holder (``pin_letter_delivery = "mail"``).
    pin_letter_mailed_at: Mapped[dt.datetime | None]
    faces_path: Mapped[str | None] = mapped_column(String(500))
    # Write the holder's earlier escrowed encryption keys to this card too (key recovery).
    recover_escrow: Mapped[bool] = mapped_column(default=False, server_default=false())
    # When the reconciler last re-published this credential's pending job.
    redriven_at: Mapped[dt.datetime | None]
    # A temporary card's assignment ends then (extend moves it).
    assigned_until: Mapped[dt.datetime | None]
    # New certificates for the card's keys were asked for then (temp-card assign); the
    # pki worker re-certifies every usage whose current certificate is older.
    recertify_requested_at: Mapped[dt.datetime | None]
    # The chip's serial (ICCSN) of the produced card: how a desk knows which card it holds.
    chip_serial: Mapped[str | None] = mapped_column(String(64), unique=True)

    user: Mapped[User | None] = relationship(back_populates="credentials")
    batch: Mapped[BatchOrder | None] = relationship(back_populates="credentials")

    @property
    def machine(self) -> Machine:
        return TEMP_CARD if self.kind == CredentialKind.TEMP_CARD else CARD


# The partial unique indexes that keep one live attempt per card and per station: the
# column SQLite names when one refuses a row, and what the refusal means.
LIVE_ATTEMPT_INDEXES: dict[str, tuple[str, str]] = {
    "uq_live_attempt_per_credential": (
        "production_attempts.credential_id",
        "the card already has a live production attempt",
    ),
    "uq_live_attempt_per_station": (
        "production_attempts.station_id",
        "the station already has a card in production",
    ),
}


def _live_attempt_index(name: str, column: str) -> Index:
    live = text("state = 'in_progress'")
    return Index(name, column, unique=True, sqlite_where=live, postgresql_where=live)


class ProductionAttempt(Stateful, Base):
    """One blank card fed into a station for a credential: succeeded or spoiled."""

    __tablename__ = "production_attempts"
    __table_args__ = (
        UniqueConstraint("credential_id", "number"),
        state_check(ATTEMPT),
        # At most one live attempt per credential (a second claim is impossible) and per
        # station (a station works on one blank at a time).
        _live_attempt_index("uq_live_attempt_per_credential", "credential_id"),
        _live_attempt_index("uq_live_attempt_per_station", "station_id"),
        # The console's station page: blanks per station by outcome and fault (0019).
        Index("ix_production_attempts_station_state", "station_id", "state", "fault"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    credential_id: Mapped[int] = mapped_column(ForeignKey("credentials.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    station_id: Mapped[str] = mapped_column(String(64), index=True)
    station_instance: Mapped[str] = mapped_column(String(64))
    chip_serial: Mapped[str | None] = mapped_column(String(64))
    fault: Mapped[str | None] = mapped_column(String(32))
    fault_detail: Mapped[str | None] = mapped_column(String(500))
    lease_expires_at: Mapped[dt.datetime] = mapped_column(index=True)
    # Indexed: the spoil rate of the recent window (db.alerts, migration 0018).
    finished_at: Mapped[dt.datetime | None] = mapped_column(index=True)

    @property
    def machine(self) -> Machine:
        return ATTEMPT


_ESCROW_CERT = text("attempt_id IS NULL AND update_id IS NULL AND state IN ('valid', 'hold')")
_UPDATE_CERT = text("update_id IS NOT NULL AND state IN ('valid', 'hold')")


class Certificate(Stateful, Base):
    """An issued certificate. Auth/sign certificates belong to an attempt; the escrowed
    encryption certificate belongs to the credential (``attempt_id`` is NULL); a soft
    token's certificate belongs to the soft token (``credential_id`` is NULL)."""

    __tablename__ = "certificates"
    __table_args__ = (
        # One live certificate per attempt and usage: a revoked one (it did not fit the
        # chip's key) may be followed by another on the same blank.
        Index(
            "uq_live_cert_per_attempt",
            "attempt_id",
            "usage",
            unique=True,
            sqlite_where=text("attempt_id IS NOT NULL AND state IN ('valid', 'hold')"),
            postgresql_where=text("attempt_id IS NOT NULL AND state IN ('valid', 'hold')"),
        ),
        state_check(CERTIFICATE),
        Index(
            "uq_escrow_cert_per_credential",
            "credential_id",
            "usage",
            unique=True,
            sqlite_where=_ESCROW_CERT,
            postgresql_where=_ESCROW_CERT,
        ),
        # One live certificate per card update and usage.
        Index(
            "uq_live_cert_per_update",
            "update_id",
            "usage",
            unique=True,
            sqlite_where=_UPDATE_CERT,
            postgresql_where=_UPDATE_CERT,
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    credential_id: Mapped[int | None] = mapped_column(ForeignKey("credentials.id"), index=True)
    attempt_id: Mapped[int | None] = mapped_column(ForeignKey("production_attempts.id"), index=True)
    soft_token_id: Mapped[int | None] = mapped_column(ForeignKey("soft_tokens.id"), unique=True)
    usage: Mapped[str] = mapped_column(String(32))
    serial: Mapped[str] = mapped_column(String(64), unique=True)
    subject: Mapped[str] = mapped_column(String(500))
    not_before: Mapped[dt.datetime]
    not_after: Mapped[dt.datetime]
    pem: Mapped[str] = mapped_column(Text)
    revocation_reason: Mapped[str | None] = mapped_column(String(32))
    revoked_at: Mapped[dt.datetime | None]
    # Whether the card's chip carries it, as last written and read back: set when the
    # card is produced or an update writing it is applied, cleared when an update
    # erases it. Never true before the chip has it.
    on_chip: Mapped[bool] = mapped_column(default=False, server_default=false())
    # The card update it was issued for (renewal), if any.
    update_id: Mapped[int | None] = mapped_column(ForeignKey("card_updates.id"), index=True)

    @property
    def machine(self) -> Machine:
        return CERTIFICATE


class SoftToken(Stateful, Base):
    """A software token: a server-generated key and its certificate in a PKCS#12 file.

    The passphrase is stored twice: hashed (to check one offered back) and sealed (so a
    user with the role can display it); the P12 itself is sealed too.
    """

    __tablename__ = "soft_tokens"
    __table_args__ = (state_check(SOFT_TOKEN),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    token_type: Mapped[str] = mapped_column(String(32))
    requested_by: Mapped[str] = mapped_column(String(100))
    approved_by: Mapped[str | None] = mapped_column(String(100))
    passphrase_hash: Mapped[str | None] = mapped_column(String(200))
    passphrase_sealed: Mapped[str | None] = mapped_column(Text)
    p12_sealed: Mapped[str | None] = mapped_column(Text)
    p12_path: Mapped[str | None] = mapped_column(String(500))
    mailed_at: Mapped[dt.datetime | None]
    issued_at: Mapped[dt.datetime | None]
    redriven_at: Mapped[dt.datetime | None]

    user: Mapped[User] = relationship()

    @property
    def machine(self) -> Machine:
        return SOFT_TOKEN


class Station(Base):
    """A production station as last seen by its heartbeat (operational, not audited)."""

    __tablename__ = "stations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    line: Mapped[str] = mapped_column(String(32))
    instance: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32), default="idle")
    current_credential_id: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    cards_done: Mapped[int] = mapped_column(Integer, default=0)
    cards_spoiled: Mapped[int] = mapped_column(Integer, default=0)


class LinePause(Base):
    """A line or a station paused by an operator (``db.line_control``): its stations
    finish the card in hand and claim no new one until it is resumed (the row deleted).
    Pausing and resuming are audited (``record``); this row is the flag they check."""

    __tablename__ = "line_pauses"

    scope: Mapped[str] = mapped_column(String(16), primary_key=True)  # "line" or "station"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    paused_by: Mapped[str] = mapped_column(String(100))
    paused_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    reason: Mapped[str | None] = mapped_column(String(500))


class AuditEvent(Base):
    """Append-only, hash-chained record of every state change."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[dt.datetime]
    actor: Mapped[str] = mapped_column(String(100))
    entity: Mapped[str] = mapped_column(String(32))
    entity_id: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    from_state: Mapped[str | None] = mapped_column(String(32))
    to_state: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(String(500))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (Index("ix_audit_entity", "entity", "entity_id"),)


class AuditHead(Base):
    """One row: the last sequence number and hash. Locking it serialises chain appends."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    """A seal over the audit chain: its head hash at ``seq``, MAC'd under a key derived
    from the master key (``db.checkpoints``), which the database does not hold.

    The sequence number is the key: two sealers racing for one head write one row.
    ``verified_at`` (not under the MAC) is when a verification last passed through it.
    """

    __tablename__ = "audit_checkpoints"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64))
    mac: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime]
    created_by: Mapped[str] = mapped_column(String(100))
    verified_at: Mapped[dt.datetime | None]


class OutboxMessage(Base):
    """A job message written in the transaction that made it necessary."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(primary_key=True)
    queue: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[dt.datetime | None]
    publish_count: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (
        Index(
            "ix_outbox_unsent",
            "id",
            sqlite_where=text("sent_at IS NULL"),
            postgresql_where=text("sent_at IS NULL"),
        ),
    )


class Incident(Stateful, Base):
    """A device incident (seed 003): a card forgotten, lost, stolen or damaged, and the
    replacement request it made (a card, or a temporary card to assign)."""

    __tablename__ = "incidents"
    __table_args__ = (state_check(INCIDENT),)

    id: Mapped[int] = mapped_column(primary_key=True)
    credential_id: Mapped[int] = mapped_column(ForeignKey("credentials.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    temporary: Mapped[bool] = mapped_column(default=False)
    replacement_id: Mapped[int | None] = mapped_column(ForeignKey("credentials.id"))
    declared_by: Mapped[str] = mapped_column(String(100))
    note: Mapped[str | None] = mapped_column(String(400))

    @property
    def machine(self) -> Machine:
        return INCIDENT


class Reminder(Base):
    """An expiry reminder sent: once per item, kind and period (the key makes it so)."""

    __tablename__ = "reminders"
    __table_args__ = (UniqueConstraint("entity", "entity_id", "kind", "period"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    entity: Mapped[str] = mapped_column(String(32))
    entity_id: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # expiring | expired
    period: Mapped[str] = mapped_column(String(16))  # e.g. 2026-11-24 or 2026-W48
    recipient: Mapped[str] = mapped_column(String(254))
    sent_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    redriven_at: Mapped[dt.datetime | None]


class Attention(Base):
    """Work that failed permanently and waits for a person, not for a message.

    The reconciler does not re-drive a row with an open entry (it would only fail the
    same way again); ``cardline status`` and ``GET /status`` list them with the reason.
    Resolving one (``cardline attention resolve``) lets the reconciler try again.
    """

    __tablename__ = "attention"
    __table_args__ = (
        Index(
            "uq_attention_open",
            "entity",
            "entity_id",
            "wait",
            unique=True,
            sqlite_where=text("resolved_at IS NULL"),
            postgresql_where=text("resolved_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    entity: Mapped[str] = mapped_column(String(32))
    entity_id: Mapped[str] = mapped_column(String(64))
    wait: Mapped[str] = mapped_column(String(48))
    reason: Mapped[str] = mapped_column(String(500))
    actor: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[dt.datetime | None]
    resolved_by: Mapped[str | None] = mapped_column(String(100))


class CardProductionRequest(Base):
    """The last signed CPR received for a user (seed 000): kept as received, bytes and
    signature, so it can be verified again; a newer CPR for the user replaces it."""

    __tablename__ = "cprs"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), unique=True)
    identity_system: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str] = mapped_column(String(100))
    payload: Mapped[str] = mapped_column(Text)
    signature: Mapped[str] = mapped_column(Text)
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    replaced: Mapped[int] = mapped_column(Integer, default=0)


class CprReceipt(Base):
    """Every CPR ever accepted, one row per identity system and request id, never
    deleted: a request id is used once, for ever (``cprs`` keeps only a user's last
    CPR, so it cannot say so). ``issued_at`` is the CPR's signed issue time (NULL for
    CPRs accepted before migration 0013)."""

    __tablename__ = "cpr_receipts"
    __table_args__ = (UniqueConstraint("identity_system", "request_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    identity_system: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str] = mapped_column(String(100))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    issued_at: Mapped[dt.datetime | None]
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    submitted_by: Mapped[str | None] = mapped_column(String(100))


class Principal(Base):
    """Who acts: an operator account, an identity system, a bureau, a station or a
    Cardline process. ``name`` is stored normalised (NFKC, casefolded), so two names a
    person reads as one are one principal; roles are the only source of permissions
    (``schemas.permissions``). The audit log records ``principal:<id>``."""

    __tablename__ = "principals"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(100), unique=True)
    display_name: Mapped[str] = mapped_column(String(100))
    roles: Mapped[list[str]] = mapped_column(JSON, default=list)
    password_hash: Mapped[str | None] = mapped_column(String(200))
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[dt.datetime | None]
    disabled_at: Mapped[dt.datetime | None]
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    @property
    def actor(self) -> str:
        return f"principal:{self.id}"


class ApiToken(Base):
    """A bearer token of a principal: shown once, stored as its SHA-256; it grants what
    its principal's roles grant, until it expires or is revoked."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    principal_id: Mapped[int] = mapped_column(ForeignKey("principals.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]

    principal: Mapped[Principal] = relationship()


class ConsoleSession(Base):
    """A console login: the session cookie and its CSRF token are stored as SHA-256
    digests only; a session ends at ``expires_at``, after ``idle`` without use, or when
    revoked (logout, the principal disabled)."""

    __tablename__ = "console_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    principal_id: Mapped[int] = mapped_column(ForeignKey("principals.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    csrf_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    revoked_at: Mapped[dt.datetime | None]

    principal: Mapped[Principal] = relationship()


_PENDING = text("state = 'pending'")


class ApprovalRequest(Stateful, Base):
    """An operation held for an approver (seed 002 §4.2): what it is (``process``, the
    use case's name), on what (``target``, as the operator named it) and with which
    parameters (never a secret). Approving it carries the operation out in the same
    transaction; at most one is pending per process and target."""

    __tablename__ = "approval_requests"
    __table_args__ = (
        state_check(APPROVAL_REQUEST),
        Index(
            "uq_pending_request",
            "process",
            "target",
            unique=True,
            sqlite_where=_PENDING,
            postgresql_where=_PENDING,
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    process: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(200))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    summary: Mapped[str] = mapped_column(String(300))
    requested_by: Mapped[str] = mapped_column(String(100), index=True)
    decided_by: Mapped[str | None] = mapped_column(String(100))
    decided_at: Mapped[dt.datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(500))

    @property
    def machine(self) -> Machine:
        return APPROVAL_REQUEST


class CrlPublication(Base):
    """Each CRL the issuing CA published: its number, validity and what it covered."""

    __tablename__ = "crl_publications"

    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    this_update: Mapped[dt.datetime]
    next_update: Mapped[dt.datetime]
    revoked_count: Mapped[int] = mapped_column(Integer)
    # A digest of the revoked and held serials it lists: equal digests, equal CRLs.
    fingerprint: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class CardUpdate(Stateful, Base):
    """A change to the chip of a card already produced (renewal, ...), applied when the
    card is next inserted at an update desk or a station: ``pending`` until then,
    ``in_progress`` while a desk writes it, ``applied`` once read back.

    ``plan`` says what must change (for a renewal: the usages to re-key). ``journal``
    records, step by step, what the chip already carries (the new keys' ids and CSRs,
    written, old objects erased), so a card pulled or a desk killed part-way resumes
    where it stopped, never doing a step twice. Never holds a secret.
    """

    __tablename__ = "card_updates"
    __table_args__ = (state_check(CARD_UPDATE),)

    id: Mapped[int] = mapped_column(primary_key=True)
    credential_id: Mapped[int] = mapped_column(ForeignKey("credentials.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    requested_by: Mapped[str] = mapped_column(String(100))
    plan: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    journal: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    station_id: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[dt.datetime | None]
    applied_at: Mapped[dt.datetime | None]
    error: Mapped[str | None] = mapped_column(String(500))

    @property
    def machine(self) -> Machine:
        return CARD_UPDATE


class BureauFile(Base):
    """An order file sent to a service bureau or a delivery file received from one
    (``schemas.bureau``): its id, its place in the bureau's sequence, its digest and its
    counts. Never deleted: the sequence and the digests are how a replay is refused."""

    __tablename__ = "bureau_files"
    __table_args__ = (
        UniqueConstraint("bureau", "kind", "sequence", name="uq_bureau_file_sequence"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    bureau: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))  # "order" or "delivery"
    file_id: Mapped[str] = mapped_column(String(64), unique=True)
    sequence: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    record_count: Mapped[int] = mapped_column(Integer)
    produced_count: Mapped[int] = mapped_column(Integer, default=0)
    rejected_count: Mapped[int] = mapped_column(Integer, default=0)
    spoiled_blanks: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    path: Mapped[str | None] = mapped_column(String(500))


class BureauLine(Stateful, Base):
    """One card in an order file: ``ordered`` until a delivery file says it was
    produced (with its chip serial) or rejected (with a reason code)."""

    __tablename__ = "bureau_lines"
    __table_args__ = (
        state_check(BUREAU_LINE),
        # One order outstanding per card: exporting again never orders a card twice.
        Index(
            "uq_bureau_line_outstanding",
            "credential_id",
            unique=True,
            sqlite_where=text("state = 'ordered'"),
            postgresql_where=text("state = 'ordered'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    order_line_id: Mapped[str] = mapped_column(String(64), unique=True)
    bureau: Mapped[str] = mapped_column(String(32), index=True)
    credential_id: Mapped[int] = mapped_column(ForeignKey("credentials.id"), index=True)
    order_file_id: Mapped[int] = mapped_column(ForeignKey("bureau_files.id"), index=True)
    delivery_file_id: Mapped[int | None] = mapped_column(ForeignKey("bureau_files.id"))
    chip_serial: Mapped[str | None] = mapped_column(String(64))
    card_serial: Mapped[str | None] = mapped_column(String(64))
    atr: Mapped[str | None] = mapped_column(String(66))
    reason: Mapped[str | None] = mapped_column(String(32))
    delivered_at: Mapped[dt.datetime | None]

    @property
    def machine(self) -> Machine:
        return BUREAU_LINE
