"""CSV batch intake: one file becomes one batch order of card requests, or nothing.

Everything one import writes (users created or updated, one card per valid row, the
batch order, their audit events and outbox messages) is one transaction. Invalid rows
are rejected one by one, with line, field and reason, and listed in a reject report
that is put in place when the transaction commits. A file is known by the SHA-256 of
its bytes, so importing the same file again creates nothing and is answered at once.

The file is streamed, never held whole: a first pass hashes it and checks that it is
UTF-8; the second reads it row by row and imports it a chunk of rows at a time, with a
few look-ups and bulk inserts per chunk (``db.transition.create_many``).

A large file (more than ``SINGLE_TX_BYTES``) would hold the store's write lock for
seconds and stop the line, so it is imported differently: first checked whole without
the store (every row parsed and validated, the row and reject caps applied: a file
refused for what is in it writes nothing), then written a chunk per transaction under
a batch ``importing``, whose cards nobody may decide on and which the approvers do not
see, and last made ``requested`` (or approved) in one short transaction. Changes to
existing holders are kept on their cards until the batch is approved, even where no
approval is needed. An import that stops part-way (the store gone, a row the store
refuses past the cap, the process killed) leaves the batch ``failed`` and its cards
rejected (``db.batches``; the reconciler does it when the importer cannot), and the
file may be imported again; the users it created stay, without cards. Memory grows
with the chunk, the rejected rows and one key per row (e-mail, external id, UPN, to
refuse a row repeating an earlier one), not with the rows themselves. A file of more
than ``max_rows`` rows, or with more than ``max_rejects`` rejected rows, is refused
whole, and nothing is written.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import structlog
from pydantic import ValidationError
from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from db.batches import abandon, settle
from db.engine import Store, is_transient
from db.files import atomic_open
from db.models import BatchOrder, Credential, User
from db.transition import create, create_many, transition
from db.transition import record as record_change  # here a ``record`` is a CSV record
from producers.approvals import approve_changing_cards
from producers.users import EDITABLE
from schemas.batch import LINE_NAME, BatchRow, describe_errors, header_columns, ignored_columns
from schemas.csvcells import safe_row
from schemas.errors import RETRY_AFTER_S, StateConflict, TransientError, ValidationFailed
from schemas.messages import JobMessage, PrepareCard
from schemas.policy import Policy
from schemas.states import LIVE_CARD_STATES, BatchState, CardState, CredentialKind, UserState

log = structlog.get_logger(__name__)

DEFAULT_MAX_ROWS = 200_000
# Files up to this size are imported in one transaction (a few thousand rows: under a
# second of the store's write lock); larger ones a chunk per transaction.
SINGLE_TX_BYTES = 1 << 20
DEFAULT_MAX_REJECTS = 10_000
# Rows imported per step, and values per ``IN (...)`` look-up: well under every
# backend's limit on bound parameters in one statement.
_CHUNK = 5000
# Rows per transaction of a large file's import: the longest another writer waits.
_CHUNKED_ROWS = 1000
# On SQLite, a pause between two of those transactions. A writer waiting for the lock
# polls with a back-off (SQLite's busy handler sleeps up to 100 ms at a time) and would
# otherwise miss every gap between chunks; measured at 100,000 rows, the longest wait of
# another writer fell from 1.5 s to 0.18 s for 1 s more of import.
_SQLITE_YIELD_S = 0.01
_READ_BYTES = 1 << 16
_CLOSED_USER_STATES = frozenset({UserState.LOCKED, UserState.DELETED})
# The user columns a row sets; a row's ``photo`` becomes ``photo_path``.
_USER_COLUMNS = (*EDITABLE, "photo_path")


class StoreBusy(TransientError):
    """The status store was too busy to take the import (another writer held its lock
    past the wait); nothing was written. ``retry_after_s``: when to try again."""

    def __init__(self, detail: str, *, retry_after_s: int = RETRY_AFTER_S) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(f"the status store is busy; try again in {retry_after_s} s ({detail})")


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


@dataclass(frozen=True)
class Limits:
    """What one file may hold: rows (not counting blank ones) and rejected rows."""

    max_rows: int = DEFAULT_MAX_ROWS
    max_rejects: int = DEFAULT_MAX_REJECTS

    def __post_init__(self) -> None:
        for name in ("max_rows", "max_rejects"):
            if getattr(self, name) < 1:
                raise ValidationFailed("must be at least 1", field=name)


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
    ignore_columns: Collection[str] = (),
    max_rows: int = DEFAULT_MAX_ROWS,
    max_rejects: int = DEFAULT_MAX_REJECTS,
    single_tx_bytes: int | None = None,
    chunk_rows: int | None = None,
) -> ImportReport:
    """Import ``path`` as one batch order on ``line`` (default: the policy's line).

    Raises ``ValidationFailed``, having written nothing, when the file as a whole is
    unusable (not UTF-8, not CSV, a column missing, unknown or repeated; more than
    ``max_rows`` rows or more than ``max_rejects`` rejected rows) or an argument is.
    Otherwise imports every valid row, rejects every invalid one, commits, and puts
    ``reject_dir/<stem>-rejects.csv`` in place when any row was rejected. A file
    imported before is reported with ``already_imported=True`` and changes nothing.
    Raises ``StoreBusy``, having written nothing, when the store stayed locked.

    ``ignore_columns`` names columns (of an identity system's own) whose cells are
    read and dropped; any other column Cardline does not know refuses the file.
    ``allow_photos=False`` refuses the whole file (``ValidationFailed`` naming the line
    and ``photo``) when a row names a photo: an upload's photo paths point into a
    folder that is gone once the import returns. ``report_by_content=True`` names the
    report ``<stem>-<first 16 hex digits of the file's SHA-256>-rejects.csv``, so two
    files of one name (uploads) never overwrite each other's report.

    A file larger than ``single_tx_bytes`` (default ``SINGLE_TX_BYTES``) is imported
    ``chunk_rows`` (default 1,000) rows per transaction (see the module's docstring):
    the rest of the line goes on meanwhile.
    """
    single_tx_bytes = SINGLE_TX_BYTES if single_tx_bytes is None else single_tx_bytes
    line_name = _line_name(line or policy.default_line)
    if not requested_by.strip() or len(requested_by) > 100:
        raise ValidationFailed(
            "a requester of 1 to 100 characters is required", field="requested_by"
        )
    ignored = ignored_columns(ignore_columns)
    limits = Limits(max_rows=max_rows, max_rejects=max_rejects)
    digest = file_digest(path)
    name = path.name[:200]
    stem = f"{path.stem}-{digest[:16]}" if report_by_content else path.stem
    chunked = path.stat().st_size > single_tx_bytes
    chunk_rows = chunk_rows or (_CHUNKED_ROWS if chunked else _CHUNK)
    try:
        with store.read() as session:
            existing = _imported_as(session, digest)
        if existing is not None:
            return ImportReport(existing, name, 0, 0, 0, (), None, already_imported=True)
        if chunked:
            _check_file(path, ignored, limits, allow_photos=allow_photos, chunk_rows=chunk_rows)
        with ExitStack() as files:
            rejects = _RejectSink(files, reject_dir / f"{stem}-rejects.csv")
            work = _Import(
                None,
                name=name,
                digest=digest,
                base_dir=path.parent.resolve(),
                policy=policy,
                requested_by=requested_by,
                line=line_name,
                limits=limits,
                rejects=rejects,
                chunked=chunked,
                chunk_rows=chunk_rows,
            )
            with path.open("rb") as raw:
                hashing = _Hashing(raw)
                sheet = open_sheet(io.BufferedReader(hashing, _READ_BYTES), ignored)
                rejects.header = sheet.header

                def intact() -> None:
                    if hashing.sha.hexdigest() != digest:
                        raise ValidationFailed("the file changed while it was being imported")

                if chunked:
                    _import_in_chunks(store, work, sheet.records, allow_photos, intact)
                else:
                    with store.tx() as session:
                        work.session = session
                        work.run(sheet.records, allow_photos=allow_photos)
                        intact()
    except _AlreadyImported as already:
        return ImportReport(already.batch_id, name, 0, 0, 0, (), None, already_imported=True)
    except DBAPIError as exc:
        if is_transient(exc):
            raise StoreBusy(
                str(exc.orig).splitlines()[0] if exc.orig else type(exc).__name__
            ) from exc
        raise
    if chunked and work.batch_id is not None and not policy.approval_required:
        settle(store, work.batch_id)  # no approval step: its cards are approved now
    return _finish(work, rejects.target if work.rejected else None)


class _AlreadyImported(Exception):
    def __init__(self, batch_id: int) -> None:
        super().__init__(f"imported before as batch {batch_id}")
        self.batch_id = batch_id


def _check_file(
    path: Path,
    ignored: Collection[str],
    limits: Limits,
    *,
    allow_photos: bool,
    chunk_rows: int,
) -> None:
    """Everything about a large file that needs no store, before anything is written:
    the header, every row parsed and validated, no key repeated, the row and reject
    caps. Raises ``ValidationFailed`` as the import itself would."""
    with path.open("rb") as raw:
        sheet = open_sheet(io.BufferedReader(raw, _READ_BYTES), ignored)
        check = _Import(
            None,
            name="",
            digest="",
            base_dir=path.parent,
            policy=Policy(),
            requested_by="-",
            line="-",
            limits=limits,
            rejects=_NoReport(),  # a check writes nothing
            chunked=True,
            chunk_rows=chunk_rows,
        )
        check._header = sheet.header
        for chunk in check.chunks(sheet.records, allow_photos=allow_photos):
            check._validate_all(chunk)
            check.rejected.extend(check._chunk_rejects)
            check._chunk_rejects = []


def _import_in_chunks(
    store: Store,
    work: _Import,
    records: Iterable[Record],
    allow_photos: bool,
    intact: Callable[[], None],
) -> None:
    """Write a checked large file a chunk per transaction, then finish its batch in one
    more; on any failure, abandon the batch (its cards rejected) and raise."""
    work._header = work.sink.header
    pause = _SQLITE_YIELD_S if store.engine.dialect.name == "sqlite" else 0.0
    try:
        for chunk in work.chunks(records, allow_photos=allow_photos):
            with store.tx() as session:
                work.begin(session)
                work.import_chunk(chunk)
                work.progress(chunk[-1].line)
            if pause:
                time.sleep(pause)
        intact()
        with store.tx() as session:
            work.begin(session)
            work.finish()
    except BaseException as exc:
        if work.batch_id is not None:
            _abandon_quietly(store, work, exc)
        raise


def _abandon_quietly(store: Store, work: _Import, exc: BaseException) -> None:
    """Abandon ``work``'s batch after ``exc``; when the store will not have it either,
    leave it to the reconciler (wait "batch import"), which abandons a stalled import."""
    reason = f"the import stopped: {str(exc) or type(exc).__name__}"[:500]
    try:
        with store.tx() as session:
            batch = session.get(BatchOrder, work.batch_id, with_for_update=True)
            if batch is not None:
                abandon(session, batch, actor=work.requested_by, reason=reason)
        settle(store, work.batch_id)  # type: ignore[arg-type]  # not None: checked above
    except Exception:  # the store is away: the reconciler settles it later
        log.warning("batch import not abandoned", batch_id=work.batch_id, exc_info=True)


def _imported_as(session: Session, digest: str) -> int | None:
    return session.scalar(select(BatchOrder.id).where(BatchOrder.source_sha256 == digest))


def _line_name(line: str) -> str:
    if not LINE_NAME.match(line):
        raise ValidationFailed(f"{line!r} is not a production line name", field="line")
    return line


def _finish(work: _Import, report_path: Path | None) -> ImportReport:
    rejected = tuple(work.rejected)
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


def file_digest(path: Path) -> str:
    """The SHA-256 of the file's bytes, read in chunks. Raises ``ValidationFailed`` with
    the line of the first byte that is not UTF-8."""
    sha = hashlib.sha256()
    carry, line = b"", 1  # bytes of a character cut by the chunk; the line they start on
    with path.open("rb") as fh:
        while chunk := fh.read(_READ_BYTES):
            sha.update(chunk)
            carry, line = _check_utf8(carry + chunk, line, final=False)
    _check_utf8(carry, line, final=True)
    return sha.hexdigest()


def _check_utf8(data: bytes, line: int, *, final: bool) -> tuple[bytes, int]:
    """The undecoded tail of ``data`` and the line it starts on."""
    try:
        _, used = codecs.utf_8_decode(data, "strict", final)
    except UnicodeDecodeError as exc:
        raise ValidationFailed(
            f"not UTF-8 text: undecodable byte 0x{data[exc.start]:02x}",
            line=line + data.count(b"\n", 0, exc.start),
        ) from exc
    return data[used:], line + data.count(b"\n", 0, used)


class _Hashing(io.RawIOBase):
    """A binary file that hashes what is read through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.raw.read(len(buffer))
        buffer[: len(data)] = data
        self.sha.update(data)
        return len(data)


@dataclass(frozen=True, slots=True)
class Record:
    """One data row as read: its first physical line, its cells by column (ignored
    columns left out), its cells padded to the header's width in header order, and
    how many cells it really had."""

    line: int
    cells: dict[str, str]
    padded: list[str]
    width: int


@dataclass(frozen=True)
class Sheet:
    """A CSV file being read: the header as written and its non-blank data rows, one at
    a time."""

    header: tuple[str, ...]
    records: Iterator[Record]


def open_sheet(binary: IO[bytes], ignore: Collection[str] = ()) -> Sheet:
    """Start reading a batch file (UTF-8, with or without a BOM); raise
    ``ValidationFailed`` (with the line) when the header is wrong. Rows are read as
    ``records`` is iterated (``ValidationFailed`` when they are not CSV) and are not
    validated here."""
    text = io.TextIOWrapper(binary, encoding="utf-8-sig", newline="")
    reader = csv.reader(text)
    try:
        header = next(reader, None)
    except (csv.Error, UnicodeDecodeError) as exc:
        raise _unreadable(exc, reader.line_num) from exc
    if header is None:
        raise ValidationFailed("the file is empty; a header row is required", line=1)
    columns = header_columns(header, ignore=ignore)
    return Sheet(tuple(header), _records(reader, len(header), columns))


def _unreadable(exc: Exception, line: int) -> ValidationFailed:
    if isinstance(exc, UnicodeDecodeError):  # it was UTF-8 when it was hashed
        return ValidationFailed("the file changed while it was being imported")
    return ValidationFailed(f"not a readable CSV file: {exc}", line=line)


def _records(reader: Any, width: int, columns: Sequence[str | None]) -> Iterator[Record]:
    kept = [(index, name) for index, name in enumerate(columns) if name is not None]
    # csv.reader's line_num counts physical lines read so far, so a quoted field that
    # spans lines moves it on by more than one: a row starts just after the previous end.
    end = reader.line_num
    while True:
        try:
            cells = next(reader, None)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise _unreadable(exc, reader.line_num) from exc
        if cells is None:
            return
        start, end = end + 1, reader.line_num
        if not any(cell.strip() for cell in cells):
            continue  # blank lines and rows of empty cells, as spreadsheets leave them
        # Pad short rows so the reject report can show every column of them.
        padded = [*cells, *[""] * (width - len(cells))] if len(cells) < width else cells
        yield Record(
            line=start,
            cells={name: padded[index] for index, name in kept},
            padded=padded,
            width=len(cells),
        )


# --- the reject report ------------------------------------------------------------------


class _RejectSink:
    """The reject report, written as rows are rejected to a temporary file beside
    ``target`` that replaces it when ``files`` closes without an error (after the
    import commits); never created when no row is rejected.

    Columns: line, field, reason, then the file's own columns. UTF-8 with a BOM, so a
    spreadsheet shows accented names right; a cell a spreadsheet would run as a formula
    gets a leading quote (``schemas.csvcells``). Readable by the owner only: it holds
    personal data.
    """

    def __init__(self, files: ExitStack, target: Path) -> None:
        self.files = files
        self.target = target
        self.header: Sequence[str] = ()
        self._writer: Any = None

    def write(self, rows: Iterable[RejectedRow]) -> None:
        for row in rows:
            if self._writer is None:
                fh = self.files.enter_context(
                    atomic_open(
                        self.target, mode=0o600, text=True, encoding="utf-8-sig", newline=""
                    )
                )
                self._writer = csv.writer(fh)
                self._writer.writerow(safe_row(["line", "field", "reason", *self.header]))
            cells = [row.raw.get(name, "") for name in self.header]
            # The file's own cells are echoed: a spreadsheet must not run them.
            self._writer.writerow(safe_row([row.line, row.field or "", row.reason, *cells]))


class _NoReport(_RejectSink):
    """The sink of a check that only counts: it keeps and writes no reject report."""

    def __init__(self) -> None:
        self.header: Sequence[str] = ()

    def write(self, rows: Iterable[RejectedRow]) -> None:
        del rows


# --- importing the rows -----------------------------------------------------------------


class _Rejected(Exception):
    """A row is rejected; used only inside one import, never raised out of it."""

    def __init__(self, field: str | None, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


class _Holder:
    """A user already in the store that rows of this import name: the columns a row
    may change, as this import has left them, and how many live cards they have."""

    __slots__ = ("id", "live_cards", "state", "values")

    def __init__(self, id: int, state: str, values: dict[str, Any]) -> None:
        self.id = id
        self.state = state
        self.values = values
        self.live_cards = 0


class _NewUser:
    """A user this import creates, waiting for the chunk's insert to give it an id."""

    __slots__ = ("id", "reason", "values")

    def __init__(self, values: dict[str, Any], reason: str) -> None:
        self.values = values
        self.reason = reason
        self.id: int | None = None


class _Import:
    """The work of one import inside its transaction; counts what it did.

    Rows come a chunk at a time: each chunk is validated, its users looked up in a few
    queries, its rows admitted or rejected one by one (in memory), and then its new
    users and cards inserted in bulk with their audit events.
    """

    def __init__(
        self,
        session: Session | None,
        *,
        name: str,
        digest: str,
        base_dir: Path,
        policy: Policy,
        requested_by: str,
        line: str,
        limits: Limits,
        rejects: _RejectSink,
        chunked: bool = False,
        chunk_rows: int = _CHUNK,
    ) -> None:
        self._session = session
        # A chunked import keeps every change to an existing holder on its card, and
        # creates its cards ``requested`` under a batch ``importing``: nothing of it
        # takes effect before the last transaction, whatever the approval policy.
        self.chunked = chunked
        self.chunk_rows = chunk_rows
        self.approve_now = not policy.approval_required and not chunked
        self.batch_id: int | None = None
        self.name = name
        self.digest = digest
        self.base_dir = base_dir
        self.policy = policy
        self.requested_by = requested_by
        self.line = line
        self.limits = limits
        self.sink = rejects
        self.batch: BatchOrder | None = None
        self.rejected: list[RejectedRow] = []
        self.users_created = 0
        self.users_updated = 0
        self.cards_requested = 0
        # Where each e-mail, external id and UPN (lower-cased) first appeared in the file.
        self.first_line: dict[str, dict[str, int]] = {"email": {}, "external_id": {}, "upn": {}}
        # Users of the store that rows named, by id and by each key. Users this import
        # creates are not kept: no later row can name one (it would repeat a key).
        self.known: dict[int, _Holder] = {}
        self.by_email: dict[str, _Holder] = {}
        # E-mails several users share (possible when ``email_unique`` is off): a row
        # naming one must say which user it means by external_id.
        self.shared_emails: set[str] = set()
        self.by_external_id: dict[str, _Holder] = {}
        # UPNs (lower-cased) of users not deleted: no two may share one.
        self.by_upn: dict[str, _Holder] = {}
        self.new_users: list[_NewUser] = []
        self.new_cards: list[tuple[_Holder | _NewUser, str, dict[str, Any] | None]] = []
        self._chunk_rejects: list[RejectedRow] = []
        self._header: Sequence[str] = ()

    @property
    def session(self) -> Session:
        if self._session is None:
            raise RuntimeError("the import has no transaction")  # a bug, not bad input
        return self._session

    @session.setter
    def session(self, session: Session) -> None:
        self._session = session

    def run(self, records: Iterable[Record], *, allow_photos: bool = True) -> None:
        """Import each valid record and reject each invalid one, a chunk at a time, in
        the one transaction of ``session``."""
        self._header = self.sink.header
        for chunk in self.chunks(records, allow_photos=allow_photos):
            self.import_chunk(chunk)
        if self.batch is not None:
            self.batch.card_count = self.cards_requested
            self.batch.rejected_rows = len(self.rejected)

    def chunks(
        self, records: Iterable[Record], *, allow_photos: bool = True
    ) -> Iterator[list[Record]]:
        """The records, ``chunk_rows`` at a time; ``ValidationFailed`` past ``max_rows``
        or at a photo where none may be."""
        chunk: list[Record] = []
        for rows, record in enumerate(records, start=1):
            if rows > self.limits.max_rows:
                raise ValidationFailed(
                    f"the file has more than {self.limits.max_rows} rows, the most one "
                    "import takes: split it, nothing was imported",
                    line=record.line,
                )
            if not allow_photos and record.cells.get("photo", "").strip():
                raise ValidationFailed(
                    "photos cannot travel in an upload yet: leave the photo column empty",
                    field="photo",
                    line=record.line,
                )
            chunk.append(record)
            if len(chunk) == self.chunk_rows:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    # -- a chunked import's own steps

    def begin(self, session: Session) -> None:
        """Start a chunk's transaction: what the store said in the last one may be out
        of date (its users and their cards are read again), and the batch must still be
        importing (the reconciler abandons one that stalled)."""
        self.session = session
        self.known.clear()
        self.by_email.clear()
        self.shared_emails.clear()
        self.by_external_id.clear()
        self.by_upn.clear()
        if self.batch_id is None:
            self.batch = None
            existing = _imported_as(session, self.digest)
            if existing is not None:
                raise _AlreadyImported(existing)
            return
        batch = session.get(BatchOrder, self.batch_id, with_for_update=True)
        if batch is None or batch.state != BatchState.IMPORTING:
            raise StateConflict(
                "batch",
                self.batch_id,
                "import",
                batch.state if batch else None,
                (BatchState.IMPORTING,),
                detail="the import was abandoned (it made no progress for too long)",
            )
        self.batch = batch

    def progress(self, last_line: int) -> None:
        """Record, on the batch, how far the import has come (this is also what tells
        the reconciler the import is alive)."""
        if self.batch is None:
            return
        self.batch_id = self.batch.id
        record_change(
            self.session,
            self.batch,
            "import",
            actor=self.requested_by,
            reason=f"imported through line {last_line}",
            expect=(BatchState.IMPORTING,),
            changes={"card_count": self.cards_requested, "rejected_rows": len(self.rejected)},
        )

    def finish(self) -> None:
        """The last transaction: the batch ``requested`` (or, with no approval step,
        approved, with the changes its cards carry made)."""
        if self.batch is None:
            return  # no row was valid: no batch was created
        counts = {"card_count": self.cards_requested, "rejected_rows": len(self.rejected)}
        if self.policy.approval_required:
            transition(self.session, self.batch, "finish", actor=self.requested_by, changes=counts)
            return
        transition(
            self.session,
            self.batch,
            "finish_approved",
            actor=self.requested_by,
            changes={**counts, "approved_by": "auto"},
        )
        approve_changing_cards(
            self.session,
            self.batch.id,
            by="auto",
            requested_by=self.requested_by,
            unique_email=self.policy.email_unique,
        )

    def import_chunk(self, records: Sequence[Record]) -> None:
        candidates = self._validate_all(records)
        self._preload([row for _, row in candidates])
        for record, row in candidates:
            try:
                self._admit(record, row)
            except _Rejected as rejected:
                self._reject(record, rejected)
        self._flush()
        # Every line of a chunk comes after every line of the one before it.
        self._chunk_rejects.sort(key=lambda r: r.line)
        self.sink.write(self._chunk_rejects)
        self.rejected.extend(self._chunk_rejects)
        self._chunk_rejects = []

    def _reject(self, record: Record, rejected: _Rejected) -> None:
        if len(self.rejected) + len(self._chunk_rejects) >= self.limits.max_rejects:
            raise ValidationFailed(
                f"more than {self.limits.max_rejects} rows are rejected, the most one "
                "import reports: the file is refused whole, nothing was imported",
                line=record.line,
            )
        raw = dict(zip(self._header, record.padded, strict=False))
        self._chunk_rejects.append(RejectedRow(record.line, rejected.field, rejected.reason, raw))

    # -- checks that need only the file

    def _validate_all(self, records: Sequence[Record]) -> list[tuple[Record, BatchRow]]:
        valid: list[tuple[Record, BatchRow]] = []
        for record in records:
            try:
                row = self._parse(record)
                self._check_first("email", row.email, record.line)
                self._check_first("external_id", row.external_id, record.line)
                self._check_first("upn", row.upn.lower(), record.line)
            except _Rejected as rejected:
                self._reject(record, rejected)
                continue
            valid.append((record, row))
        return valid

    def _parse(self, record: Record) -> BatchRow:
        width = len(self._header)
        if record.width != width:
            raise _Rejected(None, f"the row has {record.width} cells; the header has {width}")
        try:
            return BatchRow.model_validate(record.cells)
        except ValidationError as exc:
            (field, reason), *others = describe_errors(exc)
            if others:
                reason += " (also: " + "; ".join(f"{f} {r}" for f, r in others) + ")"
            raise _Rejected(field, reason) from exc

    def _check_first(self, field: str, value: str | None, line: int) -> None:
        """Remember where ``value`` first appeared; reject a later row repeating it."""
        if value is None:
            return
        first_line = self.first_line[field]
        if value in first_line:
            raise _Rejected(field, f"the same {field} is already on line {first_line[value]}")
        first_line[value] = line

    # -- checks against the status store

    def _preload(self, rows: Sequence[BatchRow]) -> None:
        # A few queries per chunk of rows instead of several per row.
        emails = sorted({row.email for row in rows})
        external_ids = sorted({row.external_id for row in rows if row.external_id})
        upns = sorted({row.upn.lower() for row in rows})
        # One query (one pass over users where a key has no index) for all three keys.
        conditions = [
            *([func.lower(User.email).in_(emails)] if emails else []),
            *([User.external_id.in_(external_ids)] if external_ids else []),
            *([func.lower(User.upn).in_(upns)] if upns else []),
        ]
        fresh = self._load_users(or_(*conditions)) if conditions else []
        if fresh:
            self._count_live_cards(fresh)

    def _load_users(self, condition: ColumnElement[bool]) -> list[int]:
        """Remember the users that match; return the ids of those new to this import."""
        columns = [getattr(User, name) for name in _USER_COLUMNS]
        # FOR UPDATE (on PostgreSQL) keeps a user from being locked while we add a card.
        stmt = select(User.id, User.state, *columns).where(condition).with_for_update()
        fresh = []
        for user_id, state, *values in self.session.execute(stmt):
            holder = self.known.get(user_id)
            if holder is None:
                holder = _Holder(user_id, state, dict(zip(_USER_COLUMNS, values, strict=True)))
                self.known[user_id] = holder
                fresh.append(user_id)
            self._remember(holder)
        return fresh

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
                self.known[user_id].live_cards = count

    def _admit(self, record: Record, row: BatchRow) -> None:
        photo = self._photo_path(row)
        holder = self._existing_user(row)
        upn_holder = self.by_upn.get(row.upn.lower())
        if upn_holder is not None and upn_holder is not holder:
            raise _Rejected("upn", f"the upn belongs to user {upn_holder.id}")
        self._check_card_limit(holder)
        reason = f"batch {self._batch_order().id} line {record.line}"
        changes: dict[str, Any] | None = None
        user: _Holder | _NewUser
        if holder is None:
            user = self._create_user(row, photo, reason)
        else:
            changes = self._update_user(holder, row, photo, reason)
            user = holder
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

    def _existing_user(self, row: BatchRow) -> _Holder | None:
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
        if (
            by_email
            and row.external_id
            and by_email.values["external_id"] not in (None, row.external_id)
        ):
            raise _Rejected(
                "external_id", f"user {by_email.id}, who has this email, has another external_id"
            )
        user = by_email or by_external_id
        if user is not None and user.state in _CLOSED_USER_STATES:
            field = "email" if by_email else "external_id"
            raise _Rejected(field, f"user {user.id} is {user.state}; no card can be requested")
        return user

    def _check_card_limit(self, user: _Holder | None) -> None:
        live = user.live_cards if user is not None else 0
        limit = self.policy.cards_per_user
        if live + 1 > limit:
            raise _Rejected(
                None, f"the user already has {live} live card(s); the policy allows {limit}"
            )

    # -- writes

    def _batch_order(self) -> BatchOrder:
        if self.batch is None:
            auto = self.approve_now
            state = BatchState.APPROVED if auto else BatchState.REQUESTED
            batch = BatchOrder(
                name=self.name,
                source_sha256=self.digest,
                requested_by=self.requested_by,
                approved_by="auto" if auto else None,
                state=BatchState.IMPORTING if self.chunked else state,
            )
            self.batch = create(self.session, batch, actor=self.requested_by, reason="csv import")
        return self.batch

    def _create_user(self, row: BatchRow, photo: str | None, reason: str) -> _NewUser:
        values = {"state": UserState.ACTIVE, "photo_path": photo, **_user_attributes(row)}
        user = _NewUser(values, reason)
        self.new_users.append(user)
        self.users_created += 1
        return user

    def _update_user(
        self, user: _Holder, row: BatchRow, photo: str | None, reason: str
    ) -> dict[str, Any] | None:
        """The row's changes to an existing user: made now when the batch needs no
        approval and is imported in one transaction; otherwise returned, to be kept on
        the card and made only when its request is approved (a rejected or failed batch
        changes no one)."""
        # An empty optional cell means "not given": it keeps what the user already has.
        wanted = {k: v for k, v in _user_attributes(row).items() if v is not None}
        if photo is not None:
            wanted["photo_path"] = photo
        changed = sorted(k for k, v in wanted.items() if user.values[k] != v)
        if not changed:
            return None
        changes = {key: wanted[key] for key in changed}
        if not self.approve_now:
            return changes
        # Rare enough (an import without approval that changes a holder) to be made
        # row by row, through the guarded update every other edit uses.
        row_of_user = self.session.get(User, user.id)
        assert row_of_user is not None  # locked FOR UPDATE when it was loaded
        record_change(
            self.session,
            row_of_user,
            "update",
            actor=self.requested_by,
            reason=f"{reason}: changed {', '.join(changed)}",
            changes=changes,
        )
        self._forget(user)
        user.values.update(changes)
        self._remember(user)
        self.users_updated += 1
        return None

    def _request_card(
        self, user: _Holder | _NewUser, reason: str, changes: dict[str, Any] | None
    ) -> None:
        if changes:
            self.users_updated += 1
        self.new_cards.append((user, reason, changes))
        if isinstance(user, _Holder):
            user.live_cards += 1
        self.cards_requested += 1

    def _flush(self) -> None:
        """Insert the chunk's new users, then its cards, each with its audit event."""
        if self.new_users:
            ids = create_many(
                self.session,
                User,
                [user.values for user in self.new_users],
                actor=self.requested_by,
                reasons=[user.reason for user in self.new_users],
            )
            for user, user_id in zip(self.new_users, ids, strict=True):
                user.id = user_id
            self.new_users = []
        if not self.new_cards:
            return
        approved = self.approve_now
        batch_id = self._batch_order().id
        state = CardState.APPROVED if approved else CardState.REQUESTED
        cards = [
            {
                "kind": CredentialKind.CARD,
                "user_id": user.id,
                "batch_id": batch_id,
                "line": self.line,
                "requested_by": self.requested_by,
                "state": state,
                "user_changes": changes,
            }
            for user, _, changes in self.new_cards
        ]
        create_many(
            self.session,
            Credential,
            cards,
            actor=self.requested_by,
            reasons=[reason for _, reason, _ in self.new_cards],
            messages=_prepare if approved else None,
        )
        self.new_cards = []

    def _remember(self, user: _Holder) -> None:
        email = user.values["email"].lower()
        known = self.by_email.get(email)
        if known is not None and known is not user:
            self.shared_emails.add(email)
        self.by_email[email] = user
        if user.values["external_id"]:
            self.by_external_id[user.values["external_id"]] = user
        if user.state != UserState.DELETED:
            self.by_upn[user.values["upn"].lower()] = user

    def _forget(self, user: _Holder) -> None:
        self.by_email.pop(user.values["email"].lower(), None)
        if user.values["external_id"]:
            self.by_external_id.pop(user.values["external_id"], None)
        if self.by_upn.get(user.values["upn"].lower()) is user:
            self.by_upn.pop(user.values["upn"].lower())


def _prepare(card_id: int) -> list[JobMessage]:
    return [PrepareCard(credential_id=card_id)]


def _user_attributes(row: BatchRow) -> dict[str, str | None]:
    return row.model_dump(exclude={"photo"})
