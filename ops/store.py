"""Opening the status store: checked, as every process does, or migrated, as only
``cardline db upgrade`` and the demo on its own fresh data dir do.

A process never migrates on start: two versions of Cardline starting against one
PostgreSQL database must not race to change its schema, and an operator decides when
a schema changes. A process whose store is behind exits at start-up saying to run
``cardline db upgrade`` (``schemas.errors.SchemaOutOfDate``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url

from db.engine import Store, open_store
from db.migrate import check_revision, head_revision, upgrade
from ops.config import Settings
from schemas.errors import ConfigurationError, SchemaOutOfDate

if TYPE_CHECKING:
    from db.secrets import SecretBox


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


def master_key_check(settings: Settings, store: Store) -> None:
    """ConfigurationError unless this process holds the store's master key: once the
    store holds a sealed secret, the key (CARDLINE_MASTER_KEY or the data dir's
    master.key) must exist and open it. A store with no secret yet (a fresh install)
    gets its key file created, as the first worker would."""
    from sqlalchemy import select

    from db.models import Credential
    from db.secrets import SecretBox, context

    with store.read() as s:
        row = s.execute(
            select(Credential.id, Credential.pin_sealed)
            .where(Credential.pin_sealed.is_not(None))
            .limit(1)
        ).first()
    if row is None:
        settings.secret_box()
        return
    if settings.master_key is not None:
        box = SecretBox.from_b64(settings.master_key.get_secret_value())
    else:
        box = SecretBox.from_key_file(settings.data_dir / "master.key", create=False)
    try:
        box.open(row.pin_sealed, context=context("credential", row.id, "pin"))
    except Exception:
        raise ConfigurationError(
            "the master key does not open this store's secrets: "
            "run as the host administrator with its master key"
        ) from None


def held_master_box(settings: Settings) -> SecretBox | None:
    """The master key when this process holds it (CARDLINE_MASTER_KEY, or a master.key
    in the data dir it may read); None otherwise. Unlike ``Settings.secret_box`` it
    never creates a key: a read-only command must not."""
    from db.secrets import SecretBox

    if settings.master_key is not None:
        return SecretBox.from_b64(settings.master_key.get_secret_value())
    try:
        return SecretBox.from_key_file(settings.data_dir / "master.key", create=False)
    except (ConfigurationError, OSError):
        return None
