"""``cardline db upgrade``: the one command that changes the status store's schema."""

from __future__ import annotations

import click

from ops.cli.context import CliContext, data_dir_option, handle_errors, pass_app


@click.group("db")
def db_group() -> None:
    """The status store."""


@db_group.command("upgrade")
@data_dir_option
@pass_app
@handle_errors
def db_upgrade(app: CliContext) -> None:
    """Create or migrate the status store schema to the newest revision."""
    from db.migrate import current_revision
    from ops.store import open_migrated

    store = open_migrated(app.settings)
    try:
        click.echo(f"status store at revision {current_revision(store)}")
    finally:
        store.dispose()


COMMANDS = (db_group,)
