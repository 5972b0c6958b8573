"""Engines and sessions for the status store.

SQLite (the embedded default) runs in WAL mode so readers (``cardline status``) never
block the line, and every write transaction starts with ``BEGIN IMMEDIATE`` so two
writers serialise at the start instead of failing half-way with "database is locked".
Its database file is the owner's alone (0600); SQLite gives the WAL and shared-memory
files the database file's mode.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from db.audit import lock_audit_head

T = TypeVar("T")
# PostgreSQL: deadlock detected, serialization failure, lock not available.
TRANSIENT_SQLSTATES = frozenset({"40P01", "40001", "55P03"})
# Connection exceptions; admin/crash shutdown and "the database system is starting up".
TRANSIENT_SQLSTATE_CLASSES = ("08", "57P")
SQLITE_BUSY = ("database is locked", "database table is locked")

SQLITE_BUSY_TIMEOUT_MS = 30_000
_READ_ONLY = "cardline_read_only"


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / 'cardline.db').resolve()}"


def _configure_sqlite(engine: Engine, *, readonly: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below own transaction start.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        if not readonly:
            cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        deferred = readonly or conn.get_execution_options().get(_READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if deferred else "BEGIN IMMEDIATE")


def _private_sqlite_file(database: str | None) -> None:
    """Create the database file 0600 before SQLite does (it would follow the umask), or
    tighten an existing one; an in-memory database has no file. A file this process
    cannot open is left for SQLite to report, as it did before."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    try:
        fd = os.open(database, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _forget_transaction_state(session: Session, transaction: Any) -> None:
    # Per-transaction caches (the locked audit head) must not outlive the transaction.
    # Flushes run as subtransactions; only the outermost one's end counts.
    if transaction.parent is None:
        session.info.clear()


@dataclass(frozen=True)
class Store:
    """An engine and its session factory; ``tx()`` is one transaction."""

    engine: Engine
    sessions: sessionmaker[Session]
    readers: sessionmaker[Session]

    @contextmanager
    def tx(self, *, audited: bool = True) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on any exception.

        An ``audited`` transaction (the default: anything that may change a state)
        takes the audit chain's head lock before any other lock. Every such writer
        thus locks in the same order, which is what keeps PostgreSQL free of
        deadlocks; writers that never audit (heartbeats, the relay) pass False and do
        not queue behind it.
        """
        with self.sessions.begin() as session:
            if audited:
                lock_audit_head(session)
            yield session

    @contextmanager
    def trial(self) -> Iterator[Session]:
        """An audited transaction that is always rolled back: whether an operation
        would succeed now (its errors propagate), with nothing written."""
        with self.sessions() as session:
            session.begin()
            try:
                lock_audit_head(session)
                yield session
            finally:
                session.rollback()

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only transaction (on SQLite it does not take the write lock)."""
        with self.readers.begin() as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()


def open_store(url: str, *, readonly: bool = False, pool_size: int = 20) -> Store:
    """Open the store at ``url`` (any SQLAlchemy URL)."""
    kwargs: dict[str, Any] = {"future": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {
            "check_same_thread": False,
            "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
        }
        kwargs["pool_size"] = pool_size
        kwargs["max_overflow"] = pool_size
    else:
        kwargs["pool_size"] = pool_size
        kwargs["max_overflow"] = pool_size
        kwargs["pool_pre_ping"] = True
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        if not readonly:
            _private_sqlite_file(engine.url.database)
        _configure_sqlite(engine, readonly=readonly)
    sessions = sessionmaker(engine, expire_on_commit=False)
    event.listen(sessions, "after_transaction_end", _forget_transaction_state)
    return Store(
        engine=engine,
        sessions=sessions,
        readers=sessionmaker(
            engine.execution_options(**{_READ_ONLY: True}), expire_on_commit=False
        ),
    )


def is_transient(exc: BaseException) -> bool:
    """A database error that a retry of the whole transaction can cure: a lost or
    refused connection, a server shutting down or starting, a deadlock, a busy lock."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    state = getattr(exc.orig, "sqlstate", None)
    if state in TRANSIENT_SQLSTATES or (state or "").startswith(TRANSIENT_SQLSTATE_CLASSES):
        return True
    text = str(exc.orig)
    if any(marker in text for marker in SQLITE_BUSY):
        return True
    # psycopg raises OperationalError without a SQLSTATE when it cannot connect at all.
    return (
        isinstance(exc, OperationalError)
        and state is None
        and "sqlite" not in type(exc.orig).__module__
    )


def retry_transient(fn: Callable[[], T], *, attempts: int = 5, backoff_s: float = 0.05) -> T:
    """Run ``fn`` (one whole transaction), again after a transient database error."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except DBAPIError as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            time.sleep(backoff_s * attempt)
    raise AssertionError("unreachable")  # pragma: no cover
