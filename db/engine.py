"""Engines and sessions for the status store.

SQLite (the embedded default) runs in WAL mode so readers (``cardline status``) never
block the line, and every write transaction starts with ``BEGIN IMMEDIATE`` so two
writers serialise at the start instead of failing half-way with "database is locked".
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

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
    def tx(self) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on any exception."""
        with self.sessions.begin() as session:
            yield session

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
