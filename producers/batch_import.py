"""CSV batch intake: one file becomes one batch order of card requests, or nothing.

Everything one import writes (users created or updated, one card per valid row, the
batch order, their audit events and outbox messages) is one transaction. Invalid rows
are rejected one by one, with line, field and reason, and listed in a reject report
written after the transaction commits. A file is known by the SHA-256 of its bytes, so
importing the same file again creates nothing.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from db import outbox
from db.engine import Store
from db.files import atomic_open
from db.models import BatchOrder, Credential, User
from db.transition import create
from db.transition import record as record_change  # here a ``record`` is a CSV record
from schemas.batch import LINE_NAME, BatchRow, describe_errors, header_columns
from schemas.errors import ValidationFailed
from schemas.messages import PrepareCard
from schemas.policy import Policy
from schemas.states import LIVE_CARD_STATES, BatchState, CardState, CredentialKind, UserState

log = structlog.get_logger(__name__)

# Well under every backend's limit on bound parameters in one statement.
_CHUNK = 500
_CLOSED_USER_STATES = frozenset({UserState.LOCKED, UserState.DELETED})


@dataclass(frozen=True)
class RejectedRow:
    """A row that was not imported: its first line, the column at fault (None when the
    row as a whole is), why, and the row as read (header name -> cell)."""

    line: int
    field: str | None
    reason: str
    raw: Mapping[str, str]


@dataclass(frozen=True)
class ImportReport:
    """What one import did. ``batch_id`` is None when no row was valid."""

    batch_id: int | None
    name: str
    users_created: int
    users_updated: int
    cards_requested: int
    rejected: tuple[RejectedRow, ...]
    reject_report: Path | None
    already_imported: bool = False


def import_batch(
    store: Store,
    path: Path,
    *,
    policy: Policy,
    requested_by: str,
    reject_dir: Path,
    line: str | None = None,
    allow_photos: bool = True,
    report_by_content: bool = False,
) -> ImportReport:
    """Import ``path`` as one batch order on ``line`` (default: the policy's line).

    Raises ``ValidationFailed``, having written nothing, when the file as a whole is
    unusable (not UTF-8, not CSV, a column missing, unknown or repeated) or an argument
    is. Otherwise imports every valid row, rejects every invalid one, commits, and then
    writes ``reject_dir/<stem>-rejects.csv`` when any row was rejected. A file imported
    before is reported with ``already_imported=True`` and changes nothing.

    ``allow_photos=False`` refuses the whole file (``ValidationFailed`` naming the line
    and ``photo``) when a row names a photo: an upload's photo paths point into a
    folder that is gone once the import returns. ``report_by_content=True`` names the
    report ``<stem>-<first 16 hex digits of the file's SHA-256>-rejects.csv``, so two
    files of one name (uploads) never overwrite each other's report.
    """
    line_name = _line_name(line or policy.default_line)
    if not requested_by.strip() or len(requested_by) > 100:
        raise ValidationFailed(
            "a requester of 1 to 100 characters is required", field="requested_by"
        )
    data = path.read_bytes()
    sheet = read_sheet(data)
    if not allow_photos:
        _refuse_photos(sheet)
    digest = hashlib.sha256(data).hexdigest()
    name = path.name[:200]
    with store.tx() as session:
        existing = session.scalar(select(BatchOrder.id).where(BatchOrder.source_sha256 == digest))
        if existing is not None:
            return ImportReport(existing, name, 0, 0, 0, (), None, already_imported=True)
        work = _Import(
            session,
            name=name,
            digest=digest,
            base_dir=path.parent.resolve(),
            policy=policy,
            requested_by=requested_by,
            line=line_name,
        )
        work.run(sheet.records)
    stem = f"{path.stem}-{digest[:16]}" if report_by_content else path.stem
    return _finish(work, sheet, reject_dir / f"{stem}-rejects.csv")


def _refuse_photos(sheet: Sheet) -> None:
    for record in sheet.records:
        if record.cells.get("photo", "").strip():
            raise ValidationFailed(
                "photos cannot travel in an upload yet: leave the photo column empty",
                field="photo",
                line=record.line,
            )


def _line_name(line: str) -> str:
    if not LINE_NAME.match(line):
        raise ValidationFailed(f"{line!r} is not a production line name", field="line")
    return line


def _finish(work: _Import, sheet: Sheet, reject_path: Path) -> ImportReport:
    rejected = tuple(work.rejected)
    report_path = write_rejects(reject_path, sheet.header, rejected) if rejected else None
    batch_id = work.batch.id if work.batch is not None else None
    log.info(
        "batch imported",
        batch_id=batch_id,
        cards=work.cards_requested,
        users_created=work.users_created,
        users_updated=work.users_updated,
        rejected=len(rejected),
    )
    return ImportReport(
        batch_id=batch_id,
        name=work.name,
        users_created=work.users_created,
        users_updated=work.users_updated,
        cards_requested=work.cards_requested,
        rejected=rejected,
        reject_report=report_path,
    )


# --- reading the file -------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One data row as read: its first physical line, its cells (padded to the header's
    width) by header name as written and by column, and how many cells it really had."""

    line: int
    raw: dict[str, str]
    cells: dict[str, str]
    width: int


@dataclass(frozen=True)
class Sheet:
    """A decoded CSV file: the header as written and the non-blank data rows."""

    header: tuple[str, ...]
    records: tuple[Record, ...]


def read_sheet(data: bytes) -> Sheet:
    """Decode and split a batch file; raise ``ValidationFailed`` (with the line) when the
    bytes are not UTF-8, not CSV, or the header is wrong. Rows are not validated here."""
    reader = csv.reader(io.StringIO(_decode(data), newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise ValidationFailed("the file is empty; a header row is required", line=1)
        columns = header_columns(header)
        records = tuple(_records(reader, header, columns))
    except csv.Error as exc:
        raise ValidationFailed(f"not a readable CSV file: {exc}", line=reader.line_num) from exc
    return Sheet(tuple(header), records)


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ValidationFailed(
            f"not UTF-8 text: undecodable byte 0x{data[exc.start]:02x}", line=line
        ) from exc


def _records(reader: Any, header: Sequence[str], columns: Sequence[str]) -> Iterator[Record]:
    # csv.reader's line_num counts physical lines read so far, so a quoted field that
    # spans lines moves it on by more than one: a row starts just after the previous end.
    end = reader.line_num
    for cells in reader:
        start, end = end + 1, reader.line_num
        if not any(cell.strip() for cell in cells):
            continue  # blank lines and rows of empty cells, as spreadsheets leave them
        # Pad short rows so the reject report can show every column of them.
        padded = [*cells, *[""] * (len(header) - len(cells))]
        yield Record(
            line=start,
            raw=dict(zip(header, padded, strict=False)),
            cells=dict(zip(columns, padded, strict=False)),
            width=len(cells),
        )


# --- importing the rows -----------------------------------------------------------------


class _Rejected(Exception):
    """A row is rejected; used only inside one import, never raised out of it."""

    def __init__(self, field: str | None, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


class _Import:
    """The work of one import inside its transaction; counts what it did."""

    def __init__(
        self,
        session: Session,
        *,
        name: str,
        digest: str,
        base_dir: Path,
        policy: Policy,
        requested_by: str,
        line: str,
    ) -> None:
        self.session = session
        self.name = name
        self.digest = digest
        self.base_dir = base_dir
        self.policy = policy
        self.requested_by = requested_by
        self.line = line
        self.batch: BatchOrder | None = None
        self.rejected: list[RejectedRow] = []
        self.users_created = 0
        self.users_updated = 0
        self.cards_requested = 0
        self.by_email: dict[str, User] = {}
        # E-mails several users share (possible when ``email_unique`` is off): a row
        # naming one must say which user it means by external_id.
        self.shared_emails: set[str] = set()
        self.by_external_id: dict[str, User] = {}
        # UPNs (lower-cased) of users not deleted: no two may share one.
        self.by_upn: dict[str, User] = {}
        self.live_cards: dict[int, int] = {}

    def run(self, records: Sequence[Record]) -> None:
        """Validate every record, then import each valid one or reject it."""
        candidates = self._validate_all(records)
        self._preload([row for _, row in candidates])
        for record, row in candidates:
            try:
                self._admit(record, row)
            except _Rejected as rejected:
                self._reject(record, rejected)
        if self.batch is not None:
            self.batch.card_count = self.cards_requested
            self.batch.rejected_rows = len(self.rejected)
        self.rejected.sort(key=lambda r: r.line)

    def _reject(self, record: Record, rejected: _Rejected) -> None:
        self.rejected.append(RejectedRow(record.line, rejected.field, rejected.reason, record.raw))

    # -- checks that need only the file

    def _validate_all(self, records: Sequence[Record]) -> list[tuple[Record, BatchRow]]:
        first_email: dict[str, int] = {}
        first_external_id: dict[str, int] = {}
        first_upn: dict[str, int] = {}
        valid: list[tuple[Record, BatchRow]] = []
        for record in records:
            try:
                row = _parse(record)
                _check_first(first_email, row.email, record.line, "email")
                _check_first(first_external_id, row.external_id, record.line, "external_id")
                _check_first(first_upn, row.upn.lower(), record.line, "upn")
            except _Rejected as rejected:
                self._reject(record, rejected)
                continue
            valid.append((record, row))
        return valid

    # -- checks against the status store

    def _preload(self, rows: Sequence[BatchRow]) -> None:
        # A few queries per chunk of rows instead of several per row.
        emails = sorted({row.email for row in rows})
        external_ids = sorted({row.external_id for row in rows if row.external_id})
        for chunk in _chunks(emails):
            self._load_users(func.lower(User.email).in_(chunk))
        for chunk in _chunks(external_ids):
            self._load_users(User.external_id.in_(chunk))
        upns = sorted({row.upn.lower() for row in rows})
        for chunk in _chunks(upns):
            self._load_users(func.lower(User.upn).in_(chunk))
        user_ids = sorted({user.id for user in self.by_email.values()})
        for chunk in _chunks(user_ids):
            self._count_live_cards(chunk)

    def _load_users(self, condition: ColumnElement[bool]) -> None:
        # FOR UPDATE (on PostgreSQL) keeps a user from being locked while we add a card.
        for user in self.session.scalars(select(User).where(condition).with_for_update()):
            self._remember(user)

    def _count_live_cards(self, user_ids: Sequence[int]) -> None:
        stmt = (
            select(Credential.user_id, func.count())
            .where(
                Credential.user_id.in_(user_ids),
                Credential.kind == CredentialKind.CARD,
                Credential.state.in_(sorted(LIVE_CARD_STATES)),
            )
            .group_by(Credential.user_id)
        )
        for user_id, count in self.session.execute(stmt):
            if user_id is not None:
                self.live_cards[user_id] = count

    def _admit(self, record: Record, row: BatchRow) -> None:
        photo = self._photo_path(row)
        user = self._existing_user(row)
        holder = self.by_upn.get(row.upn.lower())
        if holder is not None and holder is not user:
            raise _Rejected("upn", f"the upn belongs to user {holder.id}")
        self._check_card_limit(user)
        reason = f"batch {self._batch_order().id} line {record.line}"
        changes: dict[str, Any] | None = None
        if user is None:
            user = self._create_user(row, photo, reason)
        else:
            changes = self._update_user(user, row, photo, reason)
        self._request_card(user, reason, changes)

    def _photo_path(self, row: BatchRow) -> str | None:
        if row.photo is None:
            return None
        photo = (self.base_dir / row.photo).resolve()
        # A file from outside must not make us read arbitrary files on this host.
        if not photo.is_relative_to(self.base_dir):
            raise _Rejected("photo", "must be a file in the CSV file's folder or below it")
        if not photo.is_file():
            raise _Rejected("photo", f"file not found: {row.photo}")
        if len(str(photo)) > 500:
            raise _Rejected("photo", "the photo's full path is longer than 500 characters")
        return str(photo)

    def _existing_user(self, row: BatchRow) -> User | None:
        by_email = self.by_email.get(row.email)
        if row.email in self.shared_emails:
            by_email = self.by_external_id.get(row.external_id) if row.external_id else None
            if by_email is None:
                raise _Rejected(
                    "email", "several users have this email; give the external_id of one"
                )
        by_external_id = self.by_external_id.get(row.external_id) if row.external_id else None
        if by_email and by_external_id and by_email is not by_external_id:
            raise _Rejected(
                "external_id",
                f"the email belongs to user {by_email.id} "
                f"but the external_id to user {by_external_id.id}",
            )
        if by_email and row.external_id and by_email.external_id not in (None, row.external_id):
            raise _Rejected(
                "external_id", f"user {by_email.id}, who has this email, has another external_id"
            )
        user = by_email or by_external_id
        if user is not None and user.state in _CLOSED_USER_STATES:
            field = "email" if by_email else "external_id"
            raise _Rejected(field, f"user {user.id} is {user.state}; no card can be requested")
        return user

    def _check_card_limit(self, user: User | None) -> None:
        live = self.live_cards.get(user.id, 0) if user is not None else 0
        limit = self.policy.cards_per_user
        if live + 1 > limit:
            raise _Rejected(
                None, f"the user already has {live} live card(s); the policy allows {limit}"
            )

    # -- writes

    def _batch_order(self) -> BatchOrder:
        if self.batch is None:
            auto = not self.policy.approval_required
            batch = BatchOrder(
                name=self.name,
                source_sha256=self.digest,
                requested_by=self.requested_by,
                approved_by="auto" if auto else None,
                state=BatchState.APPROVED if auto else BatchState.REQUESTED,
            )
            self.batch = create(self.session, batch, actor=self.requested_by, reason="csv import")
        return self.batch

    def _create_user(self, row: BatchRow, photo: str | None, reason: str) -> User:
        user = User(state=UserState.ACTIVE, photo_path=photo, **_user_attributes(row))
        create(self.session, user, actor=self.requested_by, reason=reason)
        self._remember(user)
        self.users_created += 1
        return user

    def _update_user(
        self, user: User, row: BatchRow, photo: str | None, reason: str
    ) -> dict[str, Any] | None:
        """The row's changes to an existing user: made now when the batch needs no
        approval; otherwise returned, to be kept on the card and made only when its
        request is approved (a rejected batch changes no one)."""
        # An empty optional cell means "not given": it keeps what the user already has.
        wanted = {k: v for k, v in _user_attributes(row).items() if v is not None}
        if photo is not None:
            wanted["photo_path"] = photo
        changed = sorted(k for k, v in wanted.items() if getattr(user, k) != v)
        if not changed:
            return None
        if self.policy.approval_required:
            return {key: wanted[key] for key in changed}
        self._forget(user)
        record_change(
            self.session,
            user,
            "update",
            actor=self.requested_by,
            reason=f"{reason}: changed {', '.join(changed)}",
            changes={key: wanted[key] for key in changed},
        )
        self._remember(user)
        self.users_updated += 1
        return None

    def _request_card(self, user: User, reason: str, changes: dict[str, Any] | None) -> None:
        approved = not self.policy.approval_required
        card = Credential(
            kind=CredentialKind.CARD,
            user_id=user.id,
            batch_id=self._batch_order().id,
            line=self.line,
            requested_by=self.requested_by,
            state=CardState.APPROVED if approved else CardState.REQUESTED,
            user_changes=changes,
        )
        if changes:
            self.users_updated += 1
        create(self.session, card, actor=self.requested_by, reason=reason)
        if approved:
            outbox.add(self.session, PrepareCard(credential_id=card.id))
        self.live_cards[user.id] = self.live_cards.get(user.id, 0) + 1
        self.cards_requested += 1

    def _remember(self, user: User) -> None:
        known = self.by_email.get(user.email.lower())
        if known is not None and known.id != user.id:
            self.shared_emails.add(user.email.lower())
        self.by_email[user.email.lower()] = user
        if user.external_id:
            self.by_external_id[user.external_id] = user
        if user.state != UserState.DELETED:
            self.by_upn[user.upn.lower()] = user

    def _forget(self, user: User) -> None:
        self.by_email.pop(user.email.lower(), None)
        if user.external_id:
            self.by_external_id.pop(user.external_id, None)
        if self.by_upn.get(user.upn.lower()) is user:
            self.by_upn.pop(user.upn.lower())


def _parse(record: Record) -> BatchRow:
    width = len(record.raw)
    if record.width != width:
        raise _Rejected(None, f"the row has {record.width} cells; the header has {width}")
    try:
        return BatchRow.model_validate(record.cells)
    except ValidationError as exc:
        (field, reason), *others = describe_errors(exc)
        if others:
            reason += " (also: " + "; ".join(f"{f} {r}" for f, r in others) + ")"
        raise _Rejected(field, reason) from exc


def _check_first(first_line: dict[str, int], value: str | None, line: int, field: str) -> None:
    """Remember where ``value`` first appeared; reject a later row repeating it."""
    if value is None:
        return
    if value in first_line:
        raise _Rejected(field, f"the same {field} is already on line {first_line[value]}")
    first_line[value] = line


def _user_attributes(row: BatchRow) -> dict[str, str | None]:
    return row.model_dump(exclude={"photo"})


def _chunks(values: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


# --- the reject report ------------------------------------------------------------------


def write_rejects(target: Path, header: Sequence[str], rejected: Sequence[RejectedRow]) -> Path:
    """Write the reject report atomically: readers see the old file or the whole new one.

    Columns: line, field, reason, then the file's own columns. UTF-8 with a BOM, so a
    spreadsheet shows accented names right. Readable by the owner only: it holds
    personal data.
    """
    with atomic_open(target, mode=0o600, text=True, encoding="utf-8-sig", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["line", "field", "reason", *header])
        for row in rejected:
            cells = [row.raw.get(name, "") for name in header]
            writer.writerow([row.line, row.field or "", row.reason, *cells])
    return target
