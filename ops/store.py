"""Opening the status store: checked, as every process does, or migrated, as only
``cardline db upgrade`` and the demo on its own fresh data dir do.

A process never migrates on start: two versions of Cardline starting against one
PostgreSQL database must not race to change its schema, and an operator decides when
a schema changes. A process whose store is behind exits at start-up saying to run
``cardline db upgrade`` (``schemas.errors.SchemaOutOfDate``).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url

from db.engine import Store, open_store
from db.migrate import check_revision, head_revision, upgrade
from ops.config import Settings
from schemas.errors import SchemaOutOfDate


def missing_sqlite_file(url: str) -> Path | None:
    """The file of an SQLite URL when it does not exist (opening it would create it)."""
    database = make_url(url).database
    if not url.startswith("sqlite") or not database or database == ":memory:":
        return None
    path = Path(database)
    return None if path.exists() else path


def open_checked(settings: Settings, *, readonly: bool = False, pool_size: int = 20) -> Store:
    """The configured store, once its schema is the revision this code needs."""
    url = settings.db_url
    if missing_sqlite_file(url) is not None:
        head = head_revision()
        assert head is not None  # the migrations ship with the code
        raise SchemaOutOfDate(make_url(url).render_as_string(hide_password=True), None, head)
    store = open_store(url, readonly=readonly, pool_size=pool_size)
    try:
        check_revision(store)
    except BaseException:
        store.dispose()
        raise
    return store


def open_migrated(settings: Settings) -> Store:
    """The configured store, created or migrated to the newest revision: only for
    ``cardline db upgrade``, the demo's fresh data dir, and tests and benchmarks that
    build their own stores."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(settings.db_url)
    upgrade(store)
    return store
