"""Schema migrations (Alembic): applied only by ``cardline db upgrade`` (and the demo on
its own fresh data dir); every other process only checks them (``check_revision``)."""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from db.engine import Store
from schemas.errors import SchemaOutOfDate

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(store: Store, revision: str = "head") -> str | None:
    """Bring the schema to ``revision``; return the revision now in force.

    On SQLite a migration that alters a table rebuilds it, which foreign keys would
    refuse midway; so, as SQLite's documentation prescribes for schema changes, they are
    switched off around the one transaction and every reference is checked before it
    commits (a dangling one rolls the whole upgrade back).
    """
    cfg = alembic_config(store.engine.url.render_as_string(hide_password=False))
    sqlite = store.engine.dialect.name == "sqlite"
    with store.engine.connect() as conn:
        # On the DBAPI connection itself: an SQLAlchemy-level execute would first begin a
        # transaction, inside which SQLite ignores this pragma.
        raw = conn.connection.dbapi_connection
        if sqlite and raw is not None:
            raw.execute("PRAGMA foreign_keys = OFF")
        try:
            with conn.begin():
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
                if sqlite:
                    dangling = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if dangling:
                        raise MigrationError(f"foreign keys left dangling: {dangling[:5]}")
        finally:
            if sqlite and raw is not None:
                raw.execute("PRAGMA foreign_keys = ON")
    return current_revision(store)


class MigrationError(RuntimeError):
    """A migration would leave the store inconsistent; nothing of it was kept."""


def current_revision(store: Store) -> str | None:
    with store.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@functools.cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config("sqlite://"))


def head_revision() -> str | None:
    return _scripts().get_current_head()


def check_revision(store: Store) -> str:
    """The store's revision, when it is the head this code needs; otherwise raise
    SchemaOutOfDate (a store behind, with no schema, or at a revision we do not know)."""
    head = head_revision()
    assert head is not None  # the migrations ship with the code
    current = current_revision(store)
    if current == head:
        return current
    url = store.engine.url.render_as_string(hide_password=True)
    known = current is None or _knows(current)
    raise SchemaOutOfDate(url, current, head, known=known)


def _knows(revision: str) -> bool:
    try:
        return _scripts().get_revision(revision) is not None
    except CommandError:  # alembic's answer for a revision it cannot resolve
        return False
